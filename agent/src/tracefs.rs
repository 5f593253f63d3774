//! tracefs: make sure it is mounted (it is not at boot on some machines) and
//! read tracepoint `format` files, from which the eBPF programs get the byte
//! offsets of the fields they read. No hard-coded kernel layouts.

use std::{
    ffi::CString,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};

pub const TRACEFS: &str = "/sys/kernel/tracing";

/// Returns the tracefs mount point, mounting it at [`TRACEFS`] if needed.
pub fn ensure_mounted() -> anyhow::Result<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    if let Some(path) = tracefs_mount_point(&mounts) {
        return Ok(path);
    }
    let target = Path::new(TRACEFS);
    if !target.is_dir() {
        bail!(
            "tracefs is not mounted and {TRACEFS} does not exist: this kernel lacks tracefs \
             (CONFIG_TRACING); perf-agent needs it for tracepoints"
        );
    }
    let c = |s: &str| CString::new(s).expect("no NUL");
    let (src, dst, fstype) = (c("tracefs"), c(TRACEFS), c("tracefs"));
    // SAFETY: valid NUL-terminated strings, no data argument.
    let rc =
        unsafe { libc::mount(src.as_ptr(), dst.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        bail!(
            "tracefs is not mounted and mounting it failed: {e}. Mount it with \
             `mount -t tracefs tracefs {TRACEFS}` (needs CAP_SYS_ADMIN), then retry"
        );
    }
    Ok(target.to_path_buf())
}

/// The first tracefs mount in a `/proc/self/mounts` text (debugfs's
/// `tracing` subdirectory counts too).
pub fn tracefs_mount_point(mounts: &str) -> Option<PathBuf> {
    let mut debugfs = None;
    for line in mounts.lines() {
        let mut f = line.split_ascii_whitespace();
        let (_src, Some(dir), Some(fstype)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        match fstype {
            "tracefs" => return Some(PathBuf::from(dir)),
            "debugfs" => debugfs = Some(PathBuf::from(dir).join("tracing")),
            _ => {}
        }
    }
    debugfs.filter(|p| p.join("events").is_dir())
}

/// One field of a tracepoint record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub offset: u32,
    pub size: u32,
    pub signed: bool,
}

/// The parsed `format` file of one tracepoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventFormat {
    pub fields: Vec<Field>,
}

impl EventFormat {
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// Offset of a field that must be there with the given size, with an
    /// error naming the tracepoint otherwise.
    pub fn offset(&self, event: &str, name: &str, size: u32) -> anyhow::Result<u32> {
        match self.field(name) {
            Some(f) if f.size == size => Ok(f.offset),
            Some(f) => bail!(
                "tracepoint {event}: field `{name}` is {} bytes, perf-agent expects {size}",
                f.size
            ),
            None => bail!("tracepoint {event} has no field `{name}` on this kernel"),
        }
    }
}

/// Parses a tracefs `format` file: lines like
/// `field:pid_t next_pid;` `offset:56;` `size:4;` `signed:1;`, tab-separated.
pub fn parse_format(text: &str) -> EventFormat {
    let mut fields = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let Some(decl) = line.strip_prefix("field:") else {
            continue;
        };
        let mut parts = decl.split(';').map(str::trim);
        let Some(declaration) = parts.next() else {
            continue;
        };
        // The name is the last word of the C declaration, minus any array suffix.
        let name = declaration
            .rsplit(|c: char| c.is_whitespace() || c == '*')
            .next()
            .unwrap_or("")
            .split('[')
            .next()
            .unwrap_or("")
            .to_string();
        let (mut offset, mut size, mut signed) = (None, None, false);
        for kv in parts {
            match kv.split_once(':') {
                Some(("offset", v)) => offset = v.parse().ok(),
                Some(("size", v)) => size = v.parse().ok(),
                Some(("signed", v)) => signed = v == "1",
                _ => {}
            }
        }
        if let (Some(offset), Some(size)) = (offset, size)
            && !name.is_empty()
        {
            fields.push(Field { name, offset, size, signed });
        }
    }
    EventFormat { fields }
}

/// Reads `events/CATEGORY/NAME/format`, with an error that says the kernel
/// lacks the hook when the tracepoint is not there.
pub fn read_format(tracefs: &Path, category: &str, name: &str) -> anyhow::Result<EventFormat> {
    let path = tracefs.join("events").join(category).join(name).join("format");
    let text = fs::read_to_string(&path).with_context(|| {
        format!(
            "tracepoint {category}:{name} is not available on this kernel ({} unreadable); \
             perf-agent needs it",
            path.display()
        )
    })?;
    Ok(parse_format(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    // sched:sched_switch as printed by Linux 6.18.
    const SCHED_SWITCH: &str = "name: sched_switch
ID: 316
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:unsigned char common_flags;	offset:2;	size:1;	signed:0;
	field:unsigned char common_preempt_count;	offset:3;	size:1;	signed:0;
	field:int common_pid;	offset:4;	size:4;	signed:1;

	field:char prev_comm[16];	offset:8;	size:16;	signed:0;
	field:pid_t prev_pid;	offset:24;	size:4;	signed:1;
	field:int prev_prio;	offset:28;	size:4;	signed:1;
	field:long prev_state;	offset:32;	size:8;	signed:1;
	field:char next_comm[16];	offset:40;	size:16;	signed:0;
	field:pid_t next_pid;	offset:56;	size:4;	signed:1;
	field:int next_prio;	offset:60;	size:4;	signed:1;

print fmt: \"prev_comm=%s\"
";

    #[test]
    fn parses_sched_switch_fields() {
        let f = parse_format(SCHED_SWITCH);
        assert_eq!(f.fields.len(), 11);
        assert_eq!(f.offset("sched:sched_switch", "next_pid", 4).unwrap(), 56);
        assert_eq!(f.field("prev_comm").unwrap().size, 16);
        assert!(f.field("prev_state").unwrap().signed);
        assert!(!f.field("common_type").unwrap().signed);
    }

    #[test]
    fn wrong_size_or_missing_field_names_the_tracepoint() {
        let f = parse_format(SCHED_SWITCH);
        let e = f.offset("sched:sched_switch", "next_pid", 8).unwrap_err().to_string();
        assert!(e.contains("sched:sched_switch") && e.contains("4 bytes"), "{e}");
        let e = f.offset("sched:sched_switch", "nope", 4).unwrap_err().to_string();
        assert!(e.contains("no field `nope`"), "{e}");
    }

    #[test]
    fn pointer_fields_and_garbage_lines() {
        let f = parse_format(
            "\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;\n\
             field:broken\n\tfield:int x;\toffset:zz;\tsize:4;\n",
        );
        assert_eq!(f.fields.len(), 1);
        assert_eq!(f.fields[0].name, "skaddr");
    }

    #[test]
    fn finds_tracefs_or_debugfs_mount() {
        let m = "sysfs /sys sysfs rw 0 0\ntracefs /sys/kernel/tracing tracefs rw 0 0\n";
        assert_eq!(tracefs_mount_point(m), Some(PathBuf::from("/sys/kernel/tracing")));
        assert_eq!(tracefs_mount_point("proc /proc proc rw 0 0\n"), None);
    }
}
