//! Exec probe: arms the target at its exec (launch / wait-for-exec modes) and
//! stamps startup's time zero. Kernel side: `agent-ebpf/src/exec.rs`.

use std::path::Path;

use agent_common::{
    Target, TracepointOffsets,
    names::{maps, programs},
};
use aya::{
    Ebpf,
    maps::{Array, MapData},
};

use super::{
    hook::{self, Hook},
    take_map,
};
use crate::tracefs;

pub fn offsets(tracefs_root: &Path, o: &mut TracepointOffsets) -> anyhow::Result<()> {
    let ev = "sched:sched_process_exec";
    let f = tracefs::read_format(tracefs_root, "sched", "sched_process_exec")?;
    o.exec_filename = f.offset(ev, "filename", 4)?;
    o.exec_pid = f.offset(ev, "pid", 4)?;
    Ok(())
}

pub struct ExecProbe {
    target: Array<MapData, Target>,
}

impl ExecProbe {
    /// `running`: the tgid of a process that is already running (set now).
    pub fn attach(ebpf: &mut Ebpf, running: Option<u32>) -> anyhow::Result<ExecProbe> {
        let mut target: Array<MapData, Target> = take_map(ebpf, maps::TARGET)?.try_into()?;
        if let Some(pid) = running {
            target.set(0, Target { tgid: pid, ..Default::default() }, 0)?;
        }
        hook::attach(
            ebpf,
            programs::SCHED_PROCESS_EXEC,
            Hook::TracePoint { category: "sched", name: "sched_process_exec" },
        )?;
        Ok(ExecProbe { target })
    }

    pub fn target(&self) -> anyhow::Result<Target> {
        Ok(self.target.get(&0, 0)?)
    }
}
