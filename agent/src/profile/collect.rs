//! The thread draining the profiling ring buffer, and what it gathers:
//! on-CPU stacks counted, off-CPU stacks weighted by the time blocked,
//! run-queue waits.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use agent_common::profile::{
    KERNEL_FRAMES, RUNQ_BINS, SAMPLE_HEAD_BYTES, SampleHead, SchedCounts, SchedRecord,
    sample_flags, sample_record_bytes, sched_kind,
};
use aya::maps::{MapData, PerCpuArray, RingBuf};

use crate::probes::profile::read_sched_counts;

use super::{
    aggregate::StackCounts,
    offcpu::OffCpuTimes,
    runq::RunqWaits,
    unwind::{self, Frame, StackWalker, UserRegsAndStack},
};

/// How often the thread drains the ring buffer (sized for twice that,
/// `probes::profile::ring_bytes`). Each drain is a wake-up on a CPU the
/// target may need (at 99 Hz a drain every 10 ms found about two samples);
/// a larger ring for rarer drains costs its size in the agent's RSS
/// (4 MiB more for 50 ms drains on two CPUs). Samples carry their own
/// times, so how late they are read changes nothing else.
const DRAIN_EVERY: Duration = Duration::from_millis(25);
/// How often, in drains, it reads the counts kept in maps (run-queue
/// waits, the off-CPU total of every block): every 100 ms, the time
/// resolution of their phases.
const COUNTS_EVERY: u32 = 4;

/// The window of the `/proc` ground truth, CLOCK_MONOTONIC ns.
pub struct Window {
    start_ns: u64,
    /// 0 while open.
    end_ns: AtomicU64,
}

impl Window {
    pub fn starting(start_ns: u64) -> Window {
        Window { start_ns, end_ns: AtomicU64::new(0) }
    }

    pub fn end(&self, end_ns: u64) {
        self.end_ns.store(end_ns, Ordering::Relaxed);
    }

    /// Whether [`Window::end`] was called.
    pub fn has_ended(&self) -> bool {
        self.end_ns.load(Ordering::Relaxed) != 0
    }

    /// Its length once ended, ns.
    pub fn duration_ns(&self) -> u64 {
        self.end_ns.load(Ordering::Relaxed).saturating_sub(self.start_ns)
    }

    /// The part of `[start, start + duration)` inside the window.
    fn overlap(&self, start: u64, duration: u64) -> u64 {
        let end = match self.end_ns.load(Ordering::Relaxed) {
            0 => u64::MAX,
            e => e,
        };
        (start + duration).min(end).saturating_sub(start.max(self.start_ns))
    }
}

/// A sampled block whose end has not arrived: CLOCK_MONOTONIC ns when it
/// began, its thread's tgid and its stack.
struct PendingBlock {
    start_ns: u64,
    tgid: u32,
    stack: Box<[Frame]>,
}

/// What the draining thread gathered.
#[derive(Default)]
pub struct Collected {
    pub walker: StackWalker,
    /// cpu-clock samples per stack.
    pub on_cpu: StackCounts,
    pub samples: u64,
    pub truncated: u64,
    /// ns blocked per thread and stack (at the time the block ended).
    pub off_cpu: OffCpuTimes,
    /// Per tid, its sampled block whose end has not been seen yet (a
    /// thread blocks once at a time: a newer one replaces a block whose
    /// end was lost to a full ring, whose time the next end's thread total
    /// still carries).
    pending: HashMap<u32, PendingBlock>,
    pub runq: RunqWaits,
    /// cpu-clock samples taken inside it (the sampling rate's numerator).
    pub samples_in_window: u64,
    /// Records of no known size, or a sample whose length is not that of
    /// its stack pages (never expected).
    pub malformed: u64,
    /// Time spent unwinding and counting, ns.
    pub unwind_ns: u64,
}

