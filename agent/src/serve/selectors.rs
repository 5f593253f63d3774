//! What `serve` measures: `--pid`, `--exe`, `--comm`, `--port`, `--cgroup`.
//! Each selector is checked before anything is attached (bad input exits
//! with a message naming the fix), and can list the processes it matches
//! now; later execs are matched by the kernel's exec hook (`node_probes`).

use std::{
    collections::HashSet,
    fs,
    io::{BufRead as _, BufReader},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};

use crate::procfs;

/// Where cgroup v2 is mounted on unified systems; hybrid ones have it at
/// /sys/fs/cgroup/unified ([`cgroup2_root`] reads the mount table).
pub const CGROUP2_ROOT: &str = "/sys/fs/cgroup";
/// The kernel keeps the first 15 bytes of a command name.
const COMM_MAX: usize = 15;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    /// One running process; not followed after it exits.
    Pid(u32),
    /// Every process that execs this program: the path as given and as
    /// resolved (both go to the kernel's exec hook).
    Exe { given: String, resolved: PathBuf },
    /// Every process whose command name is this (truncated like the kernel's).
    Comm(String),
    /// The process listening on this TCP port.
    Port(u16),
    /// Every process in this cgroup v2 directory; `id` is its cgroup id
    /// (the directory's inode number, what `bpf_get_current_cgroup_id` returns).
    Cgroup { path: PathBuf, id: u64 },
}

impl Selector {
    /// The `selector` label: `kind=value`.
    pub fn label(&self) -> String {
        match self {
            Selector::Pid(p) => format!("pid={p}"),
            Selector::Exe { given, .. } => format!("exe={given}"),
            Selector::Comm(c) => format!("comm={c}"),
            Selector::Port(p) => format!("port={p}"),
            Selector::Cgroup { path, .. } => format!("cgroup={}", path.display()),
        }
    }
}

/// Checks a `--pid`: it must exist now.
pub fn pid(pid: u32) -> anyhow::Result<Selector> {
    if pid == 0 {
        bail!("--pid 0: give the PID of a running process");
    }
    procfs::read_stat(pid)
        .with_context(|| format!("--pid {pid}: no such process (check the PID with `ps`)"))?;
    Ok(Selector::Pid(pid))
}

/// Checks an `--exe`: an existing file, by a path (with a `/`).
pub fn exe(given: &str) -> anyhow::Result<Selector> {
    if !given.contains('/') || given.len() > agent_common::EXEC_PATH_KEY - 1 {
        bail!(
            "--exe {given:?}: give the program's path (with a '/', up to 255 bytes), e.g. \
             /usr/sbin/nginx; for a command name use --comm"
        );
    }
    let resolved = fs::canonicalize(given).with_context(|| {
        format!("--exe {given}: no such file (give the path the service is started with)")
    })?;
    if resolved.as_os_str().len() > agent_common::EXEC_PATH_KEY - 1 {
        bail!("--exe {given}: its resolved path is longer than 255 bytes");
    }
    Ok(Selector::Exe { given: given.to_string(), resolved })
}

/// Checks a `--comm`: a command name, not a path.
pub fn comm(name: &str) -> anyhow::Result<Selector> {
    if name.is_empty() || name.contains('/') || name.contains('\0') {
        bail!(
            "--comm {name:?}: give a command name as `ps -o comm` shows it (for a path use --exe)"
        );
    }
    // Bytes, like the kernel (which may cut a UTF-8 sequence).
    let kept = &name.as_bytes()[..name.len().min(COMM_MAX)];
    Ok(Selector::Comm(String::from_utf8_lossy(kept).into_owned()))
}

/// Checks a `--port`.
pub fn port(port: u16) -> anyhow::Result<Selector> {
    if port == 0 {
        bail!("--port 0: give the TCP port the service listens on");
    }
    Ok(Selector::Port(port))
}

/// The cgroup v2 mount point (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified`
/// on a hybrid layout), from `/proc/self/mountinfo`.
pub fn cgroup2_root() -> PathBuf {
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    crate::cgroup::place::parse_mountinfo(&mounts)
        .into_iter()
        .find(|m| m.version == crate::cgroup::Version::V2)
        .map_or_else(|| PathBuf::from(CGROUP2_ROOT), |m| m.point)
}

/// Checks a `--cgroup`: an existing cgroup v2 directory, absolute (under
/// the cgroup v2 mount) or relative to that mount.
pub fn cgroup(given: &Path) -> anyhow::Result<Selector> {
    let root = cgroup2_root();
    let path = if given.starts_with(&root) {
        given.to_path_buf()
    } else {
        root.join(given.strip_prefix("/").unwrap_or(given))
    };
    if !path.join("cgroup.procs").is_file() {
        bail!(
            "--cgroup {}: {} is not a cgroup v2 directory (no cgroup.procs); give a path \
             under {} (cgroup v2), e.g. system.slice/nginx.service",
            given.display(),
            path.display(),
            root.display()
        );
    }
    let id = fs::metadata(&path).with_context(|| format!("--cgroup {}", path.display()))?.ino();
    Ok(Selector::Cgroup { path, id })
}

/// Every process of the machine (tgids), for the selectors that scan.
fn all_pids() -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect()
}

/// The command name of `pid` (`/proc/PID/comm`).
pub fn comm_of(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|s| s.trim_end().to_string())
}

