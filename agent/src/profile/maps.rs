//! The target's executable mappings, from `/proc/PID/maps`.

/// One executable mapping of a file (or of the vdso).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// File offset of `start`.
    pub offset: u64,
    /// The file's path as the kernel shows it (`[vdso]` for the vdso),
    /// without a ` (deleted)` suffix.
    pub path: String,
    /// The file was deleted or replaced after it was mapped.
    pub deleted: bool,
}

/// The executable mappings in a `/proc/PID/maps` text: those backed by a
/// file, and the vdso. Anonymous executable memory (a JIT) is left out: its
/// addresses appear as bare addresses in a stack.
pub fn parse_maps(text: &str) -> Vec<Mapping> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Mapping> {
    // start-end perms offset dev inode [path]; the path may contain spaces.
    let mut fields = line.splitn(6, ' ');
    let range = fields.next()?;
    let perms = fields.next()?;
    let offset = fields.next()?;
    let _dev = fields.next()?;
    let inode = fields.next()?;
    let path = fields.next().unwrap_or("").trim_start();
    if !perms.contains('x') || path.is_empty() {
        return None;
    }
    let is_file = path.starts_with('/') && inode != "0";
    if !is_file && path != "[vdso]" {
        return None;
    }
    let (start, end) = range.split_once('-')?;
    let (path, deleted) = match path.strip_suffix(" (deleted)") {
        Some(p) => (p, true),
        None => (path, false),
    };
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        offset: u64::from_str_radix(offset, 16).ok()?,
        path: path.to_string(),
        deleted,
    })
}

/// Reads `/proc/PID/maps`.
pub fn read_maps(pid: u32) -> std::io::Result<Vec<Mapping>> {
    Ok(parse_maps(&std::fs::read_to_string(format!("/proc/{pid}/maps"))?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_executable_file_mappings_and_the_vdso() {
        let text = "\
55d0c0a00000-55d0c0a01000 r--p 00000000 fd:01 123 /usr/bin/prog
55d0c0a01000-55d0c0a05000 r-xp 00001000 fd:01 123 /usr/bin/prog
7f0000000000-7f0000021000 rw-p 00000000 00:00 0 [heap]
7f1000000000-7f1000010000 rwxp 00000000 00:00 0
7f2000001000-7f2000100000 r-xp 00028000 fd:01 456 /lib/x86_64-linux-gnu/libc.so.6
7f3000000000-7f3000001000 r-xp 00002000 fd:01 789 /tmp/my lib.so (deleted)
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0 [vdso]
7ffe00000000-7ffe00021000 rw-p 00000000 00:00 0 [stack]
";
        let m = parse_maps(text);
        assert_eq!(m.len(), 4, "{m:?}");
        assert_eq!(
            m[0],
            Mapping {
                start: 0x55d0c0a01000,
                end: 0x55d0c0a05000,
                offset: 0x1000,
                path: "/usr/bin/prog".into(),
                deleted: false
            }
        );
        assert_eq!(m[1].offset, 0x28000);
        assert_eq!((m[2].path.as_str(), m[2].deleted), ("/tmp/my lib.so", true));
        assert_eq!(m[3].path, "[vdso]");
    }
}
