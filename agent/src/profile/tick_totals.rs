//! Each target thread's time off CPU, from what the scheduler already
//! counts for it, read at every off-CPU tick. Off CPU is a block from the
//! thread's switch-out until it runs again: asleep, then waiting for a CPU
//! once woken.
//!
//! - **Asleep:** between two readings, a thread that was neither running
//!   (`se.sum_exec_runtime`) nor waiting in a run queue
//!   (`sched_info.run_delay`) was asleep, whatever the ticks' timing. On a
//!   VM, time the hypervisor stole from a CPU while the thread ran on it is
//!   in neither (the scheduler's task clock skips it), and it is taken off
//!   too: with `--runq-waits`, `sched_switch` sums it per thread at its
//!   switch-outs (`TickThread::stolen_ns`); without, it is the machine's
//!   steal share times the CPU time the thread ran ([`super::host_steal`]).
//!   The test VM's steal under load ran from 1 to 44 % of its busy time.
//! - **The wait after a wake-up:** `run_delay` holds it with the waits of
//!   preempted threads, which are not off-CPU time (the thread did not
//!   block). An interval in which the thread was never preempted has only
//!   waits after wake-ups (exact), one in which it never blocked none.
//!   Otherwise the interval's growth of `run_delay` is split by the share
//!   of the thread's waits the ticks saw that followed a wake-up (all of
//!   them so far); before the ticks have seen it wait, by its voluntary
//!   switches' share of its switches in the interval.
//!
//! Why not count blocked ticks alone (each adding the time since the last
//! tick): the tick is read by a thread of the agent, which takes a CPU to
//! read it, so the moments it observes are not independent of the target.
//! Threads woken as it runs wait for it, and are seen waiting more often
//! than they wait: counted that way, 20 µs naps came out 7 to 16 % long
//! in every run. A ratio of waits to waits is not moved by that
//! (`docs/performance.md`, fourteenth session).

use std::collections::HashMap;

use agent_common::profile::{TickThread, tick_flags};

/// Time stolen from the target's threads while they ran, ns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stolen {
    /// Summed at their switch-outs by `sched_switch` (`--runq-waits`).
    pub summed_ns: u64,
    /// The host's steal share times their CPU time (always).
    pub estimated_ns: u64,
}

/// One thread's readings.
#[derive(Clone, Copy, Debug)]
struct ThreadClock {
    /// Where its counting starts (its first reading, or its birth when
    /// that was while profiling), and its last reading.
    base: TickThread,
    last: TickThread,
    /// Its run-queue waits counted as the tails of blocks, ns.
    woken_ns: f64,
    /// Time stolen from it while it ran, ns, since the base (its readings'
    /// sum restarts when its slots were taken over: counted from there).
    stolen_ns: u64,
    /// Its waits the ticks saw: all, and those after a wake-up.
    seen_waiting: u32,
    seen_woken: u32,
    /// The total last reported (never lower than the one before).
    reported_ns: u64,
    /// Its total when profiling last resumed after a pause: what it had
    /// before its base moved there.
    carried_ns: u64,
}

impl ThreadClock {
    fn new(base: TickThread, last: TickThread) -> ThreadClock {
        ThreadClock {
            base,
            last,
            woken_ns: 0.0,
            stolen_ns: 0,
            seen_waiting: 0,
            seen_woken: 0,
            reported_ns: 0,
            carried_ns: 0,
        }
    }
}

/// Off-CPU totals of every thread the ticks have seen.
#[derive(Debug)]
pub struct TickTotals {
    /// When profiling began (`CLOCK_MONOTONIC` ns).
    since_ns: u64,
    threads: HashMap<u32, ThreadClock>,
    /// Blocks counted (voluntary switches since each thread's base).
    blocks: u64,
    /// Profiling resumed after a pause: the next reading of each thread
    /// moves its base there, counting none of the pause.
    rebase: bool,
    /// Stolen ns per ns run by the host's account, and whether it stands
    /// in for the kernel's sums (`TickThread::stolen_ns`, which no program
    /// fills without `--runq-waits`).
    steal_share: (f64, bool),
    /// Time stolen from the threads, ns, as the kernel's sums say and as
    /// the host's share says: the two side by side when both are known.
    stolen: Stolen,
    /// Run-queue ns waited and waits (switches) since the last
    /// [`TickTotals::take_waits`], over the threads read.
    waited: (u64, u64),
}

