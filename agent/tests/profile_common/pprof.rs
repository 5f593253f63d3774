//! pprof files read back by an independent decoder: Google's protocol
//! buffer compiler (`protoc --decode`, Debian's `protobuf-compiler`, which
//! `cargo xtask setup` installs) with pprof's own `profile.proto`
//! (`tests/data/pprof/`, unmodified). It prints the message as protobuf text
//! format, which is parsed here: the wire format is never read by this
//! project's code, so an encoding mistake in `agent/src/profile/pprof.rs`
//! cannot be mirrored by a matching mistake in the reader.

use std::{
    collections::{HashMap, HashSet},
    io::{Read as _, Write as _},
    path::Path,
    process::{Command, Stdio},
};

use super::Folded;

/// A decoded `perftools.profiles.Profile`, with string indices resolved.
#[derive(Debug, Default)]
pub struct Pprof {
    /// (type, unit) per value.
    pub sample_types: Vec<(String, String)>,
    /// (location ids leaf first, values).
    pub samples: Vec<(Vec<u64>, Vec<u64>)>,
    /// (id, file name, build id).
    pub mappings: Vec<(u64, String, String)>,
    /// Location id → (mapping id, function ids innermost first).
    pub locations: HashMap<u64, (u64, Vec<u64>)>,
    /// Function id → name.
    pub functions: HashMap<u64, String>,
    pub period: u64,
}

/// A text-format message: its fields in order.
#[derive(Debug, Default)]
struct Msg(Vec<(String, Value)>);

#[derive(Debug)]
enum Value {
    Scalar(String),
    Msg(Msg),
}

impl Msg {
    fn parse<'a>(lines: &mut impl Iterator<Item = &'a str>) -> Msg {
        let mut m = Msg::default();
        while let Some(line) = lines.next() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            if line == "}" {
                break;
            }
            if let Some(name) = line.strip_suffix(" {") {
                m.0.push((name.to_string(), Value::Msg(Msg::parse(lines))));
            } else {
                let (k, v) = line.split_once(": ").unwrap_or_else(|| panic!("protoc: {line:?}"));
                m.0.push((k.to_string(), Value::Scalar(v.to_string())));
            }
        }
        m
    }

    fn msgs<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Msg> + 'a {
        self.0.iter().filter(move |(k, _)| k == name).filter_map(|(_, v)| match v {
            Value::Msg(m) => Some(m),
            Value::Scalar(_) => None,
        })
    }

    fn scalars<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0.iter().filter(move |(k, _)| k == name).filter_map(|(_, v)| match v {
            Value::Scalar(s) => Some(s.as_str()),
            Value::Msg(_) => None,
        })
    }

    /// An integer field (0 when absent, as proto3 leaves zeros out).
    fn int(&self, name: &str) -> u64 {
        self.scalars(name).next().map_or(0, |v| v.parse().unwrap_or_else(|_| panic!("{v}")))
    }

    fn ints(&self, name: &str) -> Vec<u64> {
        self.scalars(name).map(|v| v.parse().unwrap_or_else(|_| panic!("{v}"))).collect()
    }
}

/// A text-format string literal (C escapes, octal for other bytes).
fn unquote(s: &str) -> String {
    let inner = s.strip_prefix('"').and_then(|s| s.strip_suffix('"')).expect("quoted string");
    let (mut out, b) = (Vec::new(), inner.as_bytes());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let c = b[i + 1];
        i += 2;
        match c {
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'0'..=b'7' => {
                let (mut v, mut digits) = (u32::from(c - b'0'), 1);
                while digits < 3 && i < b.len() && (b'0'..=b'7').contains(&b[i]) {
                    v = v * 8 + u32::from(b[i] - b'0');
                    i += 1;
                    digits += 1;
                }
                out.push(v as u8);
            }
            other => out.push(other),
        }
    }
    String::from_utf8(out).expect("UTF-8 string")
}

/// `protoc --decode` of `raw` (an ungzipped pprof), as text format.
fn protoc_decode(raw: &[u8]) -> String {
    let proto_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/pprof");
    let mut child = Command::new("protoc")
        .args(["--proto_path", proto_dir, "--decode=perftools.profiles.Profile", "profile.proto"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "running protoc (the independent pprof decoder): {e}; `cargo xtask setup` \
                 installs it as root (Debian's protobuf-compiler)"
            )
        });
    let mut stdin = child.stdin.take().unwrap();
    let raw = raw.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&raw));
    let out = child.wait_with_output().expect("protoc");
    writer.join().unwrap().expect("writing to protoc");
    assert!(out.status.success(), "protoc --decode: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("protoc prints UTF-8")
}

