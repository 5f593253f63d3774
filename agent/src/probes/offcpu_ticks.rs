//! Off-CPU ticks (`--profile-dir`): the sleepable task iterator
//! `profile_offcpu_ticks` (`agent-ebpf/src/offcpu_ticks.rs`), loaded with
//! the object, bound to the target's pid once it is known, and read once
//! per tick. What the readings become is `crate::profile`.
//!
//! aya 0.14's `Iter::attach` creates the link without iterator arguments,
//! which visits every task of the machine (~30 µs a read here, against
//! ~9 µs bound to one process: `docs/performance.md`, thirteenth session),
//! so the link is created here with `BPF_LINK_CREATE` and
//! `bpf_iter_link_info.task.pid`.

use std::{
    fs::File,
    io::Read as _,
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd},
};

use agent_common::{
    names::{maps, programs},
    profile::{
        SAMPLE_HEAD_BYTES, SampleHead, TickConfig, TickThread, sample_record_bytes, tick_flags,
    },
};
use anyhow::{Context as _, bail};
use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData},
    programs::Iter,
};
use aya_obj::generated::{bpf_attach_type::BPF_TRACE_ITER, bpf_cmd};

use super::{profile::read_plain, take_map};

/// Loads the iterator program (before the maps are taken out of `ebpf`).
pub fn load(ebpf: &mut Ebpf, kernel_btf: &aya::Btf) -> anyhow::Result<()> {
    let program: &mut Iter = ebpf
        .program_mut(programs::PROFILE_OFFCPU_TICKS)
        .with_context(|| format!("eBPF object has no program {}", programs::PROFILE_OFFCPU_TICKS))?
        .try_into()?;
    program.load("task", kernel_btf).context(
        "loading the off-CPU task iterator (iter.s/task) failed: the kernel needs sleepable \
         BPF iterators (Linux 5.15+) and bpf_copy_from_user_task",
    )
}

/// What a tick's read starts with: room for 64 threads' records and
/// two stacks.
const READ_BYTES: usize = 64 * 1024;

/// The iterator bound to one process, and the maps a tick reads.
pub struct OffCpuTicks {
    link: OwnedFd,
    config: Array<MapData, TickConfig>,
    stacked: HashMap<MapData, u32, u64>,
    /// The draw's threshold last written to `config`.
    threshold: Option<u32>,
}

impl OffCpuTicks {
    /// Binds the loaded iterator to `pid`'s threads.
    pub fn bind(ebpf: &mut Ebpf, pid: u32) -> anyhow::Result<OffCpuTicks> {
        let program: &Iter = ebpf
            .program(programs::PROFILE_OFFCPU_TICKS)
            .context("no off-CPU task iterator")?
            .try_into()?;
        let prog_fd = program.fd()?.as_fd().as_raw_fd();
        // `union bpf_iter_link_info`: `task.tid`, `task.pid`, `task.pid_fd`.
        let info: [u32; 4] = [0, pid, 0, 0];
        let mut attr = [0u8; 128];
        attr[0..4].copy_from_slice(&(prog_fd as u32).to_ne_bytes());
        attr[8..12].copy_from_slice(&(BPF_TRACE_ITER as u32).to_ne_bytes());
        attr[16..24].copy_from_slice(&(info.as_ptr() as u64).to_ne_bytes());
        attr[24..28].copy_from_slice(&12u32.to_ne_bytes());
        let link = bpf(bpf_cmd::BPF_LINK_CREATE, &attr)
            .with_context(|| format!("binding the off-CPU task iterator to pid {pid}"))?;
        let config = take_map(ebpf, maps::OFF_CPU_TICK)?.try_into()?;
        let stacked = take_map(ebpf, maps::OFF_CPU_STACKED)?.try_into()?;
        Ok(OffCpuTicks { link, config, stacked, threshold: None })
    }

