//! Off-CPU stacks and run-queue waits (`--profile-dir`; stacks unless
//! `--no-off-cpu`), done inside the agent's one `sched_switch` program
//! (`sched.rs` calls [`switched_out`] for target threads when
//! `PROFILE_SCHED` is set): a second program on the same tracepoint
//! would pay the tracepoint's dispatch and the target check again on every
//! switch. User-space twin: `agent/src/probes/profile.rs`, read by
//! `agent/src/profile/`.
//!
//! Per target thread one [`ThreadSched`] in the thread's own task storage
//! (the kernel keeps it with the `task_struct`: no hash to look up, freed
//! with the thread, so a reused tid starts afresh). Every block (the
//! thread leaves a CPU not runnable) is timed, switch-out to switch-in:
//! the thread's exact total off CPU grows by it, and so does a per-CPU
//! total. The block may also be chosen, at random, 1 in `one_in` (about
//! `OFF_CPU_STACKS_PER_SEC` per CPU, `--profile-hz`, see [`OffCpuBudget`]):
//! then its stack is sent (a
//! [`ProfileSample`](agent_common::profile::ProfileSample) flagged
//! `OFF_CPU`), and once it has ended a `SchedRecord` with how long it was
//! off times `one_in`, and the thread's exact total. User space splits
//! each thread's exact time among its stacks in proportion to those
//! weighted times (`agent/src/profile/offcpu.rs`). A chosen block whose
//! stack the token bucket refused is only counted. An unchosen block of at
//! least `OFF_CPU_LONG_BLOCK_NS` sends a record without a stack (a few per
//! CPU and period at most), so user space can give its thread's time to
//! the thread's stacks where no sampled block of it ended.
//!
//! A block's end is not taken at the switch-in that ends it: the program
//! would have to look the thread's storage up there too, and that lookup
//! (~40 ns, the cache misses of a thread that has just woken) was the
//! largest single part of profiling's cost per block. The kernel records
//! the switch-in itself: `sched_info.last_arrival`, on the same run-queue
//! clock as [`switch_clock`]. At the thread's next switch-out, which looks
//! its storage up anyway, or at its next cpu-clock sample ([`running`],
//! whichever comes first), the block ends there (the same ns as at the
//! switch-in) and is counted. So a block is counted, and its record sent,
//! up to one running slice (at most ~10 ms at 99 Hz) late.
//!
//! Run-queue waits need no wake-up hook: the kernel itself adds each wait
//! to the thread's `sched_info.run_delay` when the thread is switched in
//! (the total `/proc/PID/task/TID/schedstat` shows). Its growth between
//! two switch-outs of a thread is the wait before the slice that ends at
//! the second, which goes into a per-CPU histogram.

use core::ffi::c_void;

use agent_common::profile::{
    OFF_CPU_LONG_BLOCK_NS, OFF_CPU_PERIOD_NS, OffCpuBudget, ProfileStats, RUNQ_BINS, SchedCounts,
    SchedRecord, ThreadSched, off_cpu_one_in, off_cpu_stack_cost_ns, off_cpu_stacks_per_period,
    runq_bin, sample_flags, sched_kind, sched_mode,
};
use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_LOCAL_STORAGE_GET_F_CREATE, bpf_map_type},
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns, generated::bpf_task_storage_get},
    macros::{btf_map, map},
    maps::PerCpuArray,
};

use crate::{access::load_field, config::offset, profile};

/// [`sched_mode`] bits, set by user space before load.
#[unsafe(no_mangle)]
static PROFILE_SCHED: u32 = 0;

/// Off-CPU stacks per CPU and second aimed at, set by user space before
/// load (`--profile-hz`).
#[unsafe(no_mangle)]
static OFF_CPU_STACKS_PER_SEC: u32 = 0;

/// What profiling work `sched_switch` does; 0 when profiling is off (a
/// constant to the verifier, which then removes the calls).
#[inline(always)]
pub(crate) fn mode() -> u32 {
    // SAFETY: a plain global; volatile so the compiler keeps the load.
    unsafe { core::ptr::read_volatile(&PROFILE_SCHED) }
}

/// A `BPF_MAP_TYPE_TASK_STORAGE` map declared in BTF, which aya-ebpf 0.2
/// has no type for (the layout `btf_map_def!` gives its storage maps:
/// the loader reads the map's kind from the fields' types).
#[repr(C)]
pub struct TaskStorage<T> {
    r#type: *const [i32; bpf_map_type::BPF_MAP_TYPE_TASK_STORAGE as usize],
    key: *const i32,
    value: *const T,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; BPF_F_NO_PREALLOC as usize],
}

// SAFETY: placeholders read by the loader only, never dereferenced.
unsafe impl<T> Sync for TaskStorage<T> {}

