//! Loading and attaching the eBPF programs of `agent-ebpf`, one module per
//! probe family with the same name as its kernel side
//! (`memory.rs` ↔ [`memory`], `net/` ↔ [`net`], [`open_sockets`] and
//! [`adoption`], `exec.rs` ↔ [`exec`], `cpu_clock.rs` and `sched.rs` ↔
//! [`profile`], `offcpu_ticks.rs` ↔ [`offcpu_ticks`]; [`cpu`] has no
//! program: it reads the target's process CPU clock). [`hook`] loads and
//! attaches any of them; names come from `agent_common::names`.
//!
//! The object is configured before load through `const volatile` globals
//! (field offsets read from tracefs and BTF, what exec arms the target,
//! request paths to watch) and is dropped as a whole to detach: every link,
//! program and map belongs to [`Probes`].

mod adoption;
pub mod cpu;
pub mod delivery;
pub mod exec;
pub mod hook;
mod mapping;
pub mod memory;
pub mod net;
pub mod offcpu_ticks;
mod open_sockets;
pub mod profile;
mod since;
pub mod stats;

use std::path::Path;

use agent_common::{ExecMatch, PathMatch, Target, TracepointOffsets, exec_match, globals};
use anyhow::{Context as _, bail};
use aya::{Ebpf, EbpfLoader};

use crate::{procfs, requests::RequestLog};

/// The eBPF object built by `agent/build.rs` (node mode loads it too:
/// `serve::node_probes`).
pub(crate) static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent-ebpf"));

/// What the probes read at one instant.
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelReading {
    pub cpu: cpu::CpuReading,
    pub memory: memory::MemoryReading,
    pub net: net::NetReading,
}

/// Which process to measure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetSpec {
    /// A running process (`attach --pid`): seeded from /proc.
    Running { pid: u32 },
    /// Our own child, armed by the kernel at its exec (`run`).
    ExecOfPid { pid: u32 },
    /// The next process to exec a program with this name (no `/`: its comm)
    /// or path (`attach --wait-exec`).
    ExecMatching { name: String },
}

/// Request paths whose first 2xx response marks a startup milestone.
#[derive(Clone, Debug, Default)]
pub struct PathOptions {
    pub health_path: Option<String>,
    pub ready_path: Option<String>,
}

/// How the one eBPF object is set up before load; what differs between
/// `attach`/`run` ([`Probes`]) and node mode (`serve::node_probes`).
pub(crate) struct ObjectSettings {
    pub offsets: TracepointOffsets,
    pub exec_match: ExecMatch,
    pub path_match: PathMatch,
    pub profile: Option<profile::ProfileConfig>,
    /// Node mode: the target set's capacity (`TARGET_SET = 1`, `TARGETS`
    /// sized to it); `None` for the one-target modes.
    pub target_set: Option<u32>,
    /// `--delivery`: the socket programs do the delivery bookkeeping
    /// (`DELIVERY = 1`); the caller attaches [`delivery`]'s hooks.
    pub delivery: bool,
}

/// Loads the object with `settings`, its event ring sized by `ring_shape`.
/// Also returns aya's parse of the kernel's BTF, which the BTF tracepoint
/// attaches need (they look up their target types there). It is large, so
/// there is only ever one: `EbpfLoader::new` parses its own, dropped before
/// this one is made; the caller drops it once everything is attached.
pub(crate) fn load_object(
    settings: &ObjectSettings,
    ring_shape: (u32, u32),
) -> anyhow::Result<(Ebpf, aya::Btf)> {
    let mut loader = EbpfLoader::new();
    loader.btf(None);
    let kernel_btf =
        aya::Btf::from_sys_fs().context("reading the kernel's BTF (/sys/kernel/btf/vmlinux)")?;
    net::size_event_ring(&mut loader, ring_shape);
    profile::configure(&mut loader, &settings.profile)?;
    if let Some(max_targets) = settings.target_set {
        loader.map_max_entries(agent_common::names::maps::TARGETS, max_targets);
        loader.override_global(globals::TARGET_SET, &1u32, true);
    }
    let ebpf = loader
        .btf(Some(&kernel_btf))
        .override_global(globals::OFFSETS, &settings.offsets, true)
        .override_global(globals::EXEC_MATCH, &settings.exec_match, true)
        .override_global(globals::PATH_MATCH, &settings.path_match, true)
        .override_global(globals::EVENT_RING_SHIFT, &ring_shape.1, true)
        .override_global(globals::DELIVERY, &u32::from(settings.delivery), true)
        .load(EBPF_OBJECT)
        .context(
            "loading the eBPF object failed (needs root, or CAP_BPF and CAP_PERFMON; \
             the verifier's message above says which program and why)",
        )?;
    Ok((ebpf, kernel_btf))
}

