//! Names of the maps and programs of the eBPF object, for user space to find
//! them by. The kernel side's `#[map]` statics and program functions carry
//! these names (Rust cannot name an item from a constant), and a unit test
//! of `agent/src/probes` checks that each one exists in the built object.

/// Maps.
pub mod maps {
    pub const TARGET: &str = "TARGET";
    pub const RSS_COUNTERS: &str = "RSS_COUNTERS";
    pub const RSS_STATS: &str = "RSS_STATS";
    pub const CONNS: &str = "CONNS";
    pub const LISTEN_PORTS: &str = "LISTEN_PORTS";
    /// One-slot `ARRAY` of `u32`: 1 while sockets that predate the target's
    /// discovery may still be adopted by the socket programs themselves.
    pub const ADOPTION_OPEN: &str = "ADOPTION_OPEN";
    pub const UPSTREAM_WAIT: &str = "UPSTREAM_WAIT";
    pub const READ_BUF: &str = "READ_BUF";
    pub const NET_EVENTS: &str = "NET_EVENTS";
    pub const NET_EVENTS_POS: &str = "NET_EVENTS_POS";
    pub const NET_STATS: &str = "NET_STATS";
    pub const MILESTONES: &str = "MILESTONES";
    /// `RINGBUF` of profile samples and scheduler records (`--profile-dir`).
    pub const PROFILE_SAMPLES: &str = "PROFILE_SAMPLES";
    /// `ARRAY` of `profile::ProfileSample`, one per possible CPU: where a
    /// sample is built before its used part goes into `PROFILE_SAMPLES`.
    pub const PROFILE_SCRATCH: &str = "PROFILE_SCRATCH";
    /// One-slot `PERCPU_ARRAY` of the profiling programs' counters.
    pub const PROFILE_STATS: &str = "PROFILE_STATS";
    /// One-slot `PERCPU_ARRAY` of `profile::SchedCounts`: run-queue waits.
    pub const SCHED_COUNTS: &str = "SCHED_COUNTS";
    /// Off-CPU ticks: one-slot `ARRAY` of `profile::TickConfig` (the tick's
    /// draw), `LRU_HASH` tid → switches of the last block whose stack user
    /// space has, and the one-slot `ARRAY` of `profile::ProfileSample`
    /// where the iterator builds a stack.
    pub const OFF_CPU_TICK: &str = "OFF_CPU_TICK";
    pub const OFF_CPU_STACKED: &str = "OFF_CPU_STACKED";
    pub const OFF_CPU_SCRATCH: &str = "OFF_CPU_SCRATCH";
    /// Node mode (`serve`): the targets, by tgid (`HASH` of `TargetMember`).
    pub const TARGETS: &str = "TARGETS";
    /// Node mode: command names / exec'd paths / cgroup ids → selector index.
    pub const EXEC_COMMS: &str = "EXEC_COMMS";
    pub const EXEC_PATHS: &str = "EXEC_PATHS";
    pub const EXEC_CGROUPS: &str = "EXEC_CGROUPS";
    /// Node mode: one-slot `ARRAY` of `u64`, execs that matched a selector
    /// while `TARGETS` was full.
    pub const TARGETS_REFUSED: &str = "TARGETS_REFUSED";
    /// Every map user space looks up by name.
    pub const ALL: [&str; 24] = [
        TARGET,
        RSS_COUNTERS,
        RSS_STATS,
        CONNS,
        LISTEN_PORTS,
        ADOPTION_OPEN,
        UPSTREAM_WAIT,
        READ_BUF,
        NET_EVENTS,
        NET_EVENTS_POS,
        NET_STATS,
        MILESTONES,
        PROFILE_SAMPLES,
        PROFILE_SCRATCH,
        PROFILE_STATS,
        SCHED_COUNTS,
        OFF_CPU_TICK,
        OFF_CPU_STACKED,
        OFF_CPU_SCRATCH,
        TARGETS,
        EXEC_COMMS,
        EXEC_PATHS,
        EXEC_CGROUPS,
        TARGETS_REFUSED,
    ];
}

/// Programs. Each is named after the hook it attaches to, so the name is
/// also the tracepoint's (in the category its user-space twin gives); the
/// profiling one on cpu-clock is named `profile_cpu_clock`; `sched_switch`
/// is attached only when profiling.
pub mod programs {
    pub const SCHED_PROCESS_EXEC: &str = "sched_process_exec";
    pub const SCHED_SWITCH: &str = "sched_switch";
    pub const RSS_STAT: &str = "rss_stat";
    pub const INET_SOCK_SET_STATE: &str = "inet_sock_set_state";
    pub const TCP_RCV_SPACE_ADJUST: &str = "tcp_rcv_space_adjust";
    pub const TCP_SENDMSG_LOCKED: &str = "tcp_sendmsg_locked";
    pub const TCP_RECEIVE_RESET: &str = "tcp_receive_reset";
    pub const TCP_SEND_RESET: &str = "tcp_send_reset";
    pub const SYS_ENTER_READ: &str = "sys_enter_read";
    pub const SYS_ENTER_RECVFROM: &str = "sys_enter_recvfrom";
    pub const SYS_ENTER_READV: &str = "sys_enter_readv";
    pub const SYS_ENTER_RECVMSG: &str = "sys_enter_recvmsg";
    pub const STATS_FLOOR: &str = "stats_floor";
    /// Queue and drain time (issue 14): `agent/src/probes/delivery.rs`.
    pub const SK_DATA_READY: &str = "sk_data_ready";
    pub const TCP_PROBE: &str = "tcp_probe";
    pub const TCP_RETRANSMIT_SKB: &str = "tcp_retransmit_skb";
    /// The `perf_event` program on cpu-clock of every CPU.
    pub const PROFILE_CPU_CLOCK: &str = "profile_cpu_clock";
    /// The sleepable task iterator of off-CPU ticks (read, not attached to
    /// a hook).
    pub const PROFILE_OFFCPU_TICKS: &str = "profile_offcpu_ticks";
    /// Every program of the object. (Run-queue waits and steal time are
    /// counted by `SCHED_SWITCH` itself when profiling.)
    pub const ALL: [&str; 18] = [
        SCHED_PROCESS_EXEC,
        SCHED_SWITCH,
        RSS_STAT,
        INET_SOCK_SET_STATE,
        TCP_RCV_SPACE_ADJUST,
        TCP_SENDMSG_LOCKED,
        TCP_RECEIVE_RESET,
        TCP_SEND_RESET,
        SYS_ENTER_READ,
        SYS_ENTER_RECVFROM,
        SYS_ENTER_READV,
        SYS_ENTER_RECVMSG,
        STATS_FLOOR,
        PROFILE_CPU_CLOCK,
        PROFILE_OFFCPU_TICKS,
        SK_DATA_READY,
        TCP_PROBE,
        TCP_RETRANSMIT_SKB,
    ];
}
