//! The browser and the DOM for `tests/report_html.rs`: Debian's `chromium`
//! run headless, and a small reader of the DOM it dumps (Chromium writes
//! every attribute double-quoted, entities for `&`, `"`, `<`, `>`).
#![allow(dead_code)]

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use super::common::{in_ci, scratch_dir};

pub struct Browser {
    bin: PathBuf,
}

impl Browser {
    /// `chromium` on PATH; under CI its absence is a failure (`cargo xtask
    /// setup` installs it there), elsewhere the test skips loudly.
    pub fn find() -> Option<Browser> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let found = std::env::split_paths(&path)
            .flat_map(|d| ["chromium", "chromium-browser", "google-chrome"].map(|n| d.join(n)))
            .find(|p| p.is_file());
        match found {
            Some(bin) => Some(Browser { bin }),
            None if in_ci() => {
                panic!("CI=true but chromium is missing: `cargo xtask setup` installs it under CI")
            }
            None => {
                eprintln!(
                    "\n*** SKIPPED: no chromium on PATH (apt-get install chromium, or \
                     CI=true cargo xtask setup) ***\n"
                );
                None
            }
        }
    }

    /// A fresh directory for one test's files.
    pub fn scratch(test: &str) -> PathBuf {
        let d = scratch_dir().join(format!("report-html-{test}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    /// Runs chromium headless on `page` with `args`, within 60 s; its stdout.
    fn run(&self, page: &Path, args: &[&str]) -> String {
        // A profile directory of its own: concurrent browsers never share one.
        let profile = tempdir("chromium-profile");
        let url = format!("file://{}", page.canonicalize().unwrap().display());
        let out = Command::new("timeout")
            .arg("60")
            .arg(&self.bin)
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(args)
            .arg(&url)
            .output()
            .expect("running chromium");
        let _ = fs::remove_dir_all(&profile);
        assert!(
            out.status.success(),
            "chromium {args:?} {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8 DOM")
    }

    /// The DOM after the page's scripts ran.
    pub fn dump_dom(&self, page: &Path) -> String {
        self.run(page, &["--dump-dom"])
    }

    /// A 1280×2400 screenshot of `page` is a PNG of that size and holds far
    /// more than the same screenshot of an empty page (4× its bytes).
    pub fn screenshot_is_not_blank(&self, page: &Path, dir: &Path) {
        let shot = |page: &Path, name: &str| {
            let png = dir.join(name);
            self.run(
                page,
                &[&format!("--screenshot={}", png.display()), "--window-size=1280,2400"],
            );
            let bytes = fs::read(&png).unwrap_or_else(|e| panic!("{}: {e}", png.display()));
            assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{name} is not a PNG");
            let dim = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
            assert_eq!((dim(16), dim(20)), (1280, 2400), "{name}'s size");
            bytes.len()
        };
        let blank_page = dir.join("blank.html");
        fs::write(&blank_page, "<!DOCTYPE html><html><body></body></html>").unwrap();
        let (report, blank) = (shot(page, "report.png"), shot(&blank_page, "blank.png"));
        eprintln!("screenshot: {report} bytes, an empty page's: {blank}");
        assert!(
            report >= 4 * blank,
            "screenshot of {} is nearly blank: {report} bytes",
            page.display()
        );
    }
}

fn tempdir(what: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = scratch_dir().join(format!("{what}-{}-{n}", std::process::id()));
    fs::create_dir_all(&d).unwrap();
    d
}

/// One element of the DOM: its attributes and the text right after its
/// start tag (up to the next tag).
#[derive(Debug)]
pub struct Tag {
    pub attrs: Vec<(String, String)>,
    pub text: String,
}

impl Tag {
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub fn number(&self, name: &str) -> f64 {
        let v = self.attr(name).unwrap_or_else(|| panic!("no {name} in {self:?}"));
        v.parse().unwrap_or_else(|e| panic!("{name}={v:?}: {e}"))
    }
}

fn decode(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}

/// Every `<name ...>` element of `dom`.
pub fn tags(dom: &str, name: &str) -> Vec<Tag> {
    let open = format!("<{name}");
    let mut found = Vec::new();
    let mut rest = dom;
    while let Some(i) = rest.find(&open) {
        rest = &rest[i + open.len()..];
        if !rest.starts_with([' ', '>']) {
            continue;
        }
        let (mut attrs, mut pos) = (Vec::new(), 0);
        let bytes = rest.as_bytes();
        loop {
            while bytes[pos] == b' ' {
                pos += 1;
            }
            if bytes[pos] == b'>' {
                pos += 1;
                break;
            }
            let key_end = pos + rest[pos..].find(['=', ' ', '>']).unwrap();
            let key = rest[pos..key_end].to_string();
            if bytes[key_end] == b'=' {
                let value_start = key_end + 2; // past `="`
                let value_end = value_start + rest[value_start..].find('"').unwrap();
                attrs.push((key, decode(&rest[value_start..value_end])));
                pos = value_end + 1;
            } else {
                attrs.push((key, String::new()));
                pos = key_end;
            }
        }
        let text_end = rest[pos..].find('<').map_or(rest.len(), |e| pos + e);
        found.push(Tag { attrs, text: decode(&rest[pos..text_end]) });
        rest = &rest[pos..];
    }
    found
}

/// The value a cell's text shows, in the measure's base unit, and the
/// rounding its 3 significant digits allow.
fn shown(text: &str) -> (f64, f64) {
    let text = text.trim();
    let (number, scale) = match text.split_once(' ') {
        Some((n, unit)) => {
            let scale = match unit {
                "ns" | "B" | "%" => 1.0,
                "µs" => 1e3,
                "ms" => 1e6,
                "s" => 1e9,
                "KiB" => 1024.0,
                "MiB" => 1024.0 * 1024.0,
                "GiB" => 1024.0 * 1024.0 * 1024.0,
                _ => panic!("unit {unit:?} in {text:?}"),
            };
            (n, scale)
        }
        None => (text.trim_end_matches("/s"), 1.0),
    };
    let v: f64 = number.parse().unwrap_or_else(|e| panic!("{text:?}: {e}"));
    // 3 significant digits: half a unit of the last digit shown.
    let decimals = number.split_once('.').map_or(0, |(_, d)| d.len());
    (v * scale, 0.5 * 10f64.powi(-(decimals as i32)) * scale)
}

/// Every table cell showing a BMF metric: its `data-value` is the BMF
/// file's value exactly, its text the same to the digits shown. Returns
/// the cells (at least one).
pub fn check_cells(dom: &str, bmf: &serde_json::Value) -> Vec<Tag> {
    let cells: Vec<Tag> = tags(dom, "td")
        .into_iter()
        .filter(|t| t.attr("data-metric").is_some() && t.attr("data-value").is_some())
        .collect();
    assert!(!cells.is_empty(), "no metric shown");
    for c in &cells {
        let (id, measure) = (c.attr("data-metric").unwrap(), c.attr("data-measure").unwrap());
        let expected = bmf[id][measure]["value"].as_f64();
        let expected =
            expected.unwrap_or_else(|| panic!("{id} ({measure}) is not in the BMF file"));
        // The page's value is the document's double; serde_json (without
        // `float_roundtrip`) may read the file's digits 1 ULP off.
        let exact = c.number("data-value");
        assert!(
            (exact - expected).abs() <= 2.0 * f64::EPSILON * expected.abs(),
            "{id} ({measure}): {exact} in the page, {expected} in the file"
        );
        let (value, rounding) = shown(&c.text);
        assert!(
            (value - expected).abs() <= rounding * 1.0001,
            "{id}: shows {:?} ({value}) for {expected}",
            c.text
        );
    }
    cells
}

/// The JSON data block of a page, parsed.
pub fn data_block(page: &str) -> serde_json::Value {
    perf_agent::report::html::read_data(page).expect("the page has its data block")
}

/// `%XX` decoded (the links' own encoding).
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}
