//! Reading profiles back, for `tests/profile.rs` and
//! `tests/profile_offcpu.rs`: folded stacks parsed, SVG parsed as XML.
#![allow(dead_code)]

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

/// A fresh, empty profile directory.
pub fn profile_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir()
        .join("perf-agent-tests")
        .join(format!("profile-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Folded stacks read back: each line `frames COUNT`, frames outermost first.
pub struct Folded {
    pub stacks: Vec<(Vec<String>, u64)>,
}

impl Folded {
    pub fn read(path: &Path) -> Folded {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let stacks = text
            .lines()
            .map(|line| {
                let (stack, count) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
                let count: u64 = count.parse().unwrap_or_else(|_| panic!("count in {line:?}"));
                assert!(count > 0 && !stack.is_empty(), "{line:?}");
                (stack.split(';').map(str::to_string).collect(), count)
            })
            .collect();
        Folded { stacks }
    }

    pub fn total(&self) -> u64 {
        self.stacks.iter().map(|s| s.1).sum()
    }

    /// Samples per leaf function.
    pub fn self_counts(&self) -> HashMap<&str, u64> {
        let mut m = HashMap::new();
        for (frames, n) in &self.stacks {
            *m.entry(frames.last().unwrap().as_str()).or_default() += n;
        }
        m
    }

    /// Samples whose stack holds a frame satisfying `f`.
    pub fn with_frame(&self, f: impl Fn(&str) -> bool) -> u64 {
        self.stacks.iter().filter(|(fr, _)| fr.iter().any(|x| f(x))).map(|s| s.1).sum()
    }

    /// The five leaf functions with most samples, user-space only.
    pub fn top_five(&self) -> Vec<String> {
        let mut v: Vec<(u64, String)> =
            self.leaf_user_counts().into_iter().map(|(k, n)| (n, k)).collect();
        v.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        v.into_iter().take(5).map(|(_, k)| k).collect()
    }

    /// Samples per innermost user-space frame (kernel frames `_[k]` skipped).
    pub fn leaf_user_counts(&self) -> HashMap<String, u64> {
        let mut m = HashMap::new();
        for (frames, n) in &self.stacks {
            if let Some(f) = frames.iter().rev().find(|f| !f.ends_with("_[k]")) {
                *m.entry(f.clone()).or_default() += n;
            }
        }
        m
    }
}

/// The SVG parses as XML to its end and names each of `functions`.
pub fn check_svg(path: &Path, functions: &[&str]) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut reader = quick_xml::Reader::from_str(&text);
    let mut elements = 0;
    loop {
        match reader.read_event() {
            Ok(quick_xml::events::Event::Eof) => break,
            Ok(quick_xml::events::Event::Start(_) | quick_xml::events::Event::Empty(_)) => {
                elements += 1
            }
            Ok(_) => {}
            Err(e) => panic!("{} is not well-formed XML: {e}", path.display()),
        }
    }
    assert!(elements > 10 && text.contains("<svg"), "{}: {elements} elements", path.display());
    for f in functions {
        assert!(text.contains(f), "{} does not name {f}", path.display());
    }
}

/// A pprof profile read back with a minimal protocol buffer decoder.
#[derive(Debug, Default)]
pub struct Pprof {
    pub strings: Vec<String>,
    /// (location ids leaf first, values)
    pub samples: Vec<(Vec<u64>, Vec<u64>)>,
    /// location id → function ids, innermost first
    pub locations: HashMap<u64, Vec<u64>>,
    /// function id → name (string index)
    pub functions: HashMap<u64, u64>,
    /// (filename, build id) string indices
    pub mappings: Vec<(u64, u64)>,
    pub sample_types: Vec<(u64, u64)>,
}

fn varint(b: &[u8], i: &mut usize) -> u64 {
    let (mut v, mut shift) = (0u64, 0);
    loop {
        let byte = b[*i];
        *i += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return v;
        }
        shift += 7;
    }
}

/// (field, varint value or bytes) of a message.
fn fields(b: &[u8]) -> Vec<(u64, u64, &[u8])> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let key = varint(b, &mut i);
        match key & 7 {
            0 => out.push((key >> 3, varint(b, &mut i), &b[0..0])),
            2 => {
                let len = varint(b, &mut i) as usize;
                out.push((key >> 3, 0, &b[i..i + len]));
                i += len;
            }
            w => panic!("wire type {w} not used by pprof"),
        }
    }
    out
}

fn packed(b: &[u8]) -> Vec<u64> {
    let mut i = 0;
    let mut v = Vec::new();
    while i < b.len() {
        v.push(varint(b, &mut i));
    }
    v
}

impl Pprof {
    pub fn read(path: &Path) -> Pprof {
        use std::io::Read as _;
        let gz = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut raw).expect("gzip");
        let mut p = Pprof::default();
        for (field, _, bytes) in fields(&raw) {
            let sub = || fields(bytes);
            let get =
                |f: &[(u64, u64, &[u8])], n: u64| f.iter().find(|x| x.0 == n).map_or(0, |x| x.1);
            match field {
                1 => {
                    let f = sub();
                    p.sample_types.push((get(&f, 1), get(&f, 2)));
                }
                2 => {
                    let f = sub();
                    let locs = f.iter().find(|x| x.0 == 1).map_or(vec![], |x| packed(x.2));
                    let vals = f.iter().find(|x| x.0 == 2).map_or(vec![], |x| packed(x.2));
                    p.samples.push((locs, vals));
                }
                3 => {
                    let f = sub();
                    p.mappings.push((get(&f, 5), get(&f, 6)));
                }
                4 => {
                    let f = sub();
                    let lines: Vec<u64> =
                        f.iter().filter(|x| x.0 == 4).map(|x| get(&fields(x.2), 1)).collect();
                    p.locations.insert(get(&f, 1), lines);
                }
                5 => {
                    let f = sub();
                    p.functions.insert(get(&f, 1), get(&f, 2));
                }
                6 => p.strings.push(String::from_utf8(bytes.to_vec()).expect("UTF-8 string")),
                _ => {}
            }
        }
        p
    }

    /// Σ of value `i` over the samples.
    pub fn total(&self, i: usize) -> u64 {
        self.samples.iter().map(|s| s.1[i]).sum()
    }

    /// Σ of value `i` over samples whose leaf location's innermost function
    /// is `name`.
    pub fn leaf_total(&self, name: &str, i: usize) -> u64 {
        self.samples
            .iter()
            .filter(|(locs, _)| {
                let f = self.locations[&locs[0]][0];
                self.strings[self.functions[&f] as usize] == name
            })
            .map(|s| s.1[i])
            .sum()
    }

    /// The build id recorded for a mapped file whose name ends with `file`.
    pub fn build_id_of(&self, file: &str) -> Option<&str> {
        self.mappings
            .iter()
            .find(|m| self.strings[m.0 as usize].ends_with(file))
            .map(|m| self.strings[m.1 as usize].as_str())
    }
}
