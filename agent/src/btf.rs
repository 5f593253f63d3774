//! A minimal reader of the kernel's BTF (`/sys/kernel/btf/vmlinux`): enough
//! to find the byte offset of a field inside a kernel struct, which user
//! space then hands to the eBPF programs as a `const volatile` value. This is
//! what CO-RE relocation would do at load time; aya-ebpf programs written in
//! Rust cannot carry such relocations, so the agent does it itself. Pure
//! parsing; only [`Btf::vmlinux`] reads the file.

use anyhow::{Context as _, bail};

const MAGIC: u16 = 0xeb9f;

const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_TYPE_TAG: u32 = 18;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Member {
    name: u32,
    type_id: u32,
    /// Bit offset in the struct.
    bit_offset: u32,
}

/// One type, decoded from the raw bytes when asked for.
#[derive(Clone, Copy, Debug)]
struct Type {
    name: u32,
    kind: u32,
    /// For modifiers and typedefs: the type they refer to.
    refers_to: u32,
    kind_flag: bool,
    vlen: usize,
    /// Where its trailing data (struct members, ...) starts in `types`.
    extra_at: usize,
}

/// BTF as read: the raw type and string sections, and where each type
/// starts. Types are decoded on demand, so parsing the kernel's ~5 MiB of
/// BTF costs little more memory than the file itself.
pub struct Btf {
    /// The whole file; the sections are ranges of it (no copies).
    data: Vec<u8>,
    types: std::ops::Range<usize>,
    strings: std::ops::Range<usize>,
    /// Byte offset in `types` of type id `i + 1` (id 0 is `void`).
    starts: Vec<u32>,
}

fn u32_at(b: &[u8], at: usize) -> anyhow::Result<u32> {
    let bytes = b.get(at..at + 4).context("BTF truncated")?;
    Ok(u32::from_le_bytes(bytes.try_into().expect("4 bytes")))
}

/// Bytes of kind-specific data after a type's 12-byte header.
fn extra_len(kind: u32, vlen: usize) -> anyhow::Result<usize> {
    Ok(match kind {
        1 | 14 | 17 => 4, // INT, VAR, DECL_TAG
        3 => 12,          // ARRAY
        KIND_STRUCT | KIND_UNION => 12 * vlen,
        6 | 13 => 8 * vlen,   // ENUM, FUNC_PROTO
        15 | 19 => 12 * vlen, // DATASEC, ENUM64
        2 | 7 | 8 | 9 | 10 | 11 | 12 | 16 | 18 => 0,
        other => bail!("unknown BTF kind {other}"),
    })
}

impl Btf {
    /// Parses little-endian BTF.
    pub fn parse(data: Vec<u8>) -> anyhow::Result<Btf> {
        if data.len() < 24 || u16::from_le_bytes([data[0], data[1]]) != MAGIC {
            bail!("not little-endian BTF (bad magic)");
        }
        let hdr_len = u32_at(&data, 4)? as usize;
        let (type_off, type_len) = (u32_at(&data, 8)? as usize, u32_at(&data, 12)? as usize);
        let (str_off, str_len) = (u32_at(&data, 16)? as usize, u32_at(&data, 20)? as usize);
        let types = hdr_len + type_off..hdr_len + type_off + type_len;
        let strings = hdr_len + str_off..hdr_len + str_off + str_len;
        if data.get(types.clone()).is_none() || data.get(strings.clone()).is_none() {
            bail!("BTF section out of bounds");
        }
        let mut starts = Vec::new();
        let mut at = 0;
        while at < types.len() {
            starts.push(at as u32);
            let info = u32_at(&data[types.clone()], at + 4)?;
            let extra = extra_len((info >> 24) & 0x1f, (info & 0xffff) as usize)?;
            at += 12 + extra;
            if at > types.len() {
                bail!("BTF truncated");
            }
        }
        Ok(Btf { data, types, strings, starts })
    }

