//! What the unwinder needs from one ELF file: its unwind sections and load
//! segments, read once per file and shared between address spaces; and
//! what names it: its GNU build-id and the debug file shipped apart.

use std::{ops::Range, sync::Arc};

use object::{Object as _, ObjectSection as _, ObjectSegment as _};

/// Section bytes, shared (framehop takes its data by value).
pub type Bytes = Arc<[u8]>;

/// One section: where the file says it lives, and its bytes.
#[derive(Clone, Debug)]
pub struct Section {
    pub svma: Range<u64>,
    pub data: Bytes,
}

/// The unwind-relevant contents of an ELF image.
#[derive(Clone, Debug, Default)]
pub struct ElfUnwindInfo {
    pub text: Option<Section>,
    pub eh_frame: Option<Section>,
    pub eh_frame_hdr: Option<Section>,
    pub debug_frame: Option<Section>,
    pub got: Option<Range<u64>>,
    /// `PT_LOAD` segments: (file offset, file size, vaddr), executable ones
    /// first.
    pub loads: Vec<(u64, u64, u64)>,
}

impl ElfUnwindInfo {
    /// Parses an ELF image in memory.
    pub fn parse(data: &[u8]) -> Result<ElfUnwindInfo, object::Error> {
        let file = object::File::parse(data)?;
        let section = |name: &str| -> Option<Section> {
            let s = file.section_by_name(name)?;
            let bytes = s.uncompressed_data().ok()?;
            Some(Section { svma: s.address()..s.address() + s.size(), data: Arc::from(&*bytes) })
        };
        let mut loads: Vec<(bool, u64, u64, u64)> = file
            .segments()
            .map(|seg| {
                let (offset, size) = seg.file_range();
                let exec = match seg.flags() {
                    object::SegmentFlags::Elf { p_flags, .. } => {
                        p_flags.0 & object::elf::PF_X.0 != 0
                    }
                    _ => false,
                };
                (!exec, offset, size, seg.address())
            })
            .collect();
        loads.sort();
        let loads = loads.into_iter().map(|(_, o, s, v)| (o, s, v)).collect();
        Ok(ElfUnwindInfo {
            text: section(".text"),
            eh_frame: section(".eh_frame"),
            eh_frame_hdr: section(".eh_frame_hdr"),
            debug_frame: section(".debug_frame"),
            got: file.section_by_name(".got").map(|s| s.address()..s.address() + s.size()),
            loads,
        })
    }

    /// Reads and parses a file (mapped, not copied whole).
    pub fn read(path: &std::path::Path) -> anyhow::Result<ElfUnwindInfo> {
        let file = std::fs::File::open(path)?;
        // SAFETY: a read-only private mapping; a file truncated under us
        // would fault, which the ELF files of a running process are not.
        let map = unsafe { memmap2::Mmap::map(&file)? };
        Ok(ElfUnwindInfo::parse(&map)?)
    }

    /// Load bias for a mapping of this file at `start` from file offset
    /// `offset`: actual address minus the address the file states. The
    /// segment is the one the kernel mapped there: the kernel maps from the
    /// segment's offset rounded down to a page, which can also lie inside
    /// the previous segment's last page, so an executable segment starting
    /// on that page wins, then any segment holding `offset`.
    pub fn bias(&self, start: u64, offset: u64) -> Option<u64> {
        const PAGE: u64 = 4096;
        let starts_here = |&&(off, _, _): &&(u64, u64, u64)| off & !(PAGE - 1) == offset;
        let holds = |&&(off, size, _): &&(u64, u64, u64)| {
            offset >= off & !(PAGE - 1) && offset < off + size.max(1)
        };
        let &(seg_off, _, vaddr) =
            self.loads.iter().find(starts_here).or_else(|| self.loads.iter().find(holds))?;
        // avma = start + (file_off - offset); svma = vaddr + (file_off - seg_off)
        Some(start.wrapping_sub(offset).wrapping_add(seg_off).wrapping_sub(vaddr))
    }
}

