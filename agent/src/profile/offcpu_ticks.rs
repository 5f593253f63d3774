//! Off-CPU ticks in the draining thread: every 1/`--off-cpu-hz` it reads
//! the task iterator bound to the target (`crate::probes::offcpu_ticks`),
//! brings each thread's time off CPU up to date from the scheduler's
//! counters ([`super::tick_totals`]), and gives a few blocked threads'
//! stacks the time of their threads (`super::offcpu`'s ratio estimator).
//!
//! Which blocked threads' stacks: a draw per tick, each blocked thread
//! selected with the same probability, about one stack per CPU and tick
//! (`--off-cpu-hz` per CPU and second) over the new blocks the tick
//! before found. A selected
//! thread's tick weighs the tick's period over that probability for the
//! stack of its block: the stack the iterator sent now, or the one it sent
//! earlier in the same block (told by the thread's switch count), so a
//! long block costs one stack, however many ticks select it.

use std::{collections::HashMap, time::Duration, time::Instant};

use agent_common::profile::tick_flags;

use super::{
    collect::Collected,
    host_steal::HostSteal,
    tick_totals::{Stolen, TickTotals},
    unwind::Frame,
};
use crate::probes::offcpu_ticks::{OffCpuTicks, TickEntry, parse};

/// What the ticks did, for the summary.
#[derive(Clone, Copy, Debug, Default)]
pub struct TickCounts {
    /// Ticks read, the target's blocks while they ran (voluntary
    /// switches), the stacks they took and those stacks' user bytes, and
    /// the time spent on them in user space, ns.
    pub ticks: u64,
    pub blocks: u64,
    pub stacks: u64,
    pub stack_bytes: u64,
    pub ns: u64,
    /// Stacks the iterator dropped because the thread ran while they were
    /// copied (`tick_flags::TORN`).
    pub torn: u64,
    pub steal: StealSummary,
}

/// The time the host stole, for the summary.
#[derive(Clone, Copy, Debug, Default)]
pub struct StealSummary {
    /// The host's steal per ns of the machine's busy time over the run.
    pub share: f64,
    /// Time stolen from the target's threads: summed by `sched_switch`
    /// (`--runq-waits`; then the totals use it) and estimated from the
    /// share (else used).
    pub stolen: Stolen,
}

/// The ticks of one run.
pub struct OffCpuTicker {
    iterator: OffCpuTicks,
    every: Duration,
    /// New blocks' stacks a tick may take on average.
    stacks_per_tick: f64,
    totals: TickTotals,
    /// Where the time stolen from threads is estimated from: used when no
    /// program sums it (`estimate_steal`), shown beside the sums else.
    steal: HostSteal,
    estimate_steal: bool,
    /// Per tid, the stack of its block at the switch count it was taken at.
    stacks: HashMap<u32, (u64, Box<[Frame]>)>,
    /// Blocked threads at the last tick in blocks whose stack was not known
    /// before it: how many stacks the next tick's draw chooses among.
    new_blocks: u64,
    last_ns: u64,
    counts: TickCounts,
    bytes: Vec<u8>,
}

impl OffCpuTicker {
    /// Ticks every `every`, taking about `stacks_per_tick` stacks each,
    /// from `now_ns` on (the first one at once: it is where threads that
    /// were already there start being counted); `estimate_steal`: no
    /// program sums the time stolen from threads (no `--runq-waits`).
    pub fn new(
        iterator: OffCpuTicks,
        every: Duration,
        stacks_per_tick: f64,
        now_ns: u64,
        estimate_steal: bool,
    ) -> Self {
        OffCpuTicker {
            iterator,
            every,
            stacks_per_tick,
            totals: TickTotals::since(now_ns),
            steal: HostSteal::default(),
            estimate_steal,
            stacks: HashMap::new(),
            new_blocks: 0,
            last_ns: now_ns.saturating_sub(every.as_nanos() as u64),
            counts: TickCounts::default(),
            bytes: Vec::new(),
        }
    }

    /// Profiling resumes at `now_ns` after a pause (no tick ran in it):
    /// a tick at once, which only reads where each thread is, so that the
    /// pause counts for nothing.
    pub fn resume(&mut self, now_ns: u64) {
        self.totals.rebase(now_ns);
        self.last_ns = now_ns.saturating_sub(self.every.as_nanos() as u64);
    }

    /// How long until the next tick is due at `now_ns`.
    pub fn due_in(&self, now_ns: u64) -> Duration {
        let next = self.last_ns.saturating_add(self.every.as_nanos() as u64);
        Duration::from_nanos(next.saturating_sub(now_ns))
    }

