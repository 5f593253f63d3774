//! The kernel's view of the agent's BPF objects, read without any tool: the
//! IDs a process holds (`/proc/PID/fdinfo`), whether an ID still exists, and
//! a program's own statistics (`bpf_prog_info`) through a descriptor the
//! test holds on it.

use std::{
    collections::BTreeSet,
    fs,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use aya_obj::generated::bpf_prog_info;

pub const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
pub const BPF_MAP_GET_FD_BY_ID: libc::c_long = 14;
pub const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

#[derive(Debug, Default, Clone)]
pub struct BpfObjects {
    pub progs: BTreeSet<u32>,
    pub links: BTreeSet<u32>,
    pub maps: BTreeSet<u32>,
}

/// IDs of the BPF programs, links and maps process `pid` holds open (a
/// link's fdinfo names its program too).
pub fn bpf_objects(pid: u32) -> BpfObjects {
    let mut o = BpfObjects::default();
    for entry in fs::read_dir(format!("/proc/{pid}/fdinfo")).unwrap() {
        let Ok(text) = fs::read_to_string(entry.unwrap().path()) else { continue };
        for line in text.lines() {
            let mut f = line.split(':');
            let (Some(key), Some(v)) = (f.next(), f.next()) else { continue };
            let Ok(id) = v.trim().parse::<u32>() else { continue };
            match key {
                "prog_id" => o.progs.insert(id),
                "link_id" => o.links.insert(id),
                "map_id" => o.maps.insert(id),
                _ => false,
            };
        }
    }
    o
}

/// BPF_*_GET_FD_BY_ID: a new descriptor on the object with this ID.
fn fd_by_id(cmd: libc::c_long, id: u32) -> std::io::Result<OwnedFd> {
    #[repr(C)]
    struct Attr {
        id: u32,
        next_id: u32,
        open_flags: u32,
    }
    let attr = Attr { id, next_id: 0, open_flags: 0 };
    // SAFETY: attr is a correctly laid out bpf_attr prefix that outlives the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, &attr, size_of::<Attr>()) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Whether a BPF object with this ID still exists.
pub fn bpf_id_exists(cmd: libc::c_long, id: u32) -> bool {
    match fd_by_id(cmd, id) {
        Ok(_) => true,
        Err(e) => e.raw_os_error() != Some(libc::ENOENT),
    }
}

/// A program kept loaded by the test's own descriptor: it outlives the
/// agent (detached, it no longer runs), so its final counters can be read.
pub struct HeldProgram(OwnedFd);

/// What the kernel counted for one program.
#[derive(Debug)]
pub struct ProgramCounters {
    /// The kernel's name: the first 15 bytes of the program's.
    pub name: String,
    pub run_count: u64,
    pub run_time_ns: u64,
    /// Bytes of the program as the verifier left it (dead code removed).
    pub xlated_len: u32,
}

impl HeldProgram {
    pub fn open(id: u32) -> HeldProgram {
        HeldProgram(fd_by_id(BPF_PROG_GET_FD_BY_ID, id).expect("BPF_PROG_GET_FD_BY_ID"))
    }

    /// BPF_OBJ_GET_INFO_BY_FD.
    pub fn counters(&self) -> ProgramCounters {
        // SAFETY: plain data; all-zero is valid.
        let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
        #[repr(C)]
        struct Attr {
            bpf_fd: u32,
            info_len: u32,
            info: u64,
        }
        let attr = Attr {
            bpf_fd: self.0.as_raw_fd() as u32,
            info_len: size_of::<bpf_prog_info>() as u32,
            info: &mut info as *mut _ as u64,
        };
        // SAFETY: attr points at a buffer of info_len bytes that outlives the call.
        let rc = unsafe {
            libc::syscall(libc::SYS_bpf, BPF_OBJ_GET_INFO_BY_FD, &attr, size_of::<Attr>())
        };
        assert_eq!(rc, 0, "BPF_OBJ_GET_INFO_BY_FD: {}", std::io::Error::last_os_error());
        let name: Vec<u8> = info.name.iter().take_while(|c| **c != 0).map(|c| *c as u8).collect();
        ProgramCounters {
            name: String::from_utf8_lossy(&name).into_owned(),
            run_count: info.run_cnt,
            run_time_ns: info.run_time_ns,
            xlated_len: info.xlated_prog_len,
        }
    }
}

/// Turns `kernel.bpf_stats_enabled` on (the kernel then times every
/// program run) and restores it when dropped.
pub struct BpfStatsOn(String);

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStatsOn {
    pub fn enable() -> BpfStatsOn {
        let before = fs::read_to_string(BPF_STATS).expect("reading bpf_stats_enabled");
        fs::write(BPF_STATS, "1").expect("setting kernel.bpf_stats_enabled=1");
        BpfStatsOn(before.trim().to_string())
    }
}

impl Drop for BpfStatsOn {
    fn drop(&mut self) {
        let _ = fs::write(BPF_STATS, &self.0);
    }
}

/// The kernel's names (first 15 bytes) of the programs process `pid` holds,
/// by program or link descriptor; programs gone meanwhile are left out.
pub fn program_names_held_by(pid: u32) -> BTreeSet<String> {
    programs_held_by(pid).into_iter().map(|p| p.name).collect()
}

/// What the kernel counted for each program process `pid` holds.
pub fn programs_held_by(pid: u32) -> Vec<ProgramCounters> {
    bpf_objects(pid)
        .progs
        .into_iter()
        .filter_map(|id| fd_by_id(BPF_PROG_GET_FD_BY_ID, id).ok())
        .map(|fd| HeldProgram(fd).counters())
        .collect()
}

/// The `u32` in slot 0 of the one-slot array map named `name` that process
/// `pid` holds (`None`: no such map).
#[allow(dead_code)] // not every test binary reads a map
pub fn array_u32_held_by(pid: u32, name: &str) -> Option<u32> {
    for id in bpf_objects(pid).maps {
        let Ok(data) = aya::maps::MapData::from_id(id) else { continue };
        let named = data.info().ok().is_some_and(|i| i.name_as_str() == Some(name));
        if named {
            let array: aya::maps::Array<_, u32> =
                aya::maps::Map::Array(data).try_into().expect("an array of u32");
            return array.get(&0, 0).ok();
        }
    }
    None
}
