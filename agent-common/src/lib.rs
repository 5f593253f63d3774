//! `#[repr(C)]` types shared by the eBPF programs (`agent-ebpf`) and the
//! user-space agent (`agent`, with the `user` feature).
//!
//! Rules, as in aya's own shared crates: no padding (every struct is a
//! multiple of 8 bytes with fields ordered large to small), integers instead of
//! `bool`, and nothing that has a different layout on the two sides.
#![no_std]

// CPU profiling (issue 15): its own module, see profile.rs.
pub mod profile;

/// Names of the `const volatile` globals user space sets before load.
///
/// They live here so the two sides cannot disagree on a spelling.
/// Adds `from` to `into` as `u64` words, wrapping: per-CPU counters summed
/// without naming each field, so a field added later cannot be left out.
///
/// # Safety
/// `T` must be `repr(C)` and made only of `u64` fields (no padding).
pub unsafe fn add_u64_fields<T>(into: &mut T, from: &T) {
    const { assert!(core::mem::size_of::<T>().is_multiple_of(8)) };
    let words = core::mem::size_of::<T>() / 8;
    let into = into as *mut T as *mut u64;
    let from = from as *const T as *const u64;
    for i in 0..words {
        // SAFETY: in bounds of two distinct `T`s of `words` u64 words each
        // (the caller's promise).
        unsafe { *into.add(i) = (*into.add(i)).wrapping_add(*from.add(i)) };
    }
}

pub mod globals {
    /// [`TracepointOffsets`](super::TracepointOffsets): where each field the
    /// programs read sits in its tracepoint record.
    pub const OFFSETS: &str = "OFFSETS";
    /// [`ExecMatch`](super::ExecMatch): which exec arms the target.
    pub const EXEC_MATCH: &str = "EXEC_MATCH";
    /// [`PathMatch`](super::PathMatch): request paths to recognise.
    pub const PATH_MATCH: &str = "PATH_MATCH";
    /// `u32`: log2 of the slots per CPU in the request event ring
    /// ([`EventSlot`](super::EventSlot)).
    pub const EVENT_RING_SHIFT: &str = "EVENT_RING_SHIFT";
    /// `u32`: 1 in node mode (`perf-agent serve`): the targets are the
    /// tgids in the hash map `TARGETS` ([`TargetMember`](super::TargetMember)),
    /// armed at exec by the selector maps, and `TARGET` stays empty. 0 (the
    /// one-target modes): the verifier prunes the set's code, so their
    /// filter is still one array lookup and a compare.
    pub const TARGET_SET: &str = "TARGET_SET";
    /// `u32`: what `sched_switch` does for profiling, bits of
    /// [`profile::sched_mode`](super::profile::sched_mode) (0 without
    /// `--profile-dir`).
    pub const PROFILE_SCHED: &str = "PROFILE_SCHED";
    /// `u32`: off-CPU stacks per CPU and second that block sampling aims
    /// at (`--profile-hz`, the on-CPU rate; see
    /// [`OffCpuBudget`](super::profile::OffCpuBudget)).
    pub const OFF_CPU_STACKS_PER_SEC: &str = "OFF_CPU_STACKS_PER_SEC";
    /// `u32`: 1 with `--delivery` (issue 14's queue/drain/delivered/accept
    /// wait and retransmits). 0: the socket programs skip the delivery
    /// bookkeeping (the verifier prunes it) and its three hooks are not
    /// attached.
    pub const DELIVERY: &str = "DELIVERY";
}

/// Names of the maps and programs (`names.rs`).
pub mod names;

/// The thread group being measured (map `TARGET`, one-slot `ARRAY`).
///
/// A map rather than a constant because it can be set by the kernel side
/// itself: in launch and wait-for-exec modes the exec hook arms it at the
/// target's exec, so nothing before the exec is counted and nothing after it
/// is missed. `tgid == 0` means no target yet (0 is also the idle task's
/// tgid, so every filter checks for it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Target {
    pub tgid: u32,
    /// execs by the target seen since it was armed (it may exec again): the
    /// profiler's unwinder reloads the target's address space when it
    /// changes (`agent/src/profile/unwind.rs`).
    pub execs: u32,
    /// CLOCK_MONOTONIC ns of the exec that armed it; 0 in attach mode.
    pub exec_ns: u64,
    /// The exec'ing thread's `se.sum_exec_runtime` at that exec: where the
    /// target's process CPU clock starts counting (the launcher's time
    /// before the exec is not the target's); 0 in attach mode.
    pub runtime_at_exec_ns: u64,
    /// The thread group's minor and major page faults at that exec (the
    /// exec'ing thread's plus its dead threads'): where the counts from
    /// `/proc/PID/stat` start; 0 in attach mode.
    pub min_flt_at_exec: u64,
    pub maj_flt_at_exec: u64,
}