impl Pprof {
    pub fn read(path: &Path) -> Pprof {
        let gz = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut raw).expect("gzip");
        let text = protoc_decode(&raw);
        let m = Msg::parse(&mut text.lines());
        let strings: Vec<String> = m.scalars("string_table").map(unquote).collect();
        assert_eq!(strings.first().map(String::as_str), Some(""), "string_table[0] must be \"\"");
        let s = |i: u64| strings.get(i as usize).unwrap_or_else(|| panic!("string {i}")).clone();
        Pprof {
            sample_types: m
                .msgs("sample_type")
                .map(|v| (s(v.int("type")), s(v.int("unit"))))
                .collect(),
            samples: m.msgs("sample").map(|v| (v.ints("location_id"), v.ints("value"))).collect(),
            mappings: m
                .msgs("mapping")
                .map(|v| (v.int("id"), s(v.int("filename")), s(v.int("build_id"))))
                .collect(),
            locations: m
                .msgs("location")
                .map(|v| {
                    let lines = v.msgs("line").map(|l| l.int("function_id")).collect();
                    (v.int("id"), (v.int("mapping_id"), lines))
                })
                .collect(),
            functions: m.msgs("function").map(|v| (v.int("id"), s(v.int("name")))).collect(),
            period: m.int("period"),
        }
    }

    /// Σ of value `i` over the samples.
    pub fn total(&self, i: usize) -> u64 {
        self.samples.iter().map(|s| s.1[i]).sum()
    }

    /// The function names of a sample's stack (every inlined one too).
    fn names_of(&self, locations: &[u64]) -> impl Iterator<Item = &str> {
        locations.iter().flat_map(|id| {
            let (_, functions) = self.locations.get(id).unwrap_or_else(|| panic!("location {id}"));
            functions.iter().map(|f| self.functions[f].as_str())
        })
    }

    /// Σ of value `i` over samples whose leaf location's innermost function
    /// is `name`.
    pub fn leaf_total(&self, name: &str, i: usize) -> u64 {
        let leaf = |locs: &[u64]| self.names_of(&locs[..1]).next().map(str::to_string);
        self.samples.iter().filter(|(l, _)| leaf(l).as_deref() == Some(name)).map(|s| s.1[i]).sum()
    }

    /// The build id recorded for a mapped file whose name ends with `file`.
    pub fn build_id_of(&self, file: &str) -> Option<&str> {
        self.mappings.iter().find(|m| m.1.ends_with(file)).map(|m| m.2.as_str())
    }

    /// The profile agrees with the folded file of the same window: same
    /// total, and for every function the folded file names, the same
    /// weight of stacks holding it; its ids all resolve; `types` are its
    /// sample types; each mapping names a file and a hex build id or none.
    pub fn check_against(&self, folded: &Folded, types: &[(&str, &str)], what: &str) {
        let types: Vec<(String, String)> =
            types.iter().map(|(t, u)| (t.to_string(), u.to_string())).collect();
        assert_eq!(self.sample_types, types, "{what}: sample types");
        assert_eq!(self.total(0), folded.total(), "{what}: total vs folded");
        let mapping_ids: HashSet<u64> = self.mappings.iter().map(|m| m.0).collect();
        for (id, (mapping, functions)) in &self.locations {
            assert!(*mapping == 0 || mapping_ids.contains(mapping), "{what}: location {id}");
            assert!(functions.iter().all(|f| self.functions.contains_key(f)), "{what}: {id}");
        }
        for (_, file, build_id) in &self.mappings {
            assert!(!file.is_empty(), "{what}: a mapping without a file name");
            assert!(build_id.bytes().all(|b| b.is_ascii_hexdigit()), "{what}: {build_id:?}");
        }
        let mut inclusive: HashMap<&str, u64> = HashMap::new();
        for (locations, values) in &self.samples {
            assert_eq!(values.len(), self.sample_types.len(), "{what}: values of a sample");
            let names: HashSet<&str> = self.names_of(locations).collect();
            for name in names {
                *inclusive.entry(name).or_default() += values[0];
            }
        }
        let names: HashSet<&str> =
            folded.stacks.iter().flat_map(|(f, _)| f.iter().map(String::as_str)).collect();
        for name in names {
            let theirs = folded.with_frame(|f| f == name);
            assert_eq!(inclusive.get(name).copied(), Some(theirs), "{what}: stacks holding {name}");
        }
    }
}

/// Every `*.pb.gz` in `dir` decoded by protoc and checked against the
/// `.folded` beside it; how many there were.
pub fn check_every_pprof(dir: &Path) -> usize {
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".pb.gz") else { continue };
        let folded = Folded::read(&dir.join(format!("{stem}.folded")));
        let pprof = Pprof::read(&path);
        if stem.ends_with(".offcpu") {
            pprof.check_against(&folded, &[("off_cpu", "nanoseconds")], &name);
        } else {
            pprof.check_against(&folded, &[("samples", "count"), ("cpu", "nanoseconds")], &name);
            assert!(pprof.period > 0, "{name}: no sampling period");
            for (_, v) in &pprof.samples {
                assert_eq!(v[1], v[0] * pprof.period, "{name}: cpu ns = samples × period");
            }
        }
        checked += 1;
    }
    checked
}