impl<T> TaskStorage<T> {
    pub const fn new() -> Self {
        use core::ptr::null;
        TaskStorage {
            r#type: null(),
            key: null(),
            value: null(),
            max_entries: null(),
            map_flags: null(),
        }
    }
}

/// Each target thread's scheduling state.
#[btf_map]
static THREAD_SCHED: TaskStorage<ThreadSched> = TaskStorage::new();
#[map]
static SCHED_COUNTS: PerCpuArray<SchedCounts> = PerCpuArray::with_max_entries(1, 0);
#[map]
static OFF_CPU_BUDGET: PerCpuArray<OffCpuBudget> = PerCpuArray::with_max_entries(1, 0);

/// `task`'s state (a BTF-typed `struct task_struct *`: a `sched_switch`
/// argument, or the current task at a cpu-clock sample), made zeroed when
/// `create` and missing. The task storage
/// helper returns NULL rather than nest when this CPU is already in it.
#[inline(always)]
pub(crate) fn thread_sched(task: *const u8, create: bool) -> Option<&'static mut ThreadSched> {
    let map = core::ptr::addr_of!(THREAD_SCHED) as *mut c_void;
    let flags = if create { u64::from(BPF_LOCAL_STORAGE_GET_F_CREATE) } else { 0 };
    // SAFETY: `task` is a tracepoint's task pointer; with a NULL value the
    // kernel zeroes a new entry.
    let p = unsafe { bpf_task_storage_get(map, task as *mut _, core::ptr::null_mut(), flags) };
    // SAFETY: the thread's own entry; a thread runs on one CPU at a time.
    (!p.is_null()).then(|| unsafe { &mut *(p as *mut ThreadSched) })
}

/// `prev_state` of a thread leaving a CPU for good (it exited): not a block.
const TASK_DEAD: u32 = 0x80;

/// A target thread `prev` (`tid`) leaves this CPU at `now` (the switch
/// clock, [`switch_clock`]): the end of its last block, if that is not
/// counted yet; the run-queue wait before the slice that ends; if it
/// blocks, when, and maybe its stack (`ctx`: the tracepoint's context, for
/// the kernel stack).
#[inline(always)]
pub(crate) fn switched_out(
    ctx: *mut c_void,
    prev: *const u8,
    (tgid, tid): (u32, u32),
    prev_state: u32,
    preempted: bool,
    now: u64,
) {
    let mode = mode();
    let Some(stats) = profile::stats() else { return };
    let Some(t) = thread_sched(prev, true) else { return };
    if t.blocked_ns != 0 {
        block_ended(t, block_end(prev, t.blocked_ns, now), tid);
    }
    if mode & sched_mode::RUNQ != 0 {
        let at = offset!(task_run_delay);
        if at != 0 {
            // SAFETY: `prev` is the tracepoint's task, `at` the offset of
            // its `sched_info.run_delay` (an unsigned long long).
            let run_delay = unsafe { load_field::<u64>(prev, at) };
            if t.known != 0 {
                count_runq_wait(stats, run_delay.saturating_sub(t.run_delay_ns));
            }
            t.run_delay_ns = run_delay;
            t.known = 1;
        }
    }
    let blocked = prev_state != 0 && !preempted && prev_state & TASK_DEAD == 0;
    if mode & sched_mode::OFF_CPU == 0 || !blocked {
        return;
    }
    stats.off_cpu_blocks += 1;
    t.blocked_ns = now;
    t.sampled = 0;
    t.weight = 0;
    let Some(b) = OFF_CPU_BUDGET.get_ptr_mut(0) else { return };
    // SAFETY: a per-CPU slot of this CPU.
    let b = unsafe { &mut *b };
    let weight = choose(b, now);
    if weight == 0 {
        return;
    }
    t.weight = weight;
    if !take_budget(b, now) {
        stats.off_cpu_unsampled += 1;
    } else if let stack_ns = self::now()
        && profile::send_stack(ctx, (tgid, tid), sample_flags::OFF_CPU, stack_ns, Some(&mut *t))
    {
        // `prev` is the current task: its stack is the blocking one.
        stats.off_cpu_stacks += 1;
        t.sampled = 1;
        t.stack_ns = stack_ns;
    } else {
        stats.ring_full += 1;
    }
}