/// All programs, attached to one target thread group.
pub struct Probes {
    /// The target's tgid; 0 until the exec hook armed it.
    pid: u32,
    exec: exec::ExecProbe,
    cpu: cpu::CpuProbe,
    memory: memory::MemoryProbe,
    net: net::NetProbe,
    /// The cpu-clock sampler, with `--profile-dir` (taken by the profiler).
    profile: Option<profile::ProfileProbe>,
    /// Its hooks, with `--profile-dir`: detached while profiling is paused.
    profile_links: Option<profile::ProfileLinks>,
    // Owns the programs and their links: dropping it detaches everything.
    ebpf: Ebpf,
}

impl Probes {
    /// Loads, seeds and attaches every probe; the profiling programs too
    /// when `profile` is given (`--profile-dir`), the delivery hooks with
    /// `delivery` (`--delivery`).
    pub fn attach(
        spec: &TargetSpec,
        paths: &PathOptions,
        tracefs_root: &Path,
        profile: Option<profile::ProfileConfig>,
        delivery: bool,
    ) -> anyhow::Result<Probes> {
        let btf = crate::btf::Btf::vmlinux()?;
        let mut offsets = TracepointOffsets::default();
        exec::offsets(tracefs_root, &mut offsets)?;
        cpu::offsets(&btf, &mut offsets)?;
        memory::offsets(tracefs_root, &btf, &mut offsets)?;
        net::offsets(tracefs_root, &btf, &mut offsets)?;
        delivery::offsets(&btf, &mut offsets)?;
        drop(btf); // ~5 MiB: gone before the maps and programs are created
        let exec_match = exec_match_for(spec)?;
        let path_match = path_match_for(paths)?;

        let ring_shape = net::event_ring_shape()?;
        let object =
            ObjectSettings { offsets, exec_match, path_match, profile, target_set: None, delivery };
        let (mut ebpf, kernel_btf) = load_object(&object, ring_shape)?;
        // Seed state before the programs run, then attach. A running target
        // is set now; an exec'd one is armed by the kernel at its exec.
        let running = match spec {
            TargetSpec::Running { pid } => Some(*pid),
            _ => None,
        };
        let exec = exec::ExecProbe::attach(&mut ebpf, running)?;
        let cpu = cpu::CpuProbe::new(running)?;
        let memory = memory::MemoryProbe::attach(&mut ebpf, running)?;
        let paths = (path_match.health_len > 0, path_match.ready_len > 0);
        let net = net::NetProbe::attach(
            &mut ebpf,
            &kernel_btf,
            running,
            running.is_none(),
            paths,
            ring_shape,
        )?;
        if delivery {
            delivery::attach(&mut ebpf, &kernel_btf)?;
        }
        if profile.is_some_and(|c| c.off_cpu) {
            offcpu_ticks::load(&mut ebpf, &kernel_btf)?;
        }
        let (profile, profile_links) = profile
            .map(|c| profile::ProfileProbe::attach(&mut ebpf, &kernel_btf, c))
            .transpose()?
            .unzip();
        drop(kernel_btf);
        stats::attach_floor_if_measuring(&mut ebpf)?;
        let pid = running.unwrap_or(0);
        Ok(Probes { pid, exec, cpu, memory, net, profile, profile_links, ebpf })
    }

    /// The target, once armed (at once for a running process).
    pub fn target(&mut self) -> anyhow::Result<Option<Target>> {
        let t = self.exec.target()?;
        if t.tgid == 0 {
            return Ok(None);
        }
        if self.pid == 0 {
            // Armed at its exec: its CPU counts from there, and sockets it
            // inherited predate the programs.
            self.cpu.armed(t.tgid, t.runtime_at_exec_ns);
            self.memory.armed(t.tgid, (t.min_flt_at_exec, t.maj_flt_at_exec));
            self.net.target_found(t.tgid);
        }
        self.pid = t.tgid;
        Ok(Some(t))
    }

    /// `target_stat`: the target's `/proc/PID/stat` as the session just read
    /// it (`None`: gone), for the page faults the kernel keeps there.
    pub fn read(
        &self,
        target_stat: Option<(u32, &procfs::ProcStat)>,
    ) -> anyhow::Result<KernelReading> {
        Ok(KernelReading {
            cpu: self.cpu.read(),
            memory: self.memory.read(target_stat)?,
            net: self.net.read()?,
        })
    }

    /// Moves finished requests and calls from the kernel into `log`; then,
    /// once the startup milestones the read-side syscall hooks serve are
    /// reached, detaches those hooks (see `NetProbe::detach_read_hooks_when_done`).
    pub fn drain(&mut self, log: &mut RequestLog) -> u64 {
        let n = self.net.drain(log);
        self.net.close_adoption_when_due();
        if let Err(e) = self.net.detach_read_hooks_when_done(&mut self.ebpf) {
            eprintln!("perf-agent: warning: {e:#}");
        }
        n
    }

