//! Where a cgroup for the target can go: which layout the machine has and
//! the parent directory for each controller, from `/proc/self/mountinfo` and
//! `/proc/self/cgroup` (pure parsers, tested on recorded files).
//!
//! - cgroup v1 (and the hybrid layout, whose v2 tree has no controllers):
//!   one directory per controller, under the agent's own cgroup of that
//!   hierarchy, so limits set on the agent (a CI job's, a sandbox's) still
//!   hold for the target.
//! - cgroup v2: one directory under the root of the cgroup2 mount (the
//!   agent's own cgroup has processes, the agent among them, and v2 lets a
//!   cgroup with processes give controllers to no child).

use std::path::{Path, PathBuf};

use super::Version;

/// One mounted cgroup hierarchy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub version: Version,
    /// Where it is mounted.
    pub point: PathBuf,
    /// The hierarchy's path at that mount point (`/` unless bind-mounted).
    pub root: String,
    /// v1: the controllers bound to it (`cpu`, `memory`, ...).
    pub controllers: Vec<String>,
}

/// `/proc/self/mountinfo` → the cgroup mounts.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split_whitespace().collect();
            let mut right = right.split_whitespace();
            let (fstype, _source, options) = (right.next()?, right.next()?, right.next()?);
            let (root, point) = (left.get(3)?, left.get(4)?);
            let version = match fstype {
                "cgroup" => Version::V1,
                "cgroup2" => Version::V2,
                _ => return None,
            };
            let controllers = match version {
                Version::V1 => options.split(',').map(str::to_string).collect(),
                Version::V2 => Vec::new(),
            };
            Some(Mount { version, point: unescape(point), root: root.to_string(), controllers })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape(s: &str) -> PathBuf {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(String::from_utf8_lossy(&out).into_owned())
}

/// `/proc/self/cgroup` → (controllers, path) per hierarchy; v2's line is
/// `0::/path` (no controllers).
pub fn parse_self_cgroup(text: &str) -> Vec<(Vec<String>, String)> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let (_id, ctl, path) = (it.next()?, it.next()?, it.next()?);
            let ctl = ctl.split(',').filter(|c| !c.is_empty()).map(str::to_string).collect();
            Some((ctl, path.to_string()))
        })
        .collect()
}

/// The directory of the cgroup `path` (as `/proc/self/cgroup` names it) in `m`.
fn dir_in(m: &Mount, path: &str) -> PathBuf {
    let rel = path.strip_prefix(m.root.as_str()).unwrap_or(path).trim_start_matches('/');
    if rel.is_empty() { m.point.clone() } else { m.point.join(rel) }
}

/// Where the target's cgroup goes, per controller perf-agent needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub version: Version,
    /// Parent directory for the `cpu` controller (v1), or the one parent (v2).
    pub cpu_parent: Option<PathBuf>,
    pub memory_parent: Option<PathBuf>,
}

