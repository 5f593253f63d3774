//! pprof output (`<phase>.cpu.pb.gz`, `<phase>.offcpu.pb.gz`): the
//! `perftools.profiles.Profile` protocol buffer, gzipped, written by hand
//! (a few message types; no code generator). Locations carry their
//! module-relative address and every function inlined there (innermost
//! first, as pprof wants); mappings carry the file and its GNU build-id.

use std::{collections::HashMap, io::Write as _, path::Path};

use anyhow::Context as _;

use super::{
    symbols::Symbolizer,
    unwind::{Frame, Modules},
};

/// Protocol buffer encoding: varints and length-delimited fields.
#[derive(Default)]
struct Pb(Vec<u8>);

impl Pb {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push(v as u8 | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    /// A varint field (`int64`/`uint64`/`bool`), left out when 0 (proto3).
    fn uint(&mut self, field: u32, v: u64) {
        if v != 0 {
            self.varint(u64::from(field) << 3);
            self.varint(v);
        }
    }

    fn bytes(&mut self, field: u32, data: &[u8]) {
        self.varint(u64::from(field) << 3 | 2);
        self.varint(data.len() as u64);
        self.0.extend_from_slice(data);
    }

    fn packed(&mut self, field: u32, values: &[u64]) {
        let mut inner = Pb::default();
        values.iter().for_each(|&v| inner.varint(v));
        self.bytes(field, &inner.0);
    }
}

/// What one profile's values are: pprof's `sample_type` entries and the
/// sampling period.
pub struct Kind {
    /// (type, unit) per value of a sample.
    pub values: &'static [(&'static str, &'static str)],
    /// Each sample's values from its weight.
    pub value_of: fn(u64, u64) -> Vec<u64>,
    /// ns between samples (0: not sampled periodically).
    pub period_ns: u64,
}

/// A profile being built.
struct Builder<'s, 'm> {
    sym: &'s mut Symbolizer<'m>,
    strings: Vec<String>,
    string_ids: HashMap<String, u64>,
    functions: HashMap<String, u64>,
    locations: HashMap<Frame, u64>,
    function_msgs: Vec<u8>,
    location_msgs: Vec<u8>,
}

impl<'s, 'm> Builder<'s, 'm> {
    fn string(&mut self, s: &str) -> u64 {
        if let Some(&id) = self.string_ids.get(s) {
            return id;
        }
        let id = self.strings.len() as u64;
        self.strings.push(s.to_string());
        self.string_ids.insert(s.to_string(), id);
        id
    }

    fn function(&mut self, name: &str) -> u64 {
        if let Some(&id) = self.functions.get(name) {
            return id;
        }
        let id = self.functions.len() as u64 + 1;
        let name_id = self.string(name);
        let mut f = Pb::default();
        f.uint(1, id);
        f.uint(2, name_id);
        f.uint(3, name_id);
        let mut outer = Pb(std::mem::take(&mut self.function_msgs));
        outer.bytes(5, &f.0);
        self.function_msgs = outer.0;
        self.functions.insert(name.to_string(), id);
        id
    }