/// The program `pid` runs (`/proc/PID/exe`, without " (deleted)").
pub fn exe_of(pid: u32) -> Option<String> {
    let exe = procfs::exe(pid).ok()?;
    let exe = exe.to_string_lossy();
    Some(exe.strip_suffix(" (deleted)").unwrap_or(&exe).to_string())
}

/// The processes the selectors match now, with the index of the first
/// selector that matches each. `port_owner` caches who listens where.
pub fn scan(selectors: &[Selector], ports: &mut PortOwners) -> Vec<(u32, u32)> {
    let mut found: Vec<(u32, u32)> = Vec::new();
    let mut add = |pid: u32, index: usize| {
        if pid != 0 && !found.iter().any(|(p, _)| *p == pid) {
            found.push((pid, index as u32));
        }
    };
    let needs_scan =
        selectors.iter().any(|s| matches!(s, Selector::Exe { .. } | Selector::Comm(_)));
    let pids = if needs_scan { all_pids() } else { Vec::new() };
    for (index, selector) in selectors.iter().enumerate() {
        match selector {
            Selector::Pid(p) => {
                if procfs::read_stat(*p).is_ok_and(|s| s.state != 'Z') {
                    add(*p, index);
                }
            }
            Selector::Comm(name) => {
                pids.iter()
                    .filter(|p| comm_of(**p).as_deref() == Some(name))
                    .for_each(|p| add(*p, index));
            }
            Selector::Exe { resolved, .. } => {
                let want = resolved.to_string_lossy();
                pids.iter()
                    .filter(|p| exe_of(**p).as_deref() == Some(&want))
                    .for_each(|p| add(*p, index));
            }
            Selector::Cgroup { path, .. } => {
                for pid in cgroup_procs(path) {
                    add(pid, index);
                }
            }
            Selector::Port(port) => {
                if let Some(pid) = ports.owner(*port) {
                    add(pid, index);
                }
            }
        }
    }
    found
}

/// The tgids in a cgroup (`cgroup.procs`); empty once it is gone.
fn cgroup_procs(path: &Path) -> Vec<u32> {
    let Ok(f) = fs::File::open(path.join("cgroup.procs")) else { return Vec::new() };
    BufReader::new(f).lines().map_while(Result::ok).filter_map(|l| l.trim().parse().ok()).collect()
}

/// Who listens on each port: the listening socket's inode from
/// `/proc/net/tcp{,6}` (cheap), then, only when that inode changed, the
/// process holding it (a walk of every process's descriptors).
#[derive(Default)]
pub struct PortOwners {
    known: Vec<(u16, u64, u32)>,
}

impl PortOwners {
    pub fn owner(&mut self, port: u16) -> Option<u32> {
        let inode = listening_inode(port)?;
        if let Some(&(_, _, pid)) = self.known.iter().find(|(p, i, _)| *p == port && *i == inode)
            && procfs::socket_inodes(pid).is_ok_and(|s| s.contains(&inode))
        {
            return Some(pid);
        }
        let pid = all_pids()
            .into_iter()
            .find(|pid| procfs::socket_inodes(*pid).is_ok_and(|s| s.contains(&inode)))?;
        self.known.retain(|(p, _, _)| *p != port);
        self.known.push((port, inode, pid));
        Some(pid)
    }
}

/// The inode of the socket listening on `port` in the agent's network
/// namespace, if any.
fn listening_inode(port: u16) -> Option<u64> {
    let mut seen = HashSet::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(f) = fs::File::open(file) else { continue };
        for line in BufReader::new(f).lines().map_while(Result::ok) {
            if let Some(s) = procfs::parse_net_tcp_line(&line)
                && s.state == procfs::TCP_LISTEN
                && s.local_port == port
                && seen.insert(s.inode)
            {
                return Some(s.inode);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_are_refused_with_the_fix() {
        assert!(pid(0).unwrap_err().to_string().contains("--pid 0"));
        assert!(exe("nginx").unwrap_err().to_string().contains("--comm"));
        assert!(exe("/no/such/binary").unwrap_err().to_string().contains("no such file"));
        assert!(comm("/usr/bin/x").unwrap_err().to_string().contains("--exe"));
        assert!(port(0).is_err());
        let e = cgroup(Path::new("no-such-cgroup-perf-agent")).unwrap_err().to_string();
        assert!(e.contains("not a cgroup v2 directory"), "{e}");
    }

    #[test]
    fn comm_is_truncated_like_the_kernel() {
        assert_eq!(
            comm("a-very-long-server-name").unwrap(),
            Selector::Comm("a-very-long-ser".into())
        );
        assert_eq!(comm("nginx").unwrap().label(), "comm=nginx");
    }

    #[test]
    fn exe_keeps_given_and_resolved() {
        let Selector::Exe { given, resolved } = exe("/bin/../bin/sh").unwrap() else { panic!() };
        assert_eq!(given, "/bin/../bin/sh");
        assert!(!resolved.to_string_lossy().contains(".."));
    }

    #[test]
    fn scan_finds_this_process_by_pid_comm_and_exe() {
        let me = std::process::id();
        let mine = comm(&comm_of(me).unwrap()).unwrap();
        let by_exe = exe(&exe_of(me).unwrap()).unwrap();
        let found = scan(&[Selector::Pid(me), mine, by_exe], &mut PortOwners::default());
        assert!(found.contains(&(me, 0)), "{found:?}");
    }
}
