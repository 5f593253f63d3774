//! The eBPF object in node mode: the same object as `attach`, loaded with
//! `TARGET_SET = 1` and a `TARGETS` map of `--max-targets` entries; only the
//! exec hook, the network family and (`--delivery`) the delivery hooks are
//! attached. CPU, memory and faults
//! come from `/proc` at scrape time (what Prometheus's `process_*` metrics
//! mean), so node mode puts nothing on the scheduler's hot path.

use std::path::Path;

use agent_common::{
    COMM_KEY, EXEC_PATH_KEY, ExecMatch, NetEvent, PathMatch, TargetMember, TracepointOffsets,
    names::{maps, programs},
};
use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData},
};

use super::selectors::Selector;
use crate::probes::{
    ObjectSettings, delivery, exec,
    hook::{self, Hook},
    load_object,
    net::{self, NetProbe, NetReading},
    stats, take_map,
};

pub struct NodeProbes {
    net: NetProbe,
    targets: HashMap<MapData, u32, TargetMember>,
    refused: Array<MapData, u64>,
    // Kept so the exec hook's maps stay filled; owned for the object's life.
    _comms: HashMap<MapData, [u8; COMM_KEY], u32>,
    _paths: HashMap<MapData, [u8; EXEC_PATH_KEY], u32>,
    _cgroups: HashMap<MapData, u64, u32>,
    // Owns the programs and their links: dropping it detaches everything.
    ebpf: Ebpf,
}

impl NodeProbes {
    /// Loads the object, fills the exec hook's selector maps, attaches.
    pub fn attach(
        selectors: &[Selector],
        max_targets: u32,
        tracefs_root: &Path,
        delivery: bool,
    ) -> anyhow::Result<NodeProbes> {
        let btf = crate::btf::Btf::vmlinux()?;
        let mut offsets = TracepointOffsets::default();
        exec::offsets(tracefs_root, &mut offsets)?;
        net::offsets(tracefs_root, &btf, &mut offsets)?;
        delivery::offsets(&btf, &mut offsets)?;
        drop(btf);
        let ring_shape = net::event_ring_shape()?;
        let object = ObjectSettings {
            offsets,
            exec_match: ExecMatch::NONE,
            path_match: PathMatch::NONE,
            profile: None,
            target_set: Some(max_targets),
            delivery,
        };
        let (mut ebpf, kernel_btf) = load_object(&object, ring_shape)?;
        let mut comms: HashMap<_, [u8; COMM_KEY], u32> =
            take_map(&mut ebpf, maps::EXEC_COMMS)?.try_into()?;
        let mut paths: HashMap<_, [u8; EXEC_PATH_KEY], u32> =
            take_map(&mut ebpf, maps::EXEC_PATHS)?.try_into()?;
        let mut cgroups: HashMap<_, u64, u32> =
            take_map(&mut ebpf, maps::EXEC_CGROUPS)?.try_into()?;
        for (index, selector) in selectors.iter().enumerate() {
            let index = index as u32;
            match selector {
                Selector::Comm(name) => comms.insert(padded::<COMM_KEY>(name), index, 0)?,
                Selector::Exe { given, resolved } => {
                    paths.insert(padded::<EXEC_PATH_KEY>(given), index, 0)?;
                    let resolved = resolved.to_string_lossy();
                    paths.insert(padded::<EXEC_PATH_KEY>(&resolved), index, 0)?;
                }
                Selector::Cgroup { id, .. } => cgroups.insert(id, index, 0)?,
                Selector::Pid(_) | Selector::Port(_) => {}
            }
        }
        let targets = take_map(&mut ebpf, maps::TARGETS)?.try_into()?;
        let refused = take_map(&mut ebpf, maps::TARGETS_REFUSED)?.try_into()?;
        // The network family first: a process the exec hook arms must find
        // its sockets followed.
        let net =
            NetProbe::attach(&mut ebpf, &kernel_btf, None, false, (false, false), ring_shape)?;
        // Filtered on socket storage, which every target's connections have.
        if delivery {
            delivery::attach(&mut ebpf, &kernel_btf)?;
        }
        hook::attach(
            &mut ebpf,
            programs::SCHED_PROCESS_EXEC,
            Hook::TracePoint { category: "sched", name: "sched_process_exec" },
        )?;
        drop(kernel_btf);
        stats::attach_floor_if_measuring(&mut ebpf)?;
        Ok(NodeProbes {
            net,
            targets,
            refused,
            _comms: comms,
            _paths: paths,
            _cgroups: cgroups,
            ebpf,
        })
    }

    /// The targets in the kernel's set now.
    pub fn targets(&self) -> Vec<(u32, TargetMember)> {
        self.targets.iter().filter_map(Result::ok).collect()
    }

    /// Adds a process found running (no-op when it is a target already);
    /// false when the set is full.
    pub fn add(&mut self, pid: u32, selector: u32) -> bool {
        if self.targets.get(&pid, 0).is_ok() {
            return true;
        }
        let member = TargetMember { selector, execs: 0, exec_ns: 0 };
        if self.targets.insert(pid, member, 0).is_err() {
            return false;
        }
        true
    }

    /// A target new to the registry (armed at its exec, or added found
    /// running): its listening ports and connections become its own.
    pub fn target_found(&mut self, pid: u32) {
        self.net.target_found(pid);
    }

    pub fn remove(&mut self, pid: u32) {
        let _ = self.targets.remove(&pid); // gone already: fine
    }

    /// Execs that matched a selector while the set was full.
    pub fn refused(&self) -> u64 {
        self.refused.get(&0, 0).unwrap_or(0)
    }

    pub fn drain(&mut self, f: impl FnMut(&NetEvent)) -> u64 {
        let n = self.net.drain_events(f);
        self.net.close_adoption_when_due();
        n
    }

    pub fn net_counters(&self) -> anyhow::Result<NetReading> {
        self.net.read()
    }

    pub fn program_stats(&self) -> Vec<stats::ProgramStats> {
        stats::read_all(&self.ebpf)
    }
}

/// `s` NUL-padded to a map key of `N` bytes (truncated to `N - 1`).
fn padded<const N: usize>(s: &str) -> [u8; N] {
    let mut key = [0u8; N];
    let n = s.len().min(N - 1);
    key[..n].copy_from_slice(&s.as_bytes()[..n]);
    key
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_are_nul_padded() {
        let k = super::padded::<16>("nginx");
        assert_eq!(&k[..6], b"nginx\0");
        assert!(k[5..].iter().all(|&b| b == 0));
        assert_eq!(super::padded::<4>("abcdef"), *b"abc\0");
    }
}