/// One target of node mode (map `TARGETS`, a `HASH` keyed by tgid, sized by
/// `serve --max-targets`). Inserted by user space for a process its
/// selectors found running, or by the exec hook when an exec matches one of
/// the selector maps (`EXEC_COMMS`, `EXEC_PATHS`, `EXEC_CGROUPS`, whose
/// values are the selector's index); removed by user space when the process
/// has exited.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TargetMember {
    /// Index of the selector that matched (user space's numbering).
    pub selector: u32,
    /// execs by this thread group since it became a target.
    pub execs: u32,
    /// CLOCK_MONOTONIC ns of the exec that made it a target; 0 when user
    /// space added it.
    pub exec_ns: u64,
}

/// Key of `EXEC_PATHS`: a path as passed to `execve`, NUL-padded.
pub const EXEC_PATH_KEY: usize = 256;
/// Key of `EXEC_COMMS`: a command name as the kernel keeps it, NUL-padded.
pub const COMM_KEY: usize = 16;

/// Kinds of [`ExecMatch`].
pub mod exec_match {
    /// Never arm at exec (attach mode: user space sets the target).
    pub const NONE: u32 = 0;
    /// Arm when process `pid` execs (launch mode: our own child).
    pub const PID: u32 = 1;
    /// Arm when a process execs with `comm` equal to `name_a`.
    pub const COMM: u32 = 2;
    /// Arm when the exec'd filename equals `name_a` or `name_b`.
    pub const PATH: u32 = 3;
    /// Longest name matched (bytes, without the NUL).
    pub const NAME_MAX: usize = 255;
}

/// `const volatile` configuration of the exec hook.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecMatch {
    pub kind: u32,
    pub pid: u32,
    pub len_a: u32,
    pub len_b: u32,
    pub name_a: [u8; 256],
    pub name_b: [u8; 256],
}

impl ExecMatch {
    pub const NONE: ExecMatch = ExecMatch {
        kind: exec_match::NONE,
        pid: 0,
        len_a: 0,
        len_b: 0,
        name_a: [0; 256],
        name_b: [0; 256],
    };
}

/// `const volatile` request paths whose responses mark startup milestones
/// (`--health-path`, `--ready-path`). Length 0: not watched, and the read
/// hooks that would find them are not attached.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathMatch {
    pub health_len: u32,
    pub ready_len: u32,
    pub health: [u8; 128],
    pub ready: [u8; 128],
}

impl PathMatch {
    pub const NONE: PathMatch =
        PathMatch { health_len: 0, ready_len: 0, health: [0; 128], ready: [0; 128] };
}

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
    /// thread waited on a run queue, read at each switch-out of a target
    /// thread when profiling (`--profile-dir`).
    pub task_run_delay: u32,
    /// `task_struct.se.cfs_rq`, `cfs_rq.rq` and `rq.clock` (BTF; 0 when
    /// the kernel lacks them, without `CONFIG_FAIR_GROUP_SCHED`): the
    /// scheduler's clock as `__schedule` read it for the switch under way,
    /// which profiling's `sched_switch` reaches through the switching task
    /// in three plain loads instead of a `bpf_ktime_get_ns` call (~90 ns
    /// here) at each switch of a target thread.
    pub task_cfs_rq: u32,
    pub cfs_rq_rq: u32,
    pub rq_clock: u32,
    /// `task_struct.sched_info.last_arrival` (BTF; 0 without
    /// `CONFIG_SCHED_INFO`): when the thread was last switched in, on the
    /// same run-queue clock. Profiling's `sched_switch` ends a thread's
    /// block there, at the thread's next switch-out, rather than looking
    /// its state up again at the switch-in (`agent-ebpf/src/offcpu.rs`).
    pub task_last_arrival: u32,
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

/// Index into [`RssCounters::member_bytes`]: the kernel's `MM_*` counters as
/// `kmem:rss_stat` reports them in `member`.
pub mod rss_member {
    pub const FILE: usize = 0;
    pub const ANON: usize = 1;
    pub const SWAP: usize = 2;
    pub const SHMEM: usize = 3;
    pub const COUNT: usize = 4;
}