impl Collected {
    /// Handles one ring-buffer record.
    pub fn record(&mut self, bytes: &[u8], frames: &mut Vec<Frame>, window: &Window) {
        if bytes.len() == std::mem::size_of::<SchedRecord>() {
            // SAFETY: a record of exactly this plain-integer type's size
            // (read unaligned: no alignment is assumed).
            let r = unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const SchedRecord) };
            self.sched(r);
            return;
        }
        // A sample: its head, then the `user_pages` pages of stack copied.
        if bytes.len() < SAMPLE_HEAD_BYTES {
            self.malformed += 1;
            return;
        }
        // SAFETY: at least a head's bytes, written by the kernel side as a
        // `SampleHead` (plain integers: any bytes are valid; read unaligned,
        // no alignment is assumed).
        let head = unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const SampleHead) };
        let stack = &bytes[SAMPLE_HEAD_BYTES..];
        if bytes.len() != sample_record_bytes(head.user_pages) {
            self.malformed += 1;
            return;
        }
        if head.flags & sample_flags::OFF_CPU == 0 && window.overlap(head.time_ns, 1) == 1 {
            self.samples_in_window += 1;
        }
        self.sample(&head, stack, frames);
    }

    fn sched(&mut self, r: SchedRecord) {
        match r.kind {
            sched_kind::OFF_CPU_END => {
                let stack = match self.pending.remove(&r.tid) {
                    Some(p) if p.start_ns == r.time_ns => p.stack,
                    _ => [Frame::Unsampled].into(),
                };
                // At the block's end, where the kernel's per-CPU totals
                // (`OffCpuTimes::all_blocks`) count its time too: placed
                // at its start, a long block's exact time would land in
                // an earlier phase than the totals it is split from.
                let end_ns = r.time_ns.saturating_add(r.block_ns);
                self.off_cpu.sampled(r.tid, end_ns, &stack, r.duration_ns, r.thread_off_cpu_ns);
            }
            sched_kind::OFF_CPU_LONG_END => {
                self.off_cpu.unsampled(r.tid, r.time_ns, r.thread_off_cpu_ns);
            }
            _ => self.malformed += 1,
        }
    }

    /// Unwinds one sample: an on-CPU one is counted, an off-CPU one waits
    /// for its end.
    pub fn sample(&mut self, s: &SampleHead, user_stack: &[u8], frames: &mut Vec<Frame>) {
        let started = Instant::now();
        frames.clear();
        if s.flags & sample_flags::NO_USER_REGS == 0 {
            let user = UserRegsAndStack {
                ip: s.ip,
                sp: s.sp,
                bp: s.bp,
                stack_base: s.stack_base,
                stack: user_stack,
            };
            self.walker.user_frames(s.tgid, s.execs, &user, frames);
        } else {
            frames.push(Frame::Truncated);
        }
        let kernel = (s.kernel_bytes.max(0) as usize / 8).min(KERNEL_FRAMES);
        unwind::kernel_frames(&s.kernel_stack[..kernel], frames);
        if s.flags & sample_flags::OFF_CPU != 0 {
            let block =
                PendingBlock { start_ns: s.time_ns, tgid: s.tgid, stack: frames.as_slice().into() };
            self.pending.insert(s.tid, block);
        } else {
            if frames.first() == Some(&Frame::Truncated) {
                self.truncated += 1;
            }
            self.samples += 1;
            self.on_cpu.add(s.time_ns, frames);
        }
        self.unwind_ns += started.elapsed().as_nanos() as u64;
    }

    /// Blocks still going on at `end_ns` count until then, if their thread
    /// still lives: a thread that exited blocked on its way out (and its
    /// process may be gone) does not. (The kernel counts a block at its
    /// thread's next switch-out, so one that ended while its thread has
    /// run since without leaving a CPU is counted here to the end too.)
    pub fn close(&mut self, end_ns: u64) {
        for (tid, b) in std::mem::take(&mut self.pending) {
            if std::path::Path::new(&format!("/proc/{}/task/{tid}", b.tgid)).exists() {
                // At the end, like every block at its end (see `sched`).
                let ns = end_ns.saturating_sub(b.start_ns);
                self.off_cpu.ongoing(end_ns.saturating_sub(1), &b.stack, ns);
            }
        }
    }
}