    /// The location of a frame; `kernel_mapping`: the id of the kernel's.
    fn location(&mut self, frame: Frame, kernel_mapping: u64) -> u64 {
        if let Some(&id) = self.locations.get(&frame) {
            return id;
        }
        let id = self.locations.len() as u64 + 1;
        let (mapping, address) = match frame {
            Frame::User { module, svma } => (u64::from(module) + 1, svma),
            Frame::Kernel(a) => (kernel_mapping, a),
            Frame::Unmapped(a) => (0, a),
            Frame::Truncated | Frame::Unsampled => (0, 0),
        };
        let names: Vec<String> = self.sym.names(frame).to_vec();
        let mut loc = Pb::default();
        loc.uint(1, id);
        loc.uint(2, mapping);
        loc.uint(3, address);
        // Innermost (inlined) function first; the last is the real frame.
        for name in names.iter().rev() {
            let mut line = Pb::default();
            line.uint(1, self.function(name));
            loc.bytes(4, &line.0);
        }
        let mut outer = Pb(std::mem::take(&mut self.location_msgs));
        outer.bytes(4, &loc.0);
        self.location_msgs = outer.0;
        self.locations.insert(frame, id);
        id
    }
}

/// Encodes the stacks `counts` (stack → weight, outermost frame first in
/// each) as a gzipped pprof profile.
pub fn encode(
    stacks: &[(&[Frame], u64)],
    kind: &Kind,
    modules: &Modules,
    vdso: Option<&[u8]>,
    sym: &mut Symbolizer,
) -> anyhow::Result<Vec<u8>> {
    let mut b = Builder {
        sym,
        strings: vec![String::new()],
        string_ids: HashMap::from([(String::new(), 0)]),
        functions: HashMap::new(),
        locations: HashMap::new(),
        function_msgs: Vec::new(),
        location_msgs: Vec::new(),
    };
    let mut p = Pb::default();
    for (ty, unit) in kind.values {
        let mut vt = Pb::default();
        vt.uint(1, b.string(ty));
        vt.uint(2, b.string(unit));
        p.bytes(1, &vt.0);
    }
    let kernel_mapping = modules.paths.len() as u64 + 1;
    for &(stack, weight) in stacks {
        let ids: Vec<u64> = stack.iter().rev().map(|&f| b.location(f, kernel_mapping)).collect();
        let mut s = Pb::default();
        s.packed(1, &ids);
        s.packed(2, &(kind.value_of)(weight, kind.period_ns));
        p.bytes(2, &s.0);
    }
    for (i, path) in modules.paths.iter().enumerate() {
        let build_id = build_id(modules, vdso, i).unwrap_or_default();
        mapping(&mut p, &mut b, i as u64 + 1, path, &build_id);
    }
    mapping(&mut p, &mut b, kernel_mapping, "[kernel.kallsyms]", "");
    if kind.period_ns > 0 {
        let mut vt = Pb::default();
        vt.uint(1, b.string("cpu"));
        vt.uint(2, b.string("nanoseconds"));
        p.bytes(11, &vt.0);
        p.uint(12, kind.period_ns);
    }
    p.0.extend_from_slice(&b.location_msgs);
    p.0.extend_from_slice(&b.function_msgs);
    // Last: every string used above is in it.
    for s in &b.strings {
        p.bytes(6, s.as_bytes());
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&p.0)?;
    Ok(gz.finish()?)
}

fn mapping(p: &mut Pb, b: &mut Builder, id: u64, path: &str, build_id: &str) {
    let mut m = Pb::default();
    m.uint(1, id);
    m.uint(5, b.string(path));
    m.uint(6, b.string(build_id));
    m.uint(7, 1); // has_functions
    p.bytes(3, &m.0);
}

/// The GNU build-id of module `i`, hex.
fn build_id(modules: &Modules, vdso: Option<&[u8]>, i: usize) -> Option<String> {
    let id = if modules.paths[i] == "[vdso]" {
        super::elf::build_id(vdso?)?
    } else {
        super::elf::file_build_id(modules.files[i].as_ref()?)?
    };
    Some(super::elf::hex(&id))
}

/// Writes `<dir>/<stem>.pb.gz`.
pub fn write(dir: &Path, stem: &str, data: &[u8]) -> anyhow::Result<()> {
    let path = dir.join(format!("{stem}.pb.gz"));
    std::fs::write(&path, data).with_context(|| format!("writing {}", path.display()))
}

/// Reads a protocol buffer message: (field, varint, bytes) per field.
fn decode_fields(b: &[u8]) -> anyhow::Result<Vec<(u64, u64, &[u8])>> {
    let mut out = Vec::new();
    let mut i = 0;
    let varint = |i: &mut usize| -> anyhow::Result<u64> {
        let (mut v, mut shift) = (0u64, 0);
        loop {
            let byte = *b.get(*i).context("truncated varint")?;
            *i += 1;
            v |= u64::from(byte & 0x7f).checked_shl(shift).unwrap_or(0);
            if byte < 0x80 {
                return Ok(v);
            }
            shift += 7;
        }
    };
    while i < b.len() {
        let key = varint(&mut i)?;
        match key & 7 {
            0 => out.push((key >> 3, varint(&mut i)?, &b[0..0])),
            2 => {
                let len = varint(&mut i)? as usize;
                let end =
                    i.checked_add(len).filter(|&e| e <= b.len()).context("truncated field")?;
                out.push((key >> 3, 0, &b[i..end]));
                i = end;
            }
            1 => i += 8,
            5 => i += 4,
            w => anyhow::bail!("wire type {w}"),
        }
    }
    Ok(out)
}

fn decode_packed(b: &[u8]) -> anyhow::Result<Vec<u64>> {
    // A packed field is a run of varints: decode it as fields of a message
    // with a fake key before each would be wrong; walk it directly.
    let mut out = Vec::new();
    let (mut v, mut shift) = (0u64, 0);
    for &byte in b {
        v |= u64::from(byte & 0x7f).checked_shl(shift).unwrap_or(0);
        if byte < 0x80 {
            out.push(v);
            (v, shift) = (0, 0);
        } else {
            shift += 7;
        }
    }
    Ok(out)
}

/// A gzipped (or plain) pprof profile as folded stacks, weighted by its
/// first sample value.
pub fn decode_folded(data: &[u8]) -> anyhow::Result<super::output::Folded> {
    use std::io::Read as _;
    let mut raw = Vec::new();
    if data.starts_with(&[0x1f, 0x8b]) {
        flate2::read::GzDecoder::new(data).read_to_end(&mut raw)?;
    } else {
        raw = data.to_vec();
    }
    let top = decode_fields(&raw)?;
    let field = |f: &[(u64, u64, &[u8])], n: u64| f.iter().find(|x| x.0 == n).map_or(0, |x| x.1);
    let mut strings = Vec::new();
    let (mut functions, mut locations) = (HashMap::new(), HashMap::new());
    for &(n, _, bytes) in &top {
        match n {
            6 => strings.push(String::from_utf8_lossy(bytes).into_owned()),
            5 => {
                let f = decode_fields(bytes)?;
                functions.insert(field(&f, 1), field(&f, 2));
            }
            4 => {
                let f = decode_fields(bytes)?;
                let mut lines = Vec::new();
                for &(k, _, line) in &f {
                    if k == 4 {
                        lines.push(field(&decode_fields(line)?, 1));
                    }
                }
                locations.insert(field(&f, 1), (lines, field(&f, 3)));
            }
            _ => {}
        }
    }
    let name = |id: u64| {
        strings.get(*functions.get(&id).unwrap_or(&0) as usize).cloned().unwrap_or_default()
    };
    let mut folded = super::output::Folded::new();
    for &(n, _, bytes) in &top {
        if n != 2 {
            continue;
        }
        let f = decode_fields(bytes)?;
        let locs = f.iter().find(|x| x.0 == 1).map_or(Ok(vec![]), |x| decode_packed(x.2))?;
        let values = f.iter().find(|x| x.0 == 2).map_or(Ok(vec![]), |x| decode_packed(x.2))?;
        let mut frames = Vec::new();
        for id in locs.iter().rev() {
            match locations.get(id) {
                Some((lines, _)) if !lines.is_empty() => {
                    frames.extend(lines.iter().rev().map(|&f| name(f)));
                }
                Some((_, addr)) => frames.push(format!("0x{addr:x}")),
                None => frames.push("[unknown]".into()),
            }
        }
        *folded.entry(frames.join(";")).or_default() += values.first().copied().unwrap_or(0);
    }
    Ok(folded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_fields_encode_like_protobuf() {
        let mut p = Pb::default();
        p.uint(1, 150);
        assert_eq!(p.0, [0x08, 0x96, 0x01]);
        let mut p = Pb::default();
        p.uint(3, 0); // proto3 default: left out
        p.bytes(2, b"testing");
        assert_eq!(p.0, [0x12, 0x07, b't', b'e', b's', b't', b'i', b'n', b'g']);
        let mut p = Pb::default();
        p.packed(4, &[3, 270, 86942]);
        assert_eq!(p.0, [0x22, 0x06, 0x03, 0x8E, 0x02, 0x9E, 0xA7, 0x05]);
        assert_eq!(decode_packed(&p.0[2..]).unwrap(), [3, 270, 86942]);
    }
}