/// The target's RSS counters as last reported by `kmem:rss_stat`
/// (map `RSS_COUNTERS`, a one-slot `ARRAY` shared by all CPUs).
///
/// Each event carries the counter's absolute value, so a late or racing
/// store is corrected by the next event of that member. 8-byte aligned
/// stores are atomic, so a reader never sees a torn value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RssCounters {
    /// Bytes per member (see [`rss_member`]); seeded from /proc/PID/status.
    pub member_bytes: [i64; rss_member::COUNT],
    /// `mm_id` (a hash of the target's `mm_struct` pointer) learned from an
    /// event with `curr == 1` in the target's thread group; it changes on exec.
    pub mm_id: u32,
    /// 1 once `mm_id` has been learned.
    pub mm_id_known: u32,
}

/// Per-CPU RSS statistics (map `RSS_STATS`, one-slot `PERCPU_ARRAY`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RssStats {
    /// Highest file + anon + shmem total this CPU computed after an update.
    /// The peak is the maximum over CPUs.
    pub peak_rss_bytes: u64,
    /// `rss_stat` events applied from the target's own tasks (`curr == 1`).
    pub own_updates: u64,
    /// Events applied from other contexts (`curr == 0`: reclaim, another
    /// process touching the target's memory) matched on `mm_id` alone.
    /// `mm_id` is a 32-bit hash, so these may, rarely, be another mm's.
    pub foreign_updates: u64,
    /// `curr == 0` events seen before `mm_id` was known: dropped, counted.
    pub unattributed: u64,
}

/// TCP connection direction, as seen from the target.
pub mod direction {
    /// Accepted by the target: requests come in on it.
    pub const INBOUND: u32 = 1;
    /// Opened by the target (`connect`): its upstream calls go out on it.
    pub const OUTBOUND: u32 = 2;
}

/// Where a connection is in its request/response exchange.
///
/// Inbound: `REQUEST` while the target reads a request, `RESPONSE` once it
/// writes; the next read with data after a write starts the next request
/// (HTTP/1.1 keep-alive). Outbound: the same with roles swapped (the target
/// writes the call, then reads the upstream's response).
pub mod phase {
    pub const IDLE: u32 = 0;
    pub const REQUEST: u32 = 1;
    pub const RESPONSE: u32 = 2;
}

/// Flags of [`ConnState`] and [`NetEvent`].
pub mod conn_flags {
    /// The connection existed before attach: inbound when its local port is
    /// one the target listens on, else as its first operation seen says (a
    /// server reads first, a client writes first).
    pub const ADOPTED: u32 = 1;
    /// A TCP reset was sent or received on the connection.
    pub const RESET: u32 = 2;
    /// The event was completed by user space at the end of the run.
    pub const AT_END: u32 = 4;
    /// The request's path is `PathMatch::health` / `PathMatch::ready`.
    pub const PATH_HEALTH: u32 = 8;
    pub const PATH_READY: u32 = 16;
    /// Delivery events (`event_kind::DELIVERY`) only: the request's first
    /// bytes were seen arriving (`sk_data_ready`), so its queue time is known.
    pub const QUEUE_KNOWN: u32 = 64;
    /// Delivery events only: the response's last bytes were held back by
    /// Nagle (a sub-MSS tail, everything sent already unacknowledged) until
    /// the peer's ACK released them.
    pub const NAGLE_HELD: u32 = 128;
    /// Delivery events only: the peer's receive window held back a
    /// response's bytes (less than one MSS free with data waiting).
    pub const WINDOW_HELD: u32 = 256;
    /// Delivery events only: the connection's first request, whose
    /// `status` field carries the accept wait in µs (handshake complete →
    /// first read, its bytes already waiting).
    pub const ACCEPT_KNOWN: u32 = 512;
    /// The flags proper: bits 0..10 (the delivery flags above reach bit
    /// 9). Bits 10..32 hold the tgid of the connection's owner (the process
    /// that listens on its port, connected it, or was seen using it first
    /// when adopted), so node mode can tell whose request an event is: 22
    /// bits, and `pid_max` is at most 2^22 (`PID_MAX_LIMIT`), so every tgid
    /// fits. Delivery events carry the owner in the same bits.
    pub const MASK: u32 = 0x3ff;
    pub const OWNER_SHIFT: u32 = 10;

