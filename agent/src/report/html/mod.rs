//! The HTML report (`--report FILE.html`): one self-contained page, no
//! network needed to view it. The page is a fixed template
//! (`report/assets/`: HTML, CSS, a small script) plus the run's data as one
//! JSON block; the script draws the charts (SVG), the startup waterfall and
//! the tables from that block in the browser.
//!
//! Why drawn in the browser rather than SVG written here: the data is in
//! the page once (the BMF document itself and the series), the charts come
//! from it and cannot disagree with it, a long run's series stays a compact
//! JSON array rather than megabytes of markup, and the real-browser test
//! (`tests/report_html.rs`) checks the code that actually draws.
//!
//! Escaping: the JSON block cannot end its `<script>` early (`<`, `>`, `&`
//! are written as `\u003c`...), the title is HTML-escaped, links are
//! percent-encoded relative paths, and the script sets every text with
//! `textContent`, never as markup.

pub mod repeat_page;
pub mod run_page;
pub mod series;

use std::path::{Component, Path, PathBuf};

const PAGE: &str = include_str!("../assets/page.html");
const CSS: &str = include_str!("../assets/report.css");
const SCRIPT: &str = include_str!("../assets/report.js");

/// The page: the template with `title` and `data` (drawn by the script
/// according to its `kind`: `run`, `repeat`, `compare`).
pub fn page(title: &str, data: &serde_json::Value) -> String {
    let title = escape_html(title);
    let data = json_for_script(data);
    fill(PAGE, &[("TITLE", &title), ("CSS", CSS), ("JS", SCRIPT), ("DATA", &data)])
}

/// Replaces each `{{KEY}}` of `template` once, in one pass: what is put in
/// is never scanned again (a phase name holding `{{JS}}` stays text).
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out =
        String::with_capacity(template.len() + values.iter().map(|v| v.1.len()).sum::<usize>());
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let after = &rest[open + 2..];
        match after.find("}}").and_then(|close| {
            values.iter().find(|(k, _)| *k == &after[..close]).map(|(_, v)| (close, v))
        }) {
            Some((close, value)) => {
                out.push_str(value);
                rest = &after[close + 2..];
            }
            None => {
                out.push_str("{{");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Text for HTML element content or a quoted attribute.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// JSON safe inside `<script type="application/json">`: `<`, `>` and `&`
/// (which JSON has only inside strings) as `\u` escapes, so no `</script>`
/// or `<!--` can appear; U+2028/2029 too, for older parsers.
pub fn json_for_script(v: &serde_json::Value) -> String {
    let text = serde_json::to_string(v).expect("JSON values serialise");
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

/// A relative path as a URL path: every byte but unreserved ones and `/`
/// percent-encoded (a profile of phase `ramp/steady` is the file
/// `ramp%2Fsteady.cpu.svg`, whose `%` must itself be encoded in a link).
pub fn href(path: &Path) -> String {
    let mut out = String::new();
    for b in path.to_string_lossy().bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `to` relative to the directory `from_dir` (both made absolute, symbolic
/// links resolved where they exist), e.g. `../profiles/run.cpu.svg`.
pub fn relative(from_dir: &Path, to: &Path) -> PathBuf {
    let absolute = |p: &Path| {
        p.canonicalize().or_else(|_| std::path::absolute(p)).unwrap_or_else(|_| p.to_path_buf())
    };
    let (from, to) = (absolute(from_dir), absolute(to));
    let (from, to): (Vec<Component>, Vec<Component>) =
        (from.components().collect(), to.components().collect());
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut rel = PathBuf::new();
    (common..from.len()).for_each(|_| rel.push(".."));
    to[common..].iter().for_each(|c| rel.push(c));
    rel
}

/// The directory a page is written in (for its relative links).
pub fn page_dir(page: &Path) -> PathBuf {
    match page.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The data block of a page this module wrote (`None` for any other file).
pub fn read_data(page: &str) -> Option<serde_json::Value> {
    let open = r#"<script type="application/json" id="perf-agent-data">"#;
    let start = page.find(open)? + open.len();
    let len = page[start..].find("</script>")?;
    serde_json::from_str(&page[start..start + len]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The data block between its script tags, as the browser reads it.
    fn data_block(page: &str) -> &str {
        let open = r#"<script type="application/json" id="perf-agent-data">"#;
        let start = page.find(open).unwrap() + open.len();
        &page[start..start + page[start..].find("</script>").unwrap()]
    }

    #[test]
    fn hostile_names_stay_text() {
        let name = "</script><script>alert(1)</script><!-- & {{JS}} \u{2028}";
        let data = serde_json::json!({ "kind": "run", "phases": [{ "name": name }] });
        let html = page(&format!("perf-agent: {name}"), &data);
        // One data block whose JSON gives the name back unchanged.
        let block = data_block(&html);
        assert!(!block.contains('<') && !block.contains('>') && !block.contains('&'), "{block}");
        let back: serde_json::Value = serde_json::from_str(block).unwrap();
        assert_eq!(back["phases"][0]["name"], name);
        assert_eq!(read_data(&html), Some(back));
        assert_eq!(read_data("<html></html>"), None);
        // The title is escaped, the template's own script is there once.
        assert!(html.contains("<title>perf-agent: &lt;/script&gt;&lt;script&gt;alert(1)"));
        assert_eq!(html.matches("<script>alert(1)").count(), 0);
        assert_eq!(html.matches("'use strict'").count(), 1, "{{JS}} in a name is not filled");
        assert!(!SCRIPT.contains("</script") && !SCRIPT.contains(".innerHTML"));
    }

    #[test]
    fn every_placeholder_is_filled() {
        let html = page("t", &serde_json::json!({ "kind": "run" }));
        for key in ["TITLE", "CSS", "JS", "DATA"] {
            assert!(!html.contains(&format!("{{{{{key}}}}}")), "{key} left in the page");
        }
        assert!(!html.contains("http://") || html.contains("http://www.w3.org/2000/svg"));
        assert!(!html.contains("https://"), "the page loads nothing from the network");
        assert_eq!(fill("a {{X}} {{Y}} {{", &[("X", "{{Y}}")]), "a {{Y}} {{Y}} {{");
    }

    #[test]
    fn links_are_relative_and_percent_encoded() {
        let base = std::env::temp_dir().join(format!("perf-agent-html-{}", std::process::id()));
        let (reports, profiles) = (base.join("out"), base.join("prof"));
        std::fs::create_dir_all(&reports).unwrap();
        std::fs::create_dir_all(&profiles).unwrap();
        let file = profiles.join("ramp%2Fsteady.cpu.svg");
        assert_eq!(relative(&reports, &file), Path::new("../prof/ramp%2Fsteady.cpu.svg"));
        assert_eq!(relative(&base, &file), Path::new("prof/ramp%2Fsteady.cpu.svg"));
        assert_eq!(href(&relative(&reports, &file)), "../prof/ramp%252Fsteady.cpu.svg");
        assert_eq!(href(Path::new("a b/\"x\"<.svg")), "a%20b/%22x%22%3C.svg");
        assert_eq!(page_dir(Path::new("r.html")), Path::new("."));
        assert_eq!(page_dir(Path::new("out/r.html")), Path::new("out"));
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn html_escaping() {
        assert_eq!(
            escape_html(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