/// The thread's body: drains every [`DRAIN_EVERY`] and reads the counts
/// every [`COUNTS_EVERY`] drains until `stop`, then once more.
pub fn drain_until_stopped(
    mut ring: RingBuf<MapData>,
    counts: PerCpuArray<MapData, SchedCounts>,
    stop: &AtomicBool,
    window: &Window,
) -> Collected {
    let mut c = Collected::default();
    let mut frames = Vec::with_capacity(256);
    let mut last = (0u64, vec![0u64; RUNQ_BINS]);
    for tick in 0u32.. {
        let stopping = stop.load(Ordering::Relaxed);
        while let Some(item) = ring.next() {
            c.record(&item, &mut frames, window);
        }
        if tick % COUNTS_EVERY == 0 || stopping {
            // Deltas since the last read, placed at this time.
            if let Ok((off_cpu, runq)) = read_sched_counts(&counts) {
                let now = crate::clock::monotonic_ns();
                let d = off_cpu.saturating_sub(last.0);
                if d > 0 {
                    c.off_cpu.all_blocks(now, d);
                }
                let bins: Vec<u64> =
                    runq.iter().zip(&last.1).map(|(a, b)| a.saturating_sub(*b)).collect();
                c.runq.add_bins(now, &bins);
                last = (off_cpu, runq);
            }
        }
        if stopping {
            break;
        }
        std::thread::sleep(DRAIN_EVERY);
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sample's record as the kernel side sends it: its head, then
    /// `pages` pages of stack.
    fn sample_record(head: &SampleHead, pages: usize) -> Vec<u8> {
        // SAFETY: a #[repr(C)] struct of integers without padding.
        let head = unsafe {
            std::slice::from_raw_parts((head as *const SampleHead).cast::<u8>(), SAMPLE_HEAD_BYTES)
        };
        let mut bytes = head.to_vec();
        bytes.resize(SAMPLE_HEAD_BYTES + pages * agent_common::profile::STACK_PAGE, 0);
        bytes
    }

    #[test]
    fn a_sample_is_its_head_and_the_pages_it_holds() {
        // SAFETY: integers only: all zeroes is a valid head.
        let mut head: SampleHead = unsafe { std::mem::zeroed() };
        head.flags = sample_flags::NO_USER_REGS; // nothing to unwind
        head.user_pages = 2;
        head.time_ns = 5;
        let window = Window::starting(0);
        let mut c = Collected::default();
        let mut frames = Vec::new();
        c.record(&sample_record(&head, 2), &mut frames, &window);
        assert_eq!((c.samples, c.samples_in_window, c.malformed), (1, 1, 0));
        // A length that is not the head's pages: counted, not read.
        c.record(&sample_record(&head, 1), &mut frames, &window);
        c.record(&sample_record(&head, 0)[..SAMPLE_HEAD_BYTES - 8], &mut frames, &window);
        assert_eq!((c.samples, c.malformed), (1, 2));
    }

    /// A sampled block that began in one phase and ended in the next is
    /// placed at its end, where the kernel's per-CPU totals count it: the
    /// later phase splits its time by the block's stack, none of it "not
    /// sampled", and the earlier one has none of it. (Placed at its start,
    /// the later phase showed it as `[stack not sampled]`: 38.8 % of a
    /// k6 demo's ramp-up, 9.2 % since.)
    #[test]
    fn a_block_is_placed_where_it_ended() {
        const S: u64 = 1_000_000_000;
        // SAFETY: integers only: all zeroes is a valid head.
        let mut head: SampleHead = unsafe { std::mem::zeroed() };
        head.flags = sample_flags::NO_USER_REGS | sample_flags::OFF_CPU;
        head.tid = 7;
        head.time_ns = S;
        let window = Window::starting(0);
        let mut c = Collected::default();
        let mut frames = Vec::new();
        c.record(&sample_record(&head, 0), &mut frames, &window);
        let record = SchedRecord {
            time_ns: S,
            duration_ns: 2 * S,
            block_ns: 2 * S,
            thread_off_cpu_ns: 2 * S,
            tid: 7,
            kind: sched_kind::OFF_CPU_END,
        };
        // SAFETY: a #[repr(C)] struct of integers without padding.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&record as *const SchedRecord).cast::<u8>(),
                std::mem::size_of::<SchedRecord>(),
            )
        };
        c.record(bytes, &mut frames, &window);
        // The per-CPU totals grew by it when it ended, read soon after.
        c.off_cpu.all_blocks(3 * S + S / 20, 2 * S);
        let before = c.off_cpu.estimate(Some((0, 2 * S)));
        assert!(before.is_empty(), "{before:?}");
        let after = c.off_cpu.estimate(Some((2 * S, 4 * S)));
        assert_eq!(after.len(), 1, "{after:?}");
        assert_eq!(after[0].1, 2 * S);
        assert_ne!(after[0].0[0], Frame::Unsampled, "{after:?}");
    }
}