    /// The owner's tgid in a [`ConnState::flags`](super::ConnState) /
    /// [`NetEvent::flags`](super::NetEvent) word.
    pub const fn owner(flags: u32) -> u32 {
        flags >> OWNER_SHIFT
    }

    // Every flag lies inside MASK: none may reach the owner's bits.
    const _: () = assert!(
        (ADOPTED
            | RESET
            | AT_END
            | PATH_HEALTH
            | PATH_READY
            | QUEUE_KNOWN
            | NAGLE_HELD
            | WINDOW_HELD
            | ACCEPT_KNOWN)
            & !MASK
            == 0
    );
}

/// Per-connection state (map `CONNS`, socket-local storage: the kernel
/// keeps it with the `struct sock` and frees it with the socket).
///
/// Per socket, not fd: an fd number reused for a new connection is a new
/// socket, and the state is reset whenever its socket is (re)established, so
/// no stale state survives into another connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnState {
    /// First byte of the current request read (inbound) / call sent (outbound).
    pub start_ns: u64,
    /// First byte of the response written (inbound) / read (outbound).
    pub first_response_ns: u64,
    /// Last byte of the response so far.
    pub last_response_ns: u64,
    /// The socket's kernel address: with `seq`, names the inbound request
    /// under way in `UPSTREAM_WAIT` (and tells a socket seen through two fds
    /// apart at the end of a run).
    pub sk: u64,
    /// Outbound: up to when the call's time was already credited to its parent.
    pub credited_until_ns: u64,
    /// Bytes the exchange's sends copy at most (see `tcp_sendmsg_locked`).
    /// Reads are not counted: the receive hook (`tcp_rcv_space_adjust`)
    /// does not see a read's length.
    pub bytes_out: u64,
    /// Outbound: the inbound connection (sock address) the call serves.
    pub parent_sk: u64,
    /// Inbound: user address of the first bytes of the response being
    /// sent, when `tcp_sendmsg_locked` could not read its status line
    /// there before the copy (a page the target never touched, such as a
    /// constant response in its executable, is not mapped yet); read again
    /// at the next chunk or at the end of the exchange, in the target's
    /// context. 0 otherwise.
    pub response_buf: u64,
    /// Inbound: requests started on this connection; outbound: the parent's
    /// request number when the call started.
    pub seq: u32,
    pub parent_seq: u32,
    pub direction: u32,
    pub phase: u32,
    /// HTTP status read from the first response bytes, 0 if none.
    pub status: u32,
    pub flags: u32,
    // Delivery (issue 14, `agent-ebpf/src/net/delivery.rs`): where a
    // request's time goes outside the application.
    /// Inbound: when the first unread byte arrived (`sk_data_ready` while
    /// no request was being read), 0 when none is waiting.
    pub arrived_ns: u64,
    /// Inbound: when the current request's first byte arrived (0: unknown).
    pub queue_start_ns: u64,
    /// Inbound: when the peer last acknowledged everything written so far.
    pub acked_ns: u64,
    /// A finished request whose response is not acknowledged yet: its
    /// arrival, first read and last write (0: none pending).
    pub pend_queue_ns: u64,
    pub pend_start_ns: u64,
    pub pend_end_ns: u64,
    /// `write_seq` after the pending response's last byte.
    pub pend_seq: u32,
    pub pend_flags: u32,
    pub pend_retransmits: u32,
    pub pend_held_us: u32,
    /// The current response's retransmitted segments (`tcp_retransmit_skb`).
    pub retransmits: u32,
    /// µs the current response's last bytes waited for an ACK (Nagle).
    pub held_us: u32,
    /// `conn_flags::{QUEUE_KNOWN, NAGLE_HELD, WINDOW_HELD, ACCEPT_KNOWN}`
    /// of the current request.
    pub delivery_flags: u32,
    /// µs from the handshake's completion to the first read of the
    /// connection's first request (`ACCEPT_KNOWN`), and the pending one's.
    pub accept_wait_us: u32,
    pub pend_accept_wait_us: u32,
    /// Inbound: the `write_seq` the current response reaches once its
    /// latest send is copied, noted before each chunk's copy
    /// (`tcp_sendmsg_locked`: `write_seq` + `msg_iter.count`): the
    /// response is acknowledged when an ACK covers it, not merely the
    /// bytes copied so far.
    pub sent_end_seq: u32,
    /// Inbound: when the handshake completed (SYN_RECV→ESTABLISHED); 0
    /// once the connection's first request was read.
    pub established_ns: u64,
}