impl TickTotals {
    pub fn since(since_ns: u64) -> TickTotals {
        TickTotals {
            since_ns,
            threads: HashMap::new(),
            blocks: 0,
            rebase: false,
            steal_share: (0.0, false),
            stolen: Stolen::default(),
            waited: (0, 0),
        }
    }

    /// Profiling resumes at `now_ns` after a pause: the readings of the
    /// next tick (until [`TickTotals::rebased`]) count from themselves, so
    /// the pause, whose switches no program saw (the time stolen from the
    /// threads' slices among them), adds nothing.
    pub fn rebase(&mut self, now_ns: u64) {
        self.since_ns = now_ns;
        self.rebase = true;
    }

    /// The host's steal per ns run for the readings that follow. With
    /// `instead`, they carry no stolen time of their own: time stolen from
    /// a thread is `share` of the CPU time it ran since its last reading.
    pub fn host_steal(&mut self, share: f64, instead: bool) {
        self.steal_share = (share, instead);
    }

    /// Time stolen from the threads so far, both ways.
    pub fn stolen(&self) -> Stolen {
        self.stolen
    }

    /// The tick after [`TickTotals::rebase`] has read every thread.
    pub fn rebased(&mut self) {
        self.rebase = false;
    }

    /// Whether the readings now only move the threads' bases.
    pub fn rebasing(&self) -> bool {
        self.rebase
    }

    /// A reading of thread `t`: its total off CPU so far, ns (not
    /// decreasing while the thread lives; a tid reused by a new thread
    /// starts again), and how much it grew since its last reading.
    pub fn read(&mut self, t: &TickThread) -> (u64, u64) {
        let reused = |p: &TickThread| {
            t.start_ns != p.start_ns || t.exec_ns < p.exec_ns || t.switches < p.switches
        };
        let c = match self.threads.get_mut(&t.tid) {
            Some(c) if !reused(&c.last) => c,
            _ => {
                // Born while profiling: counted from its start, when it
                // had neither run nor waited.
                let base = if t.start_ns >= self.since_ns && t.start_ns <= t.time_ns {
                    TickThread {
                        time_ns: t.start_ns,
                        start_ns: t.start_ns,
                        ..TickThread::default()
                    }
                } else {
                    *t
                };
                self.threads.insert(t.tid, ThreadClock::new(base, base));
                self.threads.get_mut(&t.tid).expect("just inserted")
            }
        };
        if self.rebase {
            *c = ThreadClock {
                carried_ns: c.reported_ns,
                reported_ns: c.reported_ns,
                ..ThreadClock::new(*t, *t)
            };
            return (c.reported_ns, 0);
        }
        let p = c.last;
        let (share, instead) = self.steal_share;
        let estimated = (t.exec_ns.saturating_sub(p.exec_ns) as f64 * share) as u64;
        let summed = t.stolen_ns.checked_sub(p.stolen_ns).unwrap_or(t.stolen_ns);
        self.stolen.estimated_ns += estimated;
        if !instead {
            self.stolen.summed_ns += summed;
        }
        c.stolen_ns += if instead { estimated } else { summed };
        if t.flags & tick_flags::WAITING != 0 {
            c.seen_waiting += 1;
            if t.flags & tick_flags::WOKEN != 0 {
                c.seen_woken += 1;
            }
        }
        // Exact when the interval's switches were all of one kind; else the
        // share of woken waits the ticks saw (before any, the voluntary
        // switches' share).
        let switches = t.switches.saturating_sub(p.switches);
        self.waited.0 += t.run_delay_ns.saturating_sub(p.run_delay_ns);
        self.waited.1 += switches;
        let preempted = t.preemptions.saturating_sub(p.preemptions).min(switches);
        let woken_share = if preempted == 0 {
            1.0
        } else if preempted == switches {
            0.0
        } else if c.seen_waiting > 0 {
            f64::from(c.seen_woken) / f64::from(c.seen_waiting)
        } else {
            (switches - preempted) as f64 / switches as f64
        };
        c.woken_ns += t.run_delay_ns.saturating_sub(p.run_delay_ns) as f64 * woken_share;
        let voluntary = |r: &TickThread| r.switches.saturating_sub(r.preemptions);
        self.blocks += voluntary(t).saturating_sub(voluntary(&p));
        c.last = *t;
        // Asleep since the base: all of it less what was run or waited. A
        // reading's CPU and wait times are as of its run queue's clock,
        // which may lag: what one reading over-counts, the next takes
        // back, and the reported total holds until it is passed.
        let b = c.base;
        let busy =
            t.exec_ns.saturating_sub(b.exec_ns) + t.run_delay_ns.saturating_sub(b.run_delay_ns);
        let busy = busy + c.stolen_ns;
        let asleep = t.time_ns.saturating_sub(b.time_ns).saturating_sub(busy);
        let total = (c.carried_ns + asleep + c.woken_ns as u64).max(c.reported_ns);
        let grew = total - c.reported_ns;
        c.reported_ns = total;
        (total, grew)
    }