/// Picks the layout: v1 controllers where mounted (this covers the hybrid
/// layout), else the cgroup2 mount if it offers the controllers. Errors say
/// which controller is missing.
pub fn placement(
    mountinfo: &str,
    self_cgroup: &str,
    v2_controllers: impl Fn(&Path) -> Option<String>,
    need_cpu: bool,
    need_memory: bool,
) -> anyhow::Result<Placement> {
    let mounts = parse_mountinfo(mountinfo);
    let own = parse_self_cgroup(self_cgroup);
    let v1_parent = |controller: &str| {
        let m = mounts
            .iter()
            .find(|m| m.version == Version::V1 && m.controllers.iter().any(|c| c == controller))?;
        let path = own.iter().find(|(c, _)| c.iter().any(|c| c == controller))?.1.as_str();
        Some(dir_in(m, path))
    };
    let (cpu, memory) = (v1_parent("cpu"), v1_parent("memory"));
    let name = |w: &[(&'static str, bool)]| -> Vec<&'static str> {
        w.iter().filter(|w| w.1).map(|w| w.0).collect()
    };
    let missing_v1 =
        name(&[("cpu", need_cpu && cpu.is_none()), ("memory", need_memory && memory.is_none())]);
    if missing_v1.is_empty() {
        return Ok(Placement {
            version: Version::V1,
            cpu_parent: cpu.filter(|_| need_cpu),
            memory_parent: memory.filter(|_| need_memory),
        });
    }
    let v2 = mounts.iter().find(|m| m.version == Version::V2);
    if let (Some(m), None, None) = (v2, &cpu, &memory) {
        let available = v2_controllers(&m.point).unwrap_or_default();
        let wanted = name(&[("cpu", need_cpu), ("memory", need_memory)]);
        let missing: Vec<&str> =
            wanted.into_iter().filter(|w| !available.split_whitespace().any(|a| a == *w)).collect();
        if missing.is_empty() {
            let parent = Some(m.point.clone());
            return Ok(Placement {
                version: Version::V2,
                cpu_parent: parent.clone().filter(|_| need_cpu),
                memory_parent: parent.filter(|_| need_memory),
            });
        }
        anyhow::bail!(
            "--cpus/--memory need the cgroup controller(s) {}, missing from the cgroup v2 tree at \
             {} (its cgroup.controllers: {:?}) and not mounted as cgroup v1 hierarchies either; \
             enable them in the parent's cgroup.subtree_control",
            missing.join(" and "),
            m.point.display(),
            available.trim()
        );
    }
    anyhow::bail!(
        "--cpus/--memory need the cgroup controller(s) {}, which are mounted neither as cgroup v1 \
         hierarchies nor in a cgroup v2 tree (see /proc/self/mountinfo); mount them, e.g. \
         `mount -t cgroup2 none /sys/fs/cgroup`",
        missing_v1.join(" and ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine (Firecracker VM, kernel 6.18): v1 controllers, an empty
    /// v2 tree at /sys/fs/cgroup/unified.
    const HYBRID_MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const HYBRID_SELF: &str =
        "9:name=systemd:/\n4:memory:/process_api/7b09\n2:cpuacct:/\n1:cpu:/\n0::/\n";
    /// A GitHub Ubuntu runner: pure v2.
    const V2_MOUNTINFO: &str = "\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
30 25 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";
    const V2_SELF: &str = "0::/system.slice/runner-provisioner.service\n";
    /// Distribution v1 with cpu and cpuacct co-mounted.
    const DISTRO_V1: &str = "\
24 20 0:21 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
25 20 0:22 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
";
    const DISTRO_V1_SELF: &str = "5:cpu,cpuacct:/user.slice\n3:memory:/user.slice/user-0.slice\n";

    fn none(_: &Path) -> Option<String> {
        None
    }

    #[test]
    fn hybrid_uses_v1_under_the_agents_own_cgroups() {
        let p = placement(HYBRID_MOUNTINFO, HYBRID_SELF, none, true, true).unwrap();
        assert_eq!(p.version, Version::V1);
        assert_eq!(p.cpu_parent.as_deref(), Some(Path::new("/sys/fs/cgroup/cpu")));
        assert_eq!(
            p.memory_parent.as_deref(),
            Some(Path::new("/sys/fs/cgroup/memory/process_api/7b09"))
        );
        let p = placement(DISTRO_V1, DISTRO_V1_SELF, none, true, false).unwrap();
        assert_eq!(
            p.cpu_parent.as_deref(),
            Some(Path::new("/sys/fs/cgroup/cpu,cpuacct/user.slice"))
        );
        assert_eq!(p.memory_parent, None, "only the controllers asked for");
        let p = placement(DISTRO_V1, DISTRO_V1_SELF, none, false, true).unwrap();
        assert_eq!(p.memory_parent, Some("/sys/fs/cgroup/memory/user.slice/user-0.slice".into()));
    }

    #[test]
    fn pure_v2_uses_the_root_of_the_tree() {
        let ctl = |root: &Path| {
            assert_eq!(root, Path::new("/sys/fs/cgroup"));
            Some("cpuset cpu io memory hugetlb pids rdma misc\n".to_string())
        };
        let p = placement(V2_MOUNTINFO, V2_SELF, ctl, true, true).unwrap();
        assert_eq!(p.version, Version::V2);
        assert_eq!(p.cpu_parent.as_deref(), Some(Path::new("/sys/fs/cgroup")));
        assert_eq!(p.memory_parent.as_deref(), Some(Path::new("/sys/fs/cgroup")));
        let p = placement(V2_MOUNTINFO, V2_SELF, ctl, false, true).unwrap();
        assert_eq!(p.cpu_parent, None, "only what was asked for");
    }

    #[test]
    fn missing_controllers_are_named() {
        let only_pids = |_: &Path| Some("pids".to_string());
        let e = placement(V2_MOUNTINFO, V2_SELF, only_pids, true, true).unwrap_err().to_string();
        assert!(e.contains("(s) cpu and memory, missing") && e.contains("/sys/fs/cgroup"), "{e}");
        let e = placement("", "", none, false, true).unwrap_err().to_string();
        assert!(e.contains("controller(s) memory") && e.contains("mount"), "{e}");
        let e = placement(DISTRO_V1.lines().next().unwrap(), DISTRO_V1_SELF, none, true, true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("controller(s) memory"), "{e}");
    }

    #[test]
    fn mountinfo_fields() {
        let m = parse_mountinfo(r"41 31 0:38 /sub /mnt/with\040space rw - cgroup2 none rw");
        assert_eq!(m[0].point, Path::new("/mnt/with space"));
        assert_eq!(m[0].root, "/sub");
        assert_eq!(dir_in(&m[0], "/sub/a/b"), Path::new("/mnt/with space/a/b"));
        assert_eq!(dir_in(&m[0], "/sub"), Path::new("/mnt/with space"));
    }
}