/// Whether this block is chosen: its weight (`one_in` now), or 0. A new
/// period's `one_in` follows the number of blocks of the last one, and
/// rises within the period as its blocks pass what that allowed for. The
/// weight is fixed before the draw, so the estimate stays unbiased.
#[inline(always)]
fn choose(b: &mut OffCpuBudget, now: u64) -> u32 {
    if now.saturating_sub(b.period_start_ns) >= OFF_CPU_PERIOD_NS {
        // SAFETY: a plain global; volatile so the compiler keeps the load.
        let aim = unsafe { core::ptr::read_volatile(&OFF_CPU_STACKS_PER_SEC) };
        b.per_period = off_cpu_stacks_per_period(aim);
        b.stack_cost_ns = off_cpu_stack_cost_ns(aim);
        b.one_in = off_cpu_one_in(b.blocks, b.per_period);
        b.blocks = 0;
        b.long_records = 0;
        b.period_start_ns = now;
    }
    b.blocks += 1;
    // Within a period too: when blocks move to this CPU, the last period's
    // rate would let far more through than aimed at. `one_in` rises when
    // `blocks / per_period` passes it, tested with a product: this runs at
    // every block of a target thread, and a division costs more than the
    // rest of this function.
    if u64::from(b.blocks) >= u64::from(b.per_period) * (u64::from(b.one_in) + 1) {
        b.one_in = off_cpu_one_in(b.blocks, b.per_period);
    }
    let one_in = b.one_in;
    // Chosen when a uniform 32-bit draw falls in the first `1 / one_in` of
    // its range (a multiply and a shift rather than `% one_in`; the
    // probability is off by under `one_in / 2^32`).
    if one_in > 1 && (u64::from(draw(b)) * u64::from(one_in)) >> 32 != 0 {
        return 0;
    }
    one_in
}

/// A uniform 32-bit draw from this CPU's xorshift64 generator (seeded
/// once from the kernel's). `bpf_get_prandom_u32` here, once per block of
/// a target thread, cost 16-23 ns per `sched_switch` run on average (a
/// saturated demo-server, interleaved builds, `docs/performance.md`):
/// ~0.3 % of the server's CPU per request. This is a few instructions on
/// the line the block's other counters hold already. The draws need to be
/// independent of the blocks' order (no aliasing with a thread that
/// blocks in A, B, A, B ...), not unpredictable.
#[inline(always)]
fn draw(b: &mut OffCpuBudget) -> u32 {
    let mut x = b.rng;
    if x == 0 {
        // SAFETY: a helper without side effects. Never 0 after the OR.
        x = u64::from(unsafe { bpf_get_prandom_u32() }) << 32 | 1;
    }
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    b.rng = x;
    (x >> 32) as u32
}

/// One run-queue wait of `wait` ns, into this CPU's histogram.
#[inline(always)]
fn count_runq_wait(stats: &mut ProfileStats, wait: u64) {
    stats.runq_waits += 1;
    stats.runq_total_ns += wait;
    if let Some(c) = SCHED_COUNTS.get_ptr_mut(0) {
        let bin = runq_bin(wait);
        // SAFETY: this CPU's slot; `bin` < RUNQ_BINS.
        if bin < RUNQ_BINS {
            unsafe { (*c).runq[bin] += 1 };
        }
    }
}

/// A target thread `task` (the current task, BTF-typed; `tid`; its state
/// `t`) is running at a cpu-clock sample: a block of it not counted yet
/// has ended, at its last switch-in (it has not left a CPU since). Counted
/// here too, not only at its next switch-out, which a thread that runs on
/// without leaving its CPU may not reach before a window ends (its block
/// would then count as still going on, and spill into the phases it ran
/// through).
#[inline(always)]
pub(crate) fn running(task: *const u8, t: &mut ThreadSched, tid: u32) {
    if mode() & sched_mode::OFF_CPU == 0 {
        return;
    }
    // This CPU's run-queue clock: at or after the switch-in that ended the
    // block, which was on this CPU.
    let now = switch_clock(task);
    if t.blocked_ns != 0 && now != 0 {
        block_ended(t, block_end(task, t.blocked_ns, now), tid);
    }
}

/// When the block that began at `blocked_ns` ended: `prev`'s last
/// switch-in (`sched_info.last_arrival`, the run-queue clock [`switch_clock`]
/// reads, of the CPU that ran it), which is the switch-in that ended it
/// since `prev` is switching out now. `now` (this switch-out: one running
/// slice late) when the kernel lacks the field or the switch clock, or when
/// the reading is not inside the block's bounds (the kernel skips the
/// update when no wait was queued: never seen after a block).
#[inline(always)]
fn block_end(prev: *const u8, blocked_ns: u64, now: u64) -> u64 {
    let (at, clock) = (offset!(task_last_arrival), offset!(rq_clock));
    if at == 0 || clock == 0 {
        return now;
    }
    // SAFETY: `prev` is the tracepoint's task, `at` the offset of its
    // `sched_info.last_arrival` (an unsigned long long).
    let arrival = unsafe { load_field::<u64>(prev, at) };
    if arrival >= blocked_ns && arrival <= now { arrival } else { now }
}