    /// The run-queue ns waited and the waits (each switch-out is followed
    /// by one) of the readings since the last call: the kernel's own
    /// `run_delay`, whatever ended each wait (a wake-up or a preemption).
    pub fn take_waits(&mut self) -> (u64, u64) {
        std::mem::take(&mut self.waited)
    }

    /// The target's blocks so far: its threads' voluntary switches.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// Whether thread `tid` was read and not forgotten.
    pub fn has(&self, tid: u32) -> bool {
        self.threads.contains_key(&tid)
    }

    /// Forgets threads not read since `before_ns` (exited).
    pub fn forget_older_than(&mut self, before_ns: u64) {
        self.threads.retain(|_, c| c.last.time_ns >= before_ns);
    }
}

impl Default for TickTotals {
    /// No thread counted from its birth until [`TickTotals::since`] says
    /// when profiling began.
    fn default() -> TickTotals {
        TickTotals::since(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// Thread 7 (born at 1 ms) read at `time` ms, having run `exec` and
    /// waited `delay` ms, after `switches` switches of which `preempted`.
    fn reading(time: u64, exec: u64, delay: u64, (switches, preempted): (u64, u64)) -> TickThread {
        TickThread {
            switches,
            preemptions: preempted,
            time_ns: time * MS,
            start_ns: MS,
            exec_ns: exec * MS,
            run_delay_ns: delay * MS,
            tid: 7,
            ..TickThread::default()
        }
    }

    fn flagged(mut t: TickThread, flags: u32) -> TickThread {
        t.flags = flags;
        t
    }

    #[test]
    fn time_neither_run_nor_waited_is_asleep() {
        let mut t = TickTotals::since(50 * MS);
        assert_eq!(t.read(&reading(100, 5, 0, (0, 0))), (0, 0));
        // 10 ms: 3 run, 2 waited after preemptions, 5 asleep.
        assert_eq!(t.read(&reading(110, 8, 2, (4, 4))), (5 * MS, 5 * MS));
        // 10 ms: 1 run, 4 waited after wake-ups (no preemption): tails.
        assert_eq!(t.read(&reading(120, 9, 6, (8, 4))), (5 * MS + 9 * MS, 9 * MS));
        assert_eq!(t.blocks(), 4, "voluntary switches");
        // Waited 6 ms over 8 switches since the first reading.
        assert_eq!(t.take_waits(), (6 * MS, 8));
        assert_eq!(t.take_waits(), (0, 0), "taken");
    }

    #[test]
    fn a_pause_counts_nothing_and_the_totals_go_on_from_before_it() {
        let mut t = TickTotals::since(50 * MS);
        t.read(&reading(100, 5, 0, (0, 0)));
        assert_eq!(t.read(&reading(110, 8, 2, (4, 4))), (5 * MS, 5 * MS));
        // Paused from 110 to 200 ms: 40 ms asleep, 6 voluntary switches.
        t.rebase(200 * MS);
        assert!(t.rebasing());
        assert_eq!(t.read(&reading(200, 58, 2, (10, 4))), (5 * MS, 0), "the pause adds nothing");
        t.rebased();
        // Then 10 ms: 3 run, 7 asleep, 2 blocks.
        assert_eq!(t.read(&reading(210, 61, 2, (12, 4))), (12 * MS, 7 * MS));
        assert_eq!(t.blocks(), 2, "the pause's switches are not counted");
    }

    #[test]
    fn waits_are_split_by_what_the_ticks_saw() {
        let mut t = TickTotals::since(50 * MS);
        t.read(&reading(100, 0, 0, (0, 0)));
        let waiting = tick_flags::WAITING;
        let woken = tick_flags::WAITING | tick_flags::WOKEN | tick_flags::BLOCKED;
        // Both kinds of switch in each interval. Seen waiting once,
        // preempted: the 4 ms waited are not off CPU, though the switches
        // say half of them followed blocks.
        assert_eq!(t.read(&flagged(reading(110, 6, 4, (2, 1)), waiting)), (0, 0));
        // Then seen woken: one of two, half of the next 4 ms.
        assert_eq!(t.read(&flagged(reading(120, 12, 8, (4, 2)), woken)), (2 * MS, 2 * MS));
        // An interval without preemptions: its waits all followed blocks,
        // whatever the ticks saw.
        assert_eq!(t.read(&flagged(reading(130, 16, 12, (6, 2)), waiting)), (8 * MS, 6 * MS));
    }

    #[test]
    fn a_lagging_reading_is_made_up_later_and_totals_never_fall() {
        let mut t = TickTotals::since(50 * MS);
        t.read(&reading(100, 0, 0, (0, 0)));
        // Its CPU time not yet brought up to date: 10 ms look asleep...
        assert_eq!(t.read(&reading(110, 0, 0, (0, 0))).0, 10 * MS);
        // ...the next shows 18 ms run in 20: 2 asleep; the total holds...
        assert_eq!(t.read(&reading(120, 18, 0, (1, 1))), (10 * MS, 0));
        // ...until the thread's sleep passes it.
        assert_eq!(t.read(&reading(130, 18, 0, (1, 1))), (12 * MS, 2 * MS));
    }

    #[test]
    fn time_stolen_while_it_ran_is_not_asleep() {
        let mut t = TickTotals::since(50 * MS);
        let stolen = |r: TickThread, ms: u64| TickThread { stolen_ns: ms * MS, ..r };
        t.read(&stolen(reading(100, 0, 0, (0, 0)), 7));
        // 10 ms: ran 4, of which the host took 1 more: 5 asleep, not 6.
        assert_eq!(t.read(&stolen(reading(110, 4, 0, (1, 0)), 8)).0, 5 * MS);
        // Its slots taken over (the sum fell to 2): those 2 are new.
        assert_eq!(t.read(&stolen(reading(120, 4, 0, (2, 0)), 2)).0, 13 * MS);
        // No share given: the estimate beside the sums is 0.
        assert_eq!(t.stolen(), Stolen { summed_ns: 3 * MS, estimated_ns: 0 });
    }

    #[test]
    fn without_the_kernels_sums_steal_is_the_share_of_cpu_time_run() {
        let mut t = TickTotals::since(50 * MS);
        // The host steals 1 ns per 4 run; the readings' own sums are not
        // used (no program fills them).
        t.host_steal(0.25, true);
        let junk = |r: TickThread| TickThread { stolen_ns: 999 * MS, ..r };
        t.read(&junk(reading(100, 0, 0, (0, 0))));
        // 10 ms: ran 4, the host took 1 more: 5 asleep.
        assert_eq!(t.read(&junk(reading(110, 4, 0, (1, 0)))).0, 5 * MS);
        // 10 ms all asleep: nothing run, nothing stolen.
        assert_eq!(t.read(&junk(reading(120, 4, 0, (2, 0)))).0, 15 * MS);
        assert_eq!(t.stolen(), Stolen { summed_ns: 0, estimated_ns: MS });
    }

    #[test]
    fn a_thread_born_while_profiling_counts_from_its_start() {
        // Profiling since 0: thread 7, born at 1 ms, first read at 10 ms
        // having run 2 ms: 7 ms asleep already.
        let mut t = TickTotals::since(0);
        assert_eq!(t.read(&reading(10, 2, 0, (1, 0))), (7 * MS, 7 * MS));
        assert_eq!(t.read(&reading(20, 2, 0, (1, 0))), (17 * MS, 10 * MS));
    }

    #[test]
    fn a_reused_tid_starts_again() {
        let mut t = TickTotals::since(50 * MS);
        t.read(&reading(100, 50, 5, (3, 0)));
        assert_eq!(t.read(&reading(110, 50, 5, (3, 0))).0, 10 * MS);
        // A new thread 7, born at 105 ms: counted from its birth.
        let newer = TickThread { start_ns: 105 * MS, ..reading(120, 1, 0, (1, 0)) };
        assert_eq!(t.read(&newer), (14 * MS, 14 * MS));
        t.forget_older_than(121 * MS);
        assert_eq!(t.read(&reading(130, 60, 5, (4, 0))), (0, 0), "forgotten: a first reading");
    }
}