    /// One tick: the target's threads as the iterator sees them now, into
    /// the start of `buf` (kept between ticks, grown when full); returns
    /// how many bytes. `threshold`: the draw's selection probability ×
    /// 2^32 ([`agent_common::profile::tick_selected`]; the kernel side
    /// draws anew at each read), written only when it changes.
    ///
    /// Plain reads into a buffer that is already there: `read_to_end`
    /// asks the file its size first (`statx`, `lseek`) and probes with
    /// small reads, ~20 system calls a tick where this makes two or three.
    pub fn read(&mut self, threshold: u32, buf: &mut Vec<u8>) -> anyhow::Result<usize> {
        if self.threshold != Some(threshold) {
            let seed = crate::clock::monotonic_ns();
            self.config.set(0, TickConfig { seed, threshold, _pad: 0 }, 0)?;
            self.threshold = Some(threshold);
        }
        let mut attr = [0u8; 128];
        attr[0..4].copy_from_slice(&(self.link.as_raw_fd() as u32).to_ne_bytes());
        let iter = bpf(bpf_cmd::BPF_ITER_CREATE, &attr).context("reading the off-CPU iterator")?;
        let mut file = File::from(iter);
        if buf.len() < READ_BYTES {
            buf.resize(READ_BYTES, 0);
        }
        let mut len = 0;
        loop {
            if len == buf.len() {
                buf.resize(buf.len() * 2, 0);
            }
            match file.read(&mut buf[len..]) {
                Ok(0) => return Ok(len),
                Ok(n) => len += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("reading the off-CPU iterator"),
            }
        }
    }

    /// User space has the stack of `tid`'s block at `switches`: the
    /// iterator sends it no more while that block lasts.
    pub fn have_stack(&mut self, tid: u32, switches: u64) -> anyhow::Result<()> {
        Ok(self.stacked.insert(tid, switches, 0)?)
    }
}

/// One thread of a tick, with its stack when one was sent.
pub struct TickEntry<'a> {
    pub thread: TickThread,
    pub stack: Option<(SampleHead, &'a [u8])>,
}

/// Splits a tick's bytes into its threads; `None` if they are cut short
/// (never expected: each thread's record is written whole or not at all).
pub fn parse(mut bytes: &[u8]) -> Option<Vec<TickEntry<'_>>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let thread: TickThread = read_plain(bytes)?;
        bytes = &bytes[size_of::<TickThread>()..];
        let stack = if thread.flags & tick_flags::STACK != 0 {
            let head: SampleHead = read_plain(bytes)?;
            let len = sample_record_bytes(head.user_pages);
            let pages = bytes.get(SAMPLE_HEAD_BYTES..len)?;
            bytes = &bytes[len..];
            Some((head, pages))
        } else {
            None
        };
        out.push(TickEntry { thread, stack });
    }
    Some(out)
}

/// The `bpf` system call with a 128-byte `attr`; a returned fd.
fn bpf(cmd: bpf_cmd, attr: &[u8; 128]) -> anyhow::Result<OwnedFd> {
    // SAFETY: `attr` is a zero-padded `union bpf_attr` for `cmd`; its
    // pointers (the link info) outlive the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd as i64, attr.as_ptr(), attr.len() as i64) };
    if fd < 0 {
        bail!("{}", std::io::Error::last_os_error());
    }
    // SAFETY: a new file descriptor the kernel returned, owned here.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_common::profile::STACK_PAGE;

    fn bytes_of<T>(v: &T) -> &[u8] {
        // SAFETY: a plain-integer struct's bytes.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }
    }

    #[test]
    fn a_tick_splits_into_threads_and_their_stacks() {
        let blocked =
            TickThread { switches: 7, tid: 11, flags: tick_flags::BLOCKED, ..Default::default() };
        let stacked = TickThread {
            switches: 9,
            tid: 12,
            flags: tick_flags::BLOCKED | tick_flags::SELECTED | tick_flags::STACK,
            ..Default::default()
        };
        // SAFETY: all-zero is a valid head (plain integers).
        let mut head: SampleHead = unsafe { std::mem::zeroed() };
        head.tid = 12;
        head.user_pages = 2;
        let mut bytes = bytes_of(&blocked).to_vec();
        bytes.extend_from_slice(bytes_of(&stacked));
        bytes.extend_from_slice(bytes_of(&head));
        bytes.extend(std::iter::repeat_n(0xab, 2 * STACK_PAGE));
        let running = TickThread { switches: 1, tid: 13, flags: 0, ..Default::default() };
        bytes.extend_from_slice(bytes_of(&running));
        let entries = parse(&bytes).expect("whole");
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].thread, blocked);
        assert!(entries[0].stack.is_none());
        let (h, pages) = entries[1].stack.as_ref().expect("a stack");
        assert_eq!((h.tid, pages.len()), (12, 2 * STACK_PAGE));
        assert_eq!(entries[2].thread, running);
        // Cut short: refused, not misread.
        assert!(parse(&bytes[..bytes.len() - 3]).is_none());
        assert!(parse(&bytes[..size_of::<TickThread>() * 2 + 10]).is_none());
    }
}