/// Kinds of [`NetEvent`].
pub mod event_kind {
    /// A request served on an inbound connection.
    pub const REQUEST: u32 = 1;
    /// A call the target made on an outbound connection.
    pub const UPSTREAM_CALL: u32 = 2;
    /// A request's response fully acknowledged by the peer (issue 14):
    /// `start_ns` = its first byte's arrival (`flags & QUEUE_KNOWN`, else
    /// the first read), `first_response_ns` = the first read,
    /// `upstream_ns` = the last write, `end_ns` = the ACK of the last
    /// byte, `bytes_in` = segments retransmitted, `bytes_out` = µs held
    /// back by Nagle waiting for an ACK, `status` = the accept wait in µs
    /// (with `conn_flags::ACCEPT_KNOWN`); `seq` is the request's.
    pub const DELIVERY: u32 = 3;
}

/// A finished request or upstream call (one [`EventSlot`] of `NET_EVENTS`).
/// 56 bytes, so that with its commit word a slot is one 64-byte cache line:
/// the producer's cost per event is mostly the first write to that line.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetEvent {
    pub start_ns: u64,
    pub first_response_ns: u64,
    pub end_ns: u64,
    pub upstream_ns: u64,
    /// Requests and calls: 0 (the receive hook does not see a read's
    /// length); deliveries: see [`event_kind::DELIVERY`].
    pub bytes_in: u32,
    /// Requests and calls: bytes the exchange's sends copy at most,
    /// saturating at `u32::MAX`.
    pub bytes_out: u32,
    pub kind: u32,
    pub status: u32,
    pub flags: u32,
    pub seq: u32,
}

/// One slot of the per-CPU event ring `NET_EVENTS`: an mmapable `ARRAY` of
/// `ncpus << EVENT_RING_SHIFT` slots, CPU `c` owning slots
/// `c << shift .. (c + 1) << shift`, written in order of
/// [`EventRingPos::head`].
///
/// Why not a `BPF_MAP_TYPE_RINGBUF`: its reserve takes a spin lock with
/// interrupts off and shares one producer position between all CPUs; on the
/// reference VM a reserve + submit costs ~270 ns, more than the rest of the
/// request bookkeeping together. A slot here costs one atomic add on a
/// CPU-local cache line and plain stores.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventSlot {
    pub event: NetEvent,
    /// `position + 1` once the event at ring position `position` is
    /// completely written; anything else means "not yet" (the value of an
    /// earlier lap, or 0). Written last by the producer, read first by the
    /// consumer.
    pub commit: u64,
}

/// Producer and consumer positions of one CPU's part of the event ring (map
/// `NET_EVENTS_POS`, an mmapable `ARRAY` indexed by CPU). Both only grow;
/// the slot of position `p` is `p & (slots_per_cpu - 1)`.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventRingPos {
    /// Next position to reserve: advanced by the kernel side with an atomic
    /// add (a program can be interrupted by a softirq or preempted by
    /// another program on the same CPU, which then reserves after it).
    pub head: u64,
    /// Next position user space will read: advanced by user space only
    /// after it copied the events before it. The kernel side does not
    /// reserve past `tail + slots_per_cpu - EVENT_RING_MARGIN`.
    pub tail: u64,
    /// A cache line per CPU: no two CPUs write the same line.
    pub _pad: [u64; 6],
}

/// Slots a producer keeps free below a full ring: room for the programs
/// that can nest on one CPU between its fullness check and its reservation.
pub const EVENT_RING_MARGIN: u64 = 16;

/// An inbound request: its connection's socket address and request number.
/// Value of `THREAD_INBOUND` (key: tid; an upstream call started on a thread
/// serves the request that thread was handling) and key of `UPSTREAM_WAIT`
/// (ns the request waited on upstream calls).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ParentRef {
    pub sk: u64,
    pub seq: u32,
    pub _pad: u32,
}