    fn type_bytes(&self) -> &[u8] {
        &self.data[self.types.clone()]
    }

    fn type_by_id(&self, id: u32) -> Option<Type> {
        let at = *self.starts.get((id as usize).checked_sub(1)?)? as usize;
        let types = self.type_bytes();
        let info = u32_at(types, at + 4).ok()?;
        Some(Type {
            name: u32_at(types, at).ok()?,
            kind: (info >> 24) & 0x1f,
            refers_to: u32_at(types, at + 8).ok()?,
            kind_flag: info >> 31 == 1,
            vlen: (info & 0xffff) as usize,
            extra_at: at + 12,
        })
    }

    fn members(&self, t: &Type) -> impl Iterator<Item = Member> + '_ {
        let (base, kind_flag) = (t.extra_at, t.kind_flag);
        let count = if matches!(t.kind, KIND_STRUCT | KIND_UNION) { t.vlen } else { 0 };
        (0..count).filter_map(move |i| {
            let m = base + i * 12;
            let types = self.type_bytes();
            let offset = u32_at(types, m + 8).ok()?;
            Some(Member {
                name: u32_at(types, m).ok()?,
                type_id: u32_at(types, m + 4).ok()?,
                bit_offset: if kind_flag { offset & 0x00ff_ffff } else { offset },
            })
        })
    }

    fn name(&self, offset: u32) -> &str {
        let rest = self.data[self.strings.clone()].get(offset as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> Option<Type> {
        for _ in 0..32 {
            let t = self.type_by_id(id)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.refers_to
                }
                _ => return Some(t),
            }
        }
        None
    }

    /// Bit offset of `member` in `t`, looking into anonymous struct/union
    /// members too; with the member's type.
    fn member(&self, t: &Type, member: &str) -> Option<(u32, u32)> {
        for m in self.members(t) {
            if self.name(m.name) == member {
                return Some((m.bit_offset, m.type_id));
            }
            if m.name == 0
                && let Some(inner) = self.resolve(m.type_id)
                && matches!(inner.kind, KIND_STRUCT | KIND_UNION)
                && let Some((off, ty)) = self.member(&inner, member)
            {
                return Some((m.bit_offset + off, ty));
            }
        }
        None
    }

    /// Byte offset of `path` (e.g. `["se", "sum_exec_runtime"]`) inside the
    /// struct named `root`.
    pub fn field_offset(&self, root: &str, path: &[&str]) -> anyhow::Result<u32> {
        let mut t = (1..=self.starts.len() as u32)
            .filter_map(|id| self.type_by_id(id))
            .find(|t| t.kind == KIND_STRUCT && self.name(t.name) == root)
            .with_context(|| format!("struct {root} not in the kernel's BTF"))?;
        let mut bits = 0;
        for (i, name) in path.iter().enumerate() {
            let (off, ty) = self
                .member(&t, name)
                .with_context(|| format!("struct {root} has no field {}", path[..=i].join(".")))?;
            bits += off;
            if i + 1 < path.len() {
                t = self
                    .resolve(ty)
                    .filter(|t| matches!(t.kind, KIND_STRUCT | KIND_UNION))
                    .with_context(|| format!("{root}.{} is not a struct", path[..=i].join(".")))?;
            }
        }
        if bits % 8 != 0 {
            bail!("{root}.{} is a bit field", path.join("."));
        }
        Ok(bits / 8)
    }
}

