//! Where the kernel data the programs read sits, found by user space at
//! start-up (Rust cannot emit CO-RE relocations).

/// Byte offsets of the kernel data the programs read, found at start-up:
/// tracepoint fields from the tracefs `format` files, struct fields from the
/// kernel's BTF. No kernel layout is compiled in. (The hot programs are
/// BTF-typed tracepoints: their arguments come positionally from
/// `TP_PROTO`, and only the struct fields they follow need offsets.)
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TracepointOffsets {
    /// `task_struct.pid` and `task_struct.tgid` (BTF): thread and thread
    /// group ids of `prev` and `next` in `sched_switch`.
    pub task_pid: u32,
    pub task_tgid: u32,
    /// `kmem:rss_stat`
    pub rss_stat_mm_id: u32,
    pub rss_stat_curr: u32,
    pub rss_stat_member: u32,
    pub rss_stat_size: u32,
    /// `sock.__sk_common.skc_family` and `sock.sk_protocol` (BTF): read
    /// when a socket is first seen mid-life, to adopt TCP ones alone, and on
    /// every TCP state change (`inet_sock_set_state`).
    pub sock_family: u32,
    pub sock_protocol: u32,
    /// `sched:sched_process_exec`
    pub exec_filename: u32,
    pub exec_pid: u32,
    /// `task_struct.se.sum_exec_runtime` (from BTF): the scheduler's own
    /// per-thread CPU time, read by the exec hook from the exec'ing thread
    /// (where the target's CPU count starts).
    pub task_sum_exec_runtime: u32,
    /// `task_struct.min_flt`, `.maj_flt`, `.signal` and
    /// `signal_struct.min_flt`, `.maj_flt` (BTF): the thread group's page
    /// faults at the exec that arms the target (where its counts start).
    pub task_min_flt: u32,
    pub task_maj_flt: u32,
    pub task_signal: u32,
    pub signal_min_flt: u32,
    pub signal_maj_flt: u32,
    /// `sock.__sk_common.skc_num` (BTF): the local port, host order; a
    /// socket first seen mid-life is inbound when it is a listening port.
    pub sock_num: u32,
    /// `msghdr.msg_iter.iter_type`, `.iov_offset` and `.ubuf` (the same
    /// place as `.__iov`), and `iovec.iov_base` (BTF): where the bytes a TCP
    /// send is about to copy come from (`tcp:tcp_sendmsg_locked`), for the
    /// response's status line.
    pub msg_iter_type: u32,
    pub msg_iter_iov_offset: u32,
    pub msg_iter_ubuf: u32,
    pub iovec_base: u32,
    /// `msghdr.msg_iter.count` (BTF): the bytes a TCP send has left to
    /// copy, for the bytes of a chunk.
    pub msg_iter_count: u32,
    /// `sock.sk_bpf_storage` (BTF): NULL on a socket no BPF program gave
    /// storage, which the network programs test with a plain load before
    /// calling the storage helper.
    pub sock_bpf_storage: u32,
    /// `tcp_sock.write_seq`, `.snd_nxt`, `.snd_wnd`, `.mss_cache` (BTF):
    /// where the response's last byte is and what holds it back
    /// (`agent-ebpf/src/net/delivery.rs`, issue 14).
    pub tcp_write_seq: u32,
    pub tcp_snd_nxt: u32,
    pub tcp_snd_wnd: u32,
    pub tcp_mss_cache: u32,
    /// `sk_buff.cb` + `tcp_skb_cb.ack_seq` (BTF): the ACK an incoming
    /// segment carries, at `tcp:tcp_probe`.
    pub skb_ack_seq: u32,
    /// `task_struct.sched_info.run_delay` (BTF; 0 when the kernel has no
    /// `CONFIG_SCHED_INFO`): the kernel's running total of the time a
    /// thread waited on a run queue, read at each off-CPU tick
    /// (`agent-ebpf/src/offcpu_ticks.rs`), with `se.sum_exec_runtime`.
    pub task_run_delay: u32,
    /// `task_struct.se.cfs_rq`, `cfs_rq.rq` and `rq.clock` (BTF; 0 when
    /// the kernel lacks them, without `CONFIG_FAIR_GROUP_SCHED`): the
    /// scheduler's clock as `__schedule` read it for the switch under way,
    /// which profiling's `sched_switch` reaches through the switching task
    /// in three plain loads instead of a `bpf_ktime_get_ns` call (~90 ns
    /// here) at each switch-in of a target thread; the off-CPU ticks read
    /// a thread's run queue's clocks the same way.
    pub task_cfs_rq: u32,
    pub cfs_rq_rq: u32,
    pub rq_clock: u32,
    /// `task_struct.__state`, `.on_cpu`, `.nvcsw`, `.nivcsw` (BTF): whether
    /// a thread is off CPU at an off-CPU tick, and its switches so far
    /// (`agent-ebpf/src/offcpu_ticks.rs`).
    pub task_state: u32,
    pub task_on_cpu: u32,
    pub task_nvcsw: u32,
    pub task_nivcsw: u32,
    /// `task_struct.on_rq` (BTF): runnable (queued or running).
    pub task_on_rq: u32,
    /// `task_struct.se.exec_start`, `.sched_info.last_queued` and
    /// `rq.clock_task` (BTF): whether a runnable thread waiting for a CPU
    /// was woken (in the tail of a block) or preempted, at an off-CPU tick.
    pub task_exec_start: u32,
    pub task_last_queued: u32,
    pub rq_clock_task: u32,
    /// `task_struct.start_time` (BTF, `CLOCK_MONOTONIC` ns at its fork): a
    /// thread born while profiling has its off-CPU time counted from its
    /// start, not from the first tick that saw it.
    pub task_start_time: u32,
    /// `task_struct.sched_info.last_arrival` and `.se.prev_sum_exec_runtime`
    /// (BTF; 0 without `CONFIG_SCHED_INFO`): when a thread's running slice
    /// began, on the run-queue clock and in its CPU time: what the slice
    /// lost to steal time, at its switch-out and at off-CPU ticks.
    pub task_last_arrival: u32,
    pub task_prev_sum_exec_runtime: u32,
}

/// Where a `syscalls:sys_enter_*` record holds the system call's second
/// argument (`struct syscall_trace_enter`: the 8-byte common header, `int
/// nr` padded to 8, then `unsigned long args[6]`). The read hooks
/// (`sys_enter_{read,recvfrom,readv,recvmsg}`, for a request's path, only
/// with `--health-path`/`--ready-path`) read it straight from their context, which the verifier allows only at an offset
/// fixed in the instruction; a helper read at an offset given at load time
/// cost ~40 ns more per call. User space checks each hooked tracepoint's
/// format against it and refuses to run if one differs.
pub const SYSCALL_ARG1_OFFSET: u32 = 24;

#[cfg(feature = "user")]
mod user {
    // SAFETY: #[repr(C)], integers only, no padding (asserted below).
    unsafe impl aya::Pod for super::TracepointOffsets {}
}

// No padding: sizes equal the sum of field sizes.
const _: () = assert!(core::mem::size_of::<TracepointOffsets>() == 43 * 4);