/// Per-CPU counters of the network probes (map `NET_STATS`): what was seen,
/// and every way an event can be lost.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Event ring of this CPU full: the event is lost (and counted).
    pub events_dropped: u64,
    /// A connection's socket storage could not be created (kernel memory):
    /// the connection is not tracked (and counted).
    pub conns_untracked: u64,
    /// An insert into an LRU hash map failed (`THREAD_INBOUND`,
    /// `UPSTREAM_WAIT`, `READ_BUF`): a parent or a path is missed.
    pub inserts_failed: u64,
    pub inbound_conns: u64,
    pub outbound_conns: u64,
    /// Connections first seen mid-life (opened before attach).
    pub adopted_conns: u64,
    /// TCP resets (sent or received) on inbound connections: errors of the
    /// target's own requests.
    pub inbound_resets: u64,
    /// TCP resets on the target's upstream connections.
    pub outbound_resets: u64,
    /// Send chunks (`tcp_sendmsg_locked`: one per send up to ~64 KiB) on an
    /// inbound connection with no request read before them (a greeting, or
    /// a response already under way at attach).
    pub unmatched_writes: u64,
    /// Delivery events (issue 14) lost to a ring more than half full: the
    /// request itself is not lost, only its queue/drain numbers. Not in
    /// [`NetStats::lost`].
    pub deliveries_dropped: u64,
}

impl NetStats {
    /// Adds `other` field by field (another CPU's counters): see
    /// [`add_u64_fields`]; a new field cannot be forgotten.
    pub fn accumulate(&mut self, other: &NetStats) {
        // SAFETY: `NetStats` is `repr(C)` and all `u64` (asserted below).
        unsafe { add_u64_fields(self, other) }
    }

    /// Everything lost: events, untracked connections, failed inserts.
    pub fn lost(&self) -> u64 {
        self.events_dropped + self.conns_untracked + self.inserts_failed
    }
}

/// First occurrences, for startup (map `MILESTONES`, one-slot `ARRAY`):
/// CLOCK_MONOTONIC ns, 0 until seen.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Milestones {
    /// The first socket of the target entering LISTEN.
    pub first_listen_ns: u64,
    /// The first connection accepted on one of its listening ports.
    pub first_accept_ns: u64,
    /// The first response byte written on an inbound connection.
    pub first_response_ns: u64,
    pub first_listen_port: u32,
    /// 1 once the target has a connection of its own to an upstream. Until
    /// then inbound requests do not record which thread serves them (a hash
    /// update per request, needed only to credit upstream waits).
    pub outbound_seen: u32,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: all of these are #[repr(C)], contain only integers and have no
    // padding (checked by the size assertions below).
    unsafe impl aya::Pod for super::RssCounters {}
    unsafe impl aya::Pod for super::RssStats {}
    unsafe impl aya::Pod for super::TracepointOffsets {}
    unsafe impl aya::Pod for super::ConnState {}
    unsafe impl aya::Pod for super::NetEvent {}
    unsafe impl aya::Pod for super::EventSlot {}
    unsafe impl aya::Pod for super::EventRingPos {}
    unsafe impl aya::Pod for super::ParentRef {}
    unsafe impl aya::Pod for super::NetStats {}
    unsafe impl aya::Pod for super::Milestones {}
    unsafe impl aya::Pod for super::Target {}
    unsafe impl aya::Pod for super::TargetMember {}
    unsafe impl aya::Pod for super::ExecMatch {}
    unsafe impl aya::Pod for super::PathMatch {}
}

// No padding: sizes equal the sum of field sizes.
const _: () = assert!(core::mem::size_of::<RssCounters>() == 40);
const _: () = assert!(core::mem::size_of::<RssStats>() == 32);
const _: () = assert!(core::mem::size_of::<TracepointOffsets>() == 33 * 4);
const _: () = assert!(core::mem::size_of::<ConnState>() == 15 * 8 + 16 * 4);
const _: () = assert!(core::mem::size_of::<NetEvent>() == 4 * 8 + 6 * 4);
const _: () = assert!(core::mem::size_of::<EventSlot>() == 64);
const _: () = assert!(core::mem::size_of::<EventRingPos>() == 64);
const _: () = assert!(core::mem::size_of::<ParentRef>() == 16);
// Ten fields, all u64 (`NetStats::accumulate` relies on it).
const _: () = assert!(core::mem::size_of::<NetStats>() == 10 * 8);
const _: () = assert!(core::mem::align_of::<NetStats>() == 8);
const _: () = assert!(core::mem::size_of::<Milestones>() == 4 * 8);
const _: () = assert!(core::mem::size_of::<Target>() == 40);
const _: () = assert!(core::mem::size_of::<TargetMember>() == 16);
const _: () = assert!(core::mem::size_of::<ExecMatch>() == 16 + 512);
const _: () = assert!(core::mem::size_of::<PathMatch>() == 8 + 256);