/// `tid`'s block that began at `t.blocked_ns` ended at `end`: its time
/// into the thread's exact total and this CPU's; its record if its stack
/// was sent.
#[inline(always)]
fn block_ended(t: &mut ThreadSched, end: u64, tid: u32) {
    let off = end.saturating_sub(t.blocked_ns);
    t.off_cpu_ns += off;
    if let Some(c) = SCHED_COUNTS.get_ptr_mut(0) {
        // SAFETY: this CPU's slot.
        unsafe { (*c).off_cpu_ns += off };
    }
    let record = if t.sampled != 0 {
        Some(SchedRecord {
            // The stack's time, which pairs the two in user space.
            time_ns: t.stack_ns,
            duration_ns: off * u64::from(t.weight),
            block_ns: off,
            thread_off_cpu_ns: t.off_cpu_ns,
            tid,
            kind: sched_kind::OFF_CPU_END,
        })
    } else if off >= OFF_CPU_LONG_BLOCK_NS && long_record_allowed() {
        Some(SchedRecord {
            time_ns: self::now(),
            duration_ns: 0,
            block_ns: off,
            thread_off_cpu_ns: t.off_cpu_ns,
            tid,
            kind: sched_kind::OFF_CPU_LONG_END,
        })
    } else {
        None
    };
    if let Some(record) = record
        && !profile::send_sched(record)
        && let Some(stats) = profile::stats()
    {
        stats.ring_full += 1;
    }
    t.blocked_ns = 0;
    t.sampled = 0;
}

/// Whether this CPU may send one more long unsampled block's record in
/// this period (at most the period's stack aim; [`choose`] starts the
/// periods).
#[inline(always)]
fn long_record_allowed() -> bool {
    let Some(b) = OFF_CPU_BUDGET.get_ptr_mut(0) else { return false };
    // SAFETY: a per-CPU slot of this CPU.
    let b = unsafe { &mut *b };
    if b.long_records >= b.per_period {
        return false;
    }
    b.long_records += 1;
    true
}

/// Stacks of credit that can be saved up: a burst of 25, what the ring
/// holds room for.
const MAX_CREDIT_STACKS: u64 = 25;

/// One stack copy from this CPU's budget: a token bucket refilled at twice
/// the aim (`b.stack_cost_ns` per stack, set by [`choose`] at each
/// period's start), so stacks are spread over time rather than spent in a
/// burst.
#[inline(always)]
fn take_budget(b: &mut OffCpuBudget, now: u64) -> bool {
    let cost = b.stack_cost_ns;
    let credit = (b.credit_ns + now.saturating_sub(b.last_ns)).min(MAX_CREDIT_STACKS * cost);
    b.last_ns = now;
    if credit < cost {
        b.credit_ns = credit;
        return false;
    }
    b.credit_ns = credit - cost;
    true
}

/// The time now, ns (CLOCK_MONOTONIC): the time of a stack or record user
/// space places in a phase.
#[inline(always)]
fn now() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// The time of the switch under way, ns, for what `sched_switch` measures
/// as durations (blocks, the stack budget's periods and credit): this
/// CPU's `rq->clock`, which `__schedule` has just updated, reached through
/// `task` (`prev` or `next`, both on this CPU's run queue) in three plain
/// loads. `bpf_ktime_get_ns` costs ~90 ns a call here, twice per block of
/// a target thread: a thread-per-connection server blocks once per
/// request (the bench's demo-server: `sched_switch` 222 → 134 ns per run
/// without the two calls). sched_clock, not CLOCK_MONOTONIC, so only its
/// differences are kept; the times user space places in phases are taken
/// with [`now`] when a stack or record is sent (a few hundred a second at
/// most). [`now`] where the kernel lacks the fields (offsets 0), and 0
/// (nothing measured) if a pointer on the way is NULL.
#[inline(always)]
pub(crate) fn switch_clock(task: *const u8) -> u64 {
    let (to_cfs_rq, to_rq, to_clock) =
        (offset!(task_cfs_rq), offset!(cfs_rq_rq), offset!(rq_clock));
    if to_cfs_rq == 0 || to_rq == 0 || to_clock == 0 {
        return now();
    }
    // SAFETY: `task` is a tracepoint's `struct task_struct *`; each offset
    // is that of the next field on the way (`se.cfs_rq`, `cfs_rq.rq`,
    // `rq.clock`), so each load goes through a pointer of the type the
    // verifier tracks from BTF (a NULL one loads 0).
    unsafe {
        let cfs_rq = load_field::<*const u8>(task, to_cfs_rq);
        let rq = load_field::<*const u8>(cfs_rq, to_rq);
        load_field::<u64>(rq, to_clock)
    }
}