impl Btf {
    /// The running kernel's BTF.
    pub fn vmlinux() -> anyhow::Result<Btf> {
        const VMLINUX: &str = "/sys/kernel/btf/vmlinux";
        let data = std::fs::read(VMLINUX).with_context(|| {
            format!(
                "this kernel has no BTF ({VMLINUX} unreadable; CONFIG_DEBUG_INFO_BTF): \
                 perf-agent needs it to find the kernel fields it reads"
            )
        })?;
        Btf::parse(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds BTF for:
    /// struct inner { u64 pad; union { u32 x; u64 sum; }; };
    /// typedef struct inner inner_t;
    /// struct outer { char c[16]; const inner_t se; };
    fn sample() -> Vec<u8> {
        let strings = b"\0u64\0inner\0pad\0sum\0x\0inner_t\0outer\0c\0se\0u32\0".to_vec();
        let s = |name: &str| {
            let hay = std::str::from_utf8(&strings).unwrap();
            hay.find(&format!("\0{name}\0")).unwrap() as u32 + 1
        };
        let mut t = Vec::new();
        let mut push =
            |words: &[u32]| words.iter().for_each(|w| t.extend_from_slice(&w.to_le_bytes()));
        // 1: INT u64
        push(&[s("u64"), 1 << 24, 8, 64]);
        // 2: INT u32
        push(&[s("u32"), 1 << 24, 4, 32]);
        // 3: anonymous UNION { x: u32 @0, sum: u64 @0 }
        push(&[0, (KIND_UNION << 24) | 2, 8, s("x"), 2, 0, s("sum"), 1, 0]);
        // 4: STRUCT inner { pad: u64 @0, <anon union> @64 }
        push(&[s("inner"), (KIND_STRUCT << 24) | 2, 16, s("pad"), 1, 0, 0, 3, 64]);
        // 5: TYPEDEF inner_t -> 4
        push(&[s("inner_t"), KIND_TYPEDEF << 24, 4]);
        // 6: CONST -> 5
        push(&[0, KIND_CONST << 24, 5]);
        // 7: ARRAY (char[16]): 12 extra bytes
        push(&[0, 3 << 24, 0, 1, 1, 16]);
        // 8: STRUCT outer { c @0, se: const inner_t @128 }
        push(&[s("outer"), (KIND_STRUCT << 24) | 2, 32, s("c"), 7, 0, s("se"), 6, 128]);
        let mut b = Vec::new();
        b.extend_from_slice(&MAGIC.to_le_bytes());
        b.extend_from_slice(&[1, 0]);
        for w in [24u32, 0, t.len() as u32, t.len() as u32, strings.len() as u32] {
            b.extend_from_slice(&w.to_le_bytes());
        }
        b.extend_from_slice(&t);
        b.extend_from_slice(&strings);
        b
    }

    #[test]
    fn nested_offsets_through_typedefs_qualifiers_and_anonymous_unions() {
        let btf = Btf::parse(sample()).unwrap();
        assert_eq!(btf.field_offset("outer", &["se"]).unwrap(), 16);
        assert_eq!(btf.field_offset("outer", &["se", "sum"]).unwrap(), 24);
        assert_eq!(btf.field_offset("inner", &["x"]).unwrap(), 8);
    }

    #[test]
    fn missing_names_are_clear_errors() {
        let btf = Btf::parse(sample()).unwrap();
        let e = btf.field_offset("outer", &["se", "nope"]).unwrap_err().to_string();
        assert!(e.contains("no field se.nope"), "{e}");
        assert!(btf.field_offset("nosuch", &["x"]).unwrap_err().to_string().contains("not in"));
        assert!(
            btf.field_offset("outer", &["c", "x"])
                .unwrap_err()
                .to_string()
                .contains("not a struct")
        );
        assert!(Btf::parse(b"garbage that is long enough to be a header".to_vec()).is_err());
        let mut truncated = sample();
        truncated.truncate(40);
        assert!(Btf::parse(truncated).is_err());
    }

    #[test]
    fn reads_the_running_kernel() {
        // Skips where the kernel has no BTF; on this project's machines it has.
        if std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
            let btf = Btf::vmlinux().unwrap();
            let off = btf.field_offset("task_struct", &["se", "sum_exec_runtime"]).unwrap();
            assert!(off > 0 && off.is_multiple_of(8), "{off}");
        }
    }
}