/// The vdso of this process: the same image the kernel maps into every
/// process, so the target's can be read here.
pub fn own_vdso() -> Option<Vec<u8>> {
    // SAFETY: getauxval has no preconditions.
    let base = unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) };
    if base == 0 {
        return None;
    }
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let line = maps.lines().find(|l| l.ends_with("[vdso]"))?;
    let (start, rest) = line.split_once('-')?;
    let end = rest.split(' ').next()?;
    let (start, end) = (u64::from_str_radix(start, 16).ok()?, u64::from_str_radix(end, 16).ok()?);
    if start != base || end <= start {
        return None;
    }
    // SAFETY: [start, end) is this process's vdso mapping, readable for
    // the life of the process.
    Some(unsafe { std::slice::from_raw_parts(start as *const u8, (end - start) as usize) }.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bias_follows_the_segment_holding_the_mapping() {
        let info = ElfUnwindInfo {
            // a PIE: text at file offset 0x1000 stated at 0x1000; an lld
            // layout where vaddr runs one page ahead of the offset
            loads: vec![(0x1000, 0x3000, 0x2000), (0, 0x500, 0)],
            ..Default::default()
        };
        let bias = info.bias(0x5555_0000_1000, 0x1000).unwrap();
        assert_eq!(0x5555_0000_1000u64 - bias, 0x2000);
        assert_eq!(info.bias(0x5555_0000_0000, 0).unwrap(), 0x5555_0000_0000);
        assert_eq!(info.bias(0x1000, 0x9000), None);
    }

    #[test]
    fn reads_our_own_binary_and_vdso() {
        let exe = std::env::current_exe().unwrap();
        let info = ElfUnwindInfo::read(&exe).unwrap();
        assert!(info.eh_frame.is_some() && info.eh_frame_hdr.is_some() && info.text.is_some());
        let vdso = own_vdso().expect("a vdso");
        let v = ElfUnwindInfo::parse(&vdso).unwrap();
        assert!(v.eh_frame.is_some(), "the vdso carries .eh_frame");
    }
}

#[cfg(test)]
mod own_maps_tests {
    use super::*;

    /// Every executable file mapping of this test process gets a bias, and
    /// the bias puts this function's own address inside `.text`.
    #[test]
    fn every_mapping_of_this_process_is_placed() {
        let maps = crate::profile::maps::read_maps(std::process::id()).unwrap();
        assert!(maps.iter().any(|m| m.path.contains("libc")), "{maps:?}");
        for m in maps.iter().filter(|m| m.path != "[vdso]") {
            let info = ElfUnwindInfo::read(std::path::Path::new(&m.path)).unwrap();
            let bias = info.bias(m.start, m.offset);
            assert!(bias.is_some(), "{m:?}: loads {:x?}", info.loads);
        }
        let here = every_mapping_of_this_process_is_placed as *const () as u64;
        let m = maps.iter().find(|m| m.start <= here && here < m.end).unwrap();
        let info = ElfUnwindInfo::read(std::path::Path::new(&m.path)).unwrap();
        let svma = here - info.bias(m.start, m.offset).unwrap();
        assert!(info.text.unwrap().svma.contains(&svma));
    }
}

/// The GNU build-id of an ELF image (its `.note.gnu.build-id`).
pub fn build_id(data: &[u8]) -> Option<Vec<u8>> {
    id_of(&object::File::parse(data).ok()?)
}

fn id_of(obj: &object::File) -> Option<Vec<u8>> {
    obj.build_id().ok().flatten().map(<[u8]>::to_vec)
}

/// `f` of an open ELF file, mapped and parsed.
fn parsed<T>(file: &std::fs::File, f: impl FnOnce(&object::File) -> Option<T>) -> Option<T> {
    // SAFETY: a read-only mapping of a file we keep open.
    let map = unsafe { memmap2::Mmap::map(file) }.ok()?;
    f(&object::File::parse(&*map).ok()?)
}

/// The GNU build-id of an open ELF file.
pub fn file_build_id(file: &std::fs::File) -> Option<Vec<u8>> {
    parsed(file, id_of)
}

/// The GNU build-id of an open ELF file that has no symbol table
/// (`.symtab`: stripped), whose names are then only in a debug file.
pub fn stripped_build_id(file: &std::fs::File) -> Option<Vec<u8>> {
    parsed(file, |obj| if obj.symbol_table().is_some() { None } else { id_of(obj) })
}

/// Bytes as lower-case hex, as build-ids are written.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The path of the debug file for `build_id` under `root` (a `.build-id`
/// directory: `root/ab/cdef….debug`, where Debian's `-dbg`/`-dbgsym` and
/// Fedora's `-debuginfo` packages install them), whether or not it exists.
pub fn debug_file_path(root: &std::path::Path, build_id: &[u8]) -> Option<std::path::PathBuf> {
    let (first, rest) = build_id.split_first()?;
    if rest.is_empty() {
        return None;
    }
    Some(root.join(format!("{first:02x}")).join(format!("{}.debug", hex(rest))))
}