    /// Ticks if one is due at `now_ns` (a tenth of a period early is due:
    /// sleeps end a little late).
    pub fn tick_if_due(&mut self, now_ns: u64, c: &mut Collected, frames: &mut Vec<Frame>) {
        if now_ns.saturating_sub(self.last_ns) < self.every.as_nanos() as u64 * 9 / 10 {
            return;
        }
        let started = Instant::now();
        let p = (self.stacks_per_tick / self.new_blocks.max(1) as f64).min(1.0);
        let threshold = if p >= 1.0 { u32::MAX } else { (p * 4_294_967_296.0) as u32 };
        self.totals.host_steal(self.steal.share(now_ns), self.estimate_steal);
        let mut bytes = std::mem::take(&mut self.bytes);
        match self.iterator.read(threshold, &mut bytes) {
            Ok(len) => match parse(&bytes[..len]) {
                Some(entries) => {
                    let period = now_ns - self.last_ns;
                    self.count(&entries, (now_ns, period, threshold), c, frames);
                }
                None => c.malformed += 1,
            },
            Err(_) => c.malformed += 1,
        }
        self.bytes = bytes;
        self.totals.rebased();
        self.last_ns = now_ns;
        self.counts.ticks += 1;
        self.counts.ns += started.elapsed().as_nanos() as u64;
    }

    /// One tick's threads at `now_ns`, `period_ns` after the last, read with
    /// the draw `threshold` (selection probability × 2^32).
    fn count(
        &mut self,
        entries: &[TickEntry],
        (now_ns, period_ns, threshold): (u64, u64, u32),
        c: &mut Collected,
        frames: &mut Vec<Frame>,
    ) {
        let weight = if threshold == u32::MAX {
            period_ns
        } else {
            (u128::from(period_ns) * (1u128 << 32) / u128::from(threshold.max(1))) as u64
        };
        let (mut new_blocks, mut grew_all) = (0u64, 0u64);
        let rebasing = self.totals.rebasing();
        for e in entries {
            let t = e.thread;
            // A block whose stack this tick took is new too: counted after
            // the stack went in, the draws alternated between half and all
            // of the new blocks (~1.5 times the aim).
            let mut new_block = e.stack.is_some();
            self.counts.torn += u64::from(t.flags & tick_flags::TORN != 0);
            if let Some((head, pages)) = &e.stack {
                self.counts.stacks += 1;
                self.counts.stack_bytes += pages.len() as u64;
                c.unwind(head, pages, frames);
                self.stacks.insert(t.tid, (t.switches, frames.as_slice().into()));
                // Not sent again while this block lasts; should the map
                // refuse, the stack comes again and replaces this one.
                let _ = self.iterator.have_stack(t.tid, t.switches);
            }
            let (total, grew) = self.totals.read(&t);
            grew_all += grew;
            if t.flags & tick_flags::BLOCKED == 0 {
                if grew > 0 {
                    c.off_cpu.unsampled(t.tid, now_ns, total);
                }
                continue;
            }
            let known = self.stacks.get(&t.tid).filter(|(s, _)| *s == t.switches);
            new_block |= known.is_none();
            new_blocks += u64::from(new_block);
            match known {
                // Where a pause ends, nothing is weighed: the period was
                // not watched.
                Some((_, stack)) if t.flags & tick_flags::SELECTED != 0 && !rebasing => {
                    c.off_cpu.sampled(t.tid, now_ns, stack, weight, total);
                }
                _ => c.off_cpu.unsampled(t.tid, now_ns, total),
            }
        }
        if grew_all > 0 {
            c.off_cpu.all_blocks(now_ns, grew_all);
        }
        let (waited_ns, waits) = self.totals.take_waits();
        c.runq.add_delays(now_ns, waited_ns, waits);
        // Threads this tick did not show have exited.
        if let Some(first) = entries.iter().map(|e| e.thread.time_ns).min() {
            self.totals.forget_older_than(first);
            let totals = &self.totals;
            self.stacks.retain(|tid, _| totals.has(*tid));
        }
        self.new_blocks = new_blocks;
    }

    /// What the ticks did.
    pub fn counts(&self) -> TickCounts {
        TickCounts {
            blocks: self.totals.blocks(),
            steal: StealSummary {
                share: self.steal.overall_share().unwrap_or(0.0),
                stolen: self.totals.stolen(),
            },
            ..self.counts
        }
    }
}