    /// At the end: drains, then completes exchanges still open; returns the
    /// number of requests still in flight (read, not yet answered).
    pub fn drain_final(&mut self, log: &mut RequestLog) -> u64 {
        self.net.drain_last(log);
        self.net.drain_open_exchanges(self.pid, log)
    }

    /// The off-CPU tick iterator bound to the target `pid` (`--profile-dir`).
    pub fn offcpu_ticks(&mut self, pid: u32) -> anyhow::Result<offcpu_ticks::OffCpuTicks> {
        offcpu_ticks::OffCpuTicks::bind(&mut self.ebpf, pid)
    }

    /// The cpu-clock sampler's ring and counters, once (`--profile-dir`).
    pub fn take_profile_probe(&mut self) -> Option<profile::ProfileProbe> {
        self.profile.take()
    }

    /// Pauses profiling (detaches its programs) or resumes it; an error
    /// without `--profile-dir`.
    pub fn pause_profiling(&mut self, paused: bool) -> anyhow::Result<()> {
        match self.profile_links.as_mut() {
            Some(links) => links.set_paused(&mut self.ebpf, paused),
            None => bail!("profiling is off (no --profile-dir): nothing to pause"),
        }
    }

    /// Run counts, run time and recursion misses of every program.
    pub fn program_stats(&self) -> Vec<stats::ProgramStats> {
        stats::read_all(&self.ebpf)
    }
}

