//! The kernel's own statistics of our programs (`bpf_prog_info`): run count
//! and run time (while `kernel.bpf_stats_enabled` is on), and recursion misses
//! (always on): runs the kernel skipped because another BPF program was
//! already running on that CPU. Misses are events we lost, so they are
//! reported as dropped.

use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::Ebpf;
use aya_obj::generated::bpf_prog_info;

use super::hook::{self, Hook};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProgramStats {
    pub name: String,
    pub run_count: u64,
    pub run_time_ns: u64,
    pub recursion_misses: u64,
}

impl ProgramStats {
    /// Average cost per run, ns (NaN until `bpf_stats_enabled` counted a run).
    pub fn ns_per_run(&self) -> f64 {
        if self.run_count == 0 { f64::NAN } else { self.run_time_ns as f64 / self.run_count as f64 }
    }
}

/// BPF_OBJ_GET_INFO_BY_FD on one program fd.
fn prog_info(fd: i32) -> std::io::Result<bpf_prog_info> {
    // SAFETY: bpf_prog_info is plain data; all-zero is a valid value.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut attr = InfoAttr {
        bpf_fd: fd as u32,
        info_len: std::mem::size_of::<bpf_prog_info>() as u32,
        info: &mut info as *mut _ as u64,
    };
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    // SAFETY: attr points at a correctly sized buffer that outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &mut attr as *mut InfoAttr,
            std::mem::size_of::<InfoAttr>(),
        )
    };
    if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(info) }
}

/// The empty program of `agent-ebpf/src/stats.rs`: its run time per run is
/// what the statistics themselves add to every program's.
pub const FLOOR_PROGRAM: &str = agent_common::names::programs::STATS_FLOOR;

const BPF_STATS_ENABLED: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// When the kernel's run-time statistics are on (someone is measuring our
/// cost), attaches the empty calibration program to `sched_switch`, so the
/// statistics' own cost is measured in the same run. Off, it costs nothing
/// and is not loaded.
pub fn attach_floor_if_measuring(ebpf: &mut Ebpf) -> anyhow::Result<bool> {
    let on = std::fs::read_to_string(BPF_STATS_ENABLED).is_ok_and(|s| s.trim() == "1");
    if !on {
        return Ok(false);
    }
    hook::attach(ebpf, FLOOR_PROGRAM, Hook::RawTracePoint { name: "sched_switch" })?;
    Ok(true)
}

/// Statistics of every loaded program of `ebpf`.
pub fn read_all(ebpf: &Ebpf) -> Vec<ProgramStats> {
    let mut out = Vec::new();
    for (name, program) in ebpf.programs() {
        let Ok(fd) = program.fd() else { continue };
        if let Ok(info) = prog_info(fd.as_fd().as_raw_fd()) {
            out.push(ProgramStats {
                name: name.to_string(),
                run_count: info.run_cnt,
                run_time_ns: info.run_time_ns,
                recursion_misses: info.recursion_misses,
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}