/// Takes a map out of the object by name, with context if it is missing.
pub(crate) fn take_map(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<aya::maps::Map> {
    ebpf.take_map(name).with_context(|| format!("eBPF object has no map {name}"))
}

/// The exec hook's configuration for `spec`.
fn exec_match_for(spec: &TargetSpec) -> anyhow::Result<ExecMatch> {
    let mut m = ExecMatch::NONE;
    match spec {
        TargetSpec::Running { .. } => {}
        TargetSpec::ExecOfPid { pid } => {
            m.kind = exec_match::PID;
            m.pid = *pid;
        }
        TargetSpec::ExecMatching { name } => {
            let copy = |dst: &mut [u8; 256], s: &str| -> anyhow::Result<u32> {
                if s.is_empty() || s.len() > exec_match::NAME_MAX {
                    bail!("--wait-exec {s:?}: give a name or path of 1 to 255 bytes");
                }
                dst[..s.len()].copy_from_slice(s.as_bytes());
                Ok(s.len() as u32)
            };
            if name.contains('/') {
                // The kernel reports the path as given to execve: match it
                // literally and also as an absolute, resolved path.
                m.kind = exec_match::PATH;
                m.len_a = copy(&mut m.name_a, name)?;
                let resolved = std::fs::canonicalize(name)
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_else(|_| name.clone());
                m.len_b = copy(&mut m.name_b, &resolved)?;
            } else {
                m.kind = exec_match::COMM;
                // The kernel keeps the first 15 bytes of a command name.
                let comm: String = name.chars().take(15).collect();
                m.len_a = copy(&mut m.name_a, &comm)?;
            }
        }
    }
    Ok(m)
}

fn path_match_for(p: &PathOptions) -> anyhow::Result<PathMatch> {
    let mut m = PathMatch::NONE;
    let copy = |flag: &str, dst: &mut [u8; 128], s: &str| -> anyhow::Result<u32> {
        if !s.starts_with('/') || s.len() >= 128 || s.contains([' ', '?']) {
            bail!(
                "{flag} {s:?}: give a request path starting with '/', shorter than 128 bytes, without query"
            );
        }
        dst[..s.len()].copy_from_slice(s.as_bytes());
        Ok(s.len() as u32)
    };
    if let Some(h) = &p.health_path {
        m.health_len = copy("--health-path", &mut m.health, h)?;
    }
    if let Some(r) = &p.ready_path {
        m.ready_len = copy("--ready-path", &mut m.ready, r)?;
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names of the symbols the relocations of ELF section `section` point
    /// at (a minimal ELF64 little-endian reader: section headers, one
    /// `SHT_REL` section, its symbol and string tables).
    fn relocation_targets(elf: &[u8], section: &str) -> Vec<String> {
        let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().unwrap()) as usize;
        let u32_at = |o: usize| u32::from_le_bytes(elf[o..o + 4].try_into().unwrap()) as usize;
        let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap()) as usize;
        let (shoff, shentsize, shnum, shstrndx) =
            (u64_at(0x28), u16_at(0x3a), u16_at(0x3c), u16_at(0x3e));
        let header = |i: usize| shoff + i * shentsize;
        let name_at = |table: usize, off: usize| {
            let start = u64_at(header(table) + 0x18) + off;
            let end = start + elf[start..].iter().position(|&b| b == 0).unwrap();
            String::from_utf8_lossy(&elf[start..end]).into_owned()
        };
        let want = format!(".rel{section}");
        let Some(rel) = (0..shnum)
            .find(|&i| u32_at(header(i) + 4) == 9 && name_at(shstrndx, u32_at(header(i))) == want)
        else {
            return Vec::new(); // no relocations at all
        };
        let (offset, size) = (u64_at(header(rel) + 0x18), u64_at(header(rel) + 0x20));
        let symtab = u32_at(header(rel) + 0x28);
        let strtab = u32_at(header(symtab) + 0x28);
        let symbols = u64_at(header(symtab) + 0x18);
        (offset..offset + size)
            .step_by(16)
            .map(|entry| {
                let symbol = u64_at(entry + 8) >> 32;
                name_at(strtab, u32_at(symbols + symbol * 24))
            })
            .collect()
    }

    /// LLVM turns runs of zero stores into `memset` calls, which bpf-linker
    /// links to a byte-at-a-time loop: 40 bytes of state cleared that way
    /// made the receive program ~200 ns slower per request. The programs that
    /// run per socket call, per context switch or per TCP state change must
    /// call none of the memory builtins.
    #[test]
    fn hot_programs_call_no_byte_loop_builtins() {
        let builtins = ["memset", "memcpy", "memmove", "memcmp", "bcmp"];
        for section in [
            "tp_btf/tcp_rcv_space_adjust",
            "tp_btf/tcp_sendmsg_locked",
            // With --profile-dir, run-queue waits.
            "tp_btf/sched_switch",
            "tp_btf/inet_sock_set_state",
            // Per segment / readable event of every socket (issue 14).
            "tp_btf/sk_data_ready",
            "tp_btf/tcp_probe",
        ] {
            let calls: Vec<String> = relocation_targets(EBPF_OBJECT, section)
                .into_iter()
                .filter(|s| builtins.contains(&s.as_str()))
                .collect();
            assert!(
                calls.is_empty(),
                "{section} calls {calls:?}: clear fields with volatile stores"
            );
        }
        // The reader itself works: the relocations of a hot program name
        // its maps.
        assert!(
            relocation_targets(EBPF_OBJECT, "tp_btf/tcp_rcv_space_adjust")
                .iter()
                .any(|s| s == "CONNS")
        );
        // The run-queue waits are counted in `sched_switch` itself.
        assert!(
            relocation_targets(EBPF_OBJECT, "tp_btf/sched_switch")
                .iter()
                .any(|s| s == "SCHED_COUNTS")
        );
    }

    /// Every map and program name user space looks up exists in the built
    /// object, and the object has no program the names do not list.
    #[test]
    fn every_name_exists_in_the_object() {
        let object = aya_obj::Object::parse(EBPF_OBJECT).expect("parsing the eBPF object");
        for map in agent_common::names::maps::ALL {
            assert!(object.maps.contains_key(map), "no map {map} in the eBPF object");
        }
        let mut programs: Vec<&str> = object.programs.keys().map(String::as_str).collect();
        programs.sort_unstable();
        let mut named = agent_common::names::programs::ALL.to_vec();
        named.sort_unstable();
        assert_eq!(programs, named, "programs in the object vs agent_common::names::programs");
    }

    #[test]
    fn exec_match_by_comm_truncates_like_the_kernel() {
        let m =
            exec_match_for(&TargetSpec::ExecMatching { name: "a-very-long-server-name".into() })
                .unwrap();
        assert_eq!(m.kind, exec_match::COMM);
        assert_eq!(&m.name_a[..m.len_a as usize], b"a-very-long-ser");
    }

    #[test]
    fn exec_match_by_path_keeps_literal_and_resolved() {
        let m =
            exec_match_for(&TargetSpec::ExecMatching { name: "/bin/../bin/sh".into() }).unwrap();
        assert_eq!(m.kind, exec_match::PATH);
        assert_eq!(&m.name_a[..m.len_a as usize], b"/bin/../bin/sh");
        assert!(m.len_b > 0 && !m.name_b[..m.len_b as usize].contains(&b'.'));
    }

    #[test]
    fn bad_names_and_paths_are_refused() {
        assert!(exec_match_for(&TargetSpec::ExecMatching { name: String::new() }).is_err());
        let p = PathOptions { health_path: Some("health".into()), ready_path: None };
        assert!(path_match_for(&p).unwrap_err().to_string().contains("--health-path"));
        let p = PathOptions { health_path: None, ready_path: Some("/ready".into()) };
        let m = path_match_for(&p).unwrap();
        assert_eq!((m.health_len, m.ready_len), (0, 6));
    }
}
