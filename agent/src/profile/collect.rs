//! The thread draining the profiling ring buffer, and what it gathers:
//! on-CPU stacks counted, run-queue waits, and off-CPU stacks weighted by
//! the time blocked (read at off-CPU ticks, `offcpu_ticks.rs`).

use std::{
    os::fd::AsRawFd as _,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use agent_common::profile::{
    KERNEL_FRAMES, RUNQ_BINS, SAMPLE_HEAD_BYTES, SampleHead, SchedCounts, sample_flags,
    sample_record_bytes,
};
use aya::maps::{MapData, PerCpuArray, RingBuf};

use crate::probes::profile::{read_plain, read_sched_counts};

use super::{
    aggregate::StackCounts,
    offcpu::OffCpuTimes,
    offcpu_ticks::{OffCpuTicker, TickCounts},
    pause::Pauses,
    runq::RunqWaits,
    unwind::{self, Frame, StackWalker, UserRegsAndStack},
};

// The ring buffer is drained at every off-CPU tick and every run-queue
// read (`COUNTS_EVERY`), and at once when the kernel side finds it over
// half full (it wakes the thread then, and only then:
// `agent-ebpf/src/profile.rs`). Each wake-up is on a CPU the target may
// need: draining every 25 ms on top of the ticks was about a sixth of this
// thread's CPU on a saturated server (`docs/performance.md`, sixteenth
// session). Samples carry their own times, so how late they are read
// changes nothing else; the ring holds 50 ms of samples
// (`probes::profile::ring_bytes`), so the half-full wake-up leaves 25 ms to
// reach the thread.

/// How often it reads the run-queue waits kept in a map: the time
/// resolution of their phases.
const COUNTS_EVERY: Duration = Duration::from_millis(100);

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

    /// Its edges, ns; the end 0 while open.
    pub fn bounds(&self) -> (u64, u64) {
        (self.start_ns, self.end_ns.load(Ordering::Relaxed))
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

/// What the draining thread gathered.
#[derive(Default)]
pub struct Collected {
    pub walker: StackWalker,
    /// cpu-clock samples per stack.
    pub on_cpu: StackCounts,
    pub samples: u64,
    pub truncated: u64,
    /// ns off CPU per thread and stack, placed at the ticks that read them.
    pub off_cpu: OffCpuTimes,
    pub runq: RunqWaits,
    /// cpu-clock samples taken inside it (the sampling rate's numerator).
    pub samples_in_window: u64,
    /// Records of no known size, or a sample whose length is not that of
    /// its stack pages (never expected).
    pub malformed: u64,
    /// Time spent unwinding, ns (cpu-clock samples and off-CPU stacks).
    pub unwind_ns: u64,
    /// What the off-CPU ticks did (none without them).
    pub ticks: TickCounts,
}

impl Collected {
    /// Handles one ring-buffer record: a cpu-clock sample.
    pub fn record(&mut self, bytes: &[u8], frames: &mut Vec<Frame>, window: &Window) {
        // A sample: its head, then the `user_pages` pages of stack copied.
        let Some(head) = read_plain::<SampleHead>(bytes) else {
            self.malformed += 1;
            return;
        };
        let stack = &bytes[SAMPLE_HEAD_BYTES..];
        if bytes.len() != sample_record_bytes(head.user_pages) {
            self.malformed += 1;
            return;
        }
        if window.overlap(head.time_ns, 1) == 1 {
            self.samples_in_window += 1;
        }
        self.sample(&head, stack, frames);
    }

    /// A sample's frames into `frames`: user (when its registers were
    /// read), then kernel.
    pub(super) fn unwind(&mut self, s: &SampleHead, user_stack: &[u8], frames: &mut Vec<Frame>) {
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
        self.unwind_ns += started.elapsed().as_nanos() as u64;
    }

    /// Unwinds one cpu-clock sample and counts it.
    pub fn sample(&mut self, s: &SampleHead, user_stack: &[u8], frames: &mut Vec<Frame>) {
        self.unwind(s, user_stack, frames);
        if frames.first() == Some(&Frame::Truncated) {
            self.truncated += 1;
        }
        self.samples += 1;
        self.on_cpu.add(s.time_ns, frames);
    }
}

/// The thread's body: drains the ring, ticks when due and reads the
/// run-queue waits every [`COUNTS_EVERY`], then sleeps until the next of
/// those or until the ring is half full; until `stop`, then once more.
/// No off-CPU tick runs while profiling is paused (`pauses`); the first
/// after it only reads where the threads are (`OffCpuTicker::resume`).
pub fn drain_until_stopped(
    mut ring: RingBuf<MapData>,
    counts: PerCpuArray<MapData, SchedCounts>,
    mut ticks: Option<OffCpuTicker>,
    stop: &AtomicBool,
    (window, pauses): (&Window, &Pauses),
) -> Collected {
    let mut c = Collected::default();
    let mut frames = Vec::with_capacity(256);
    let mut last = vec![0u64; RUNQ_BINS];
    let mut last_counts = std::time::Instant::now();
    let mut was_paused = false;
    if ticks.is_some() {
        // Not SCHED_BATCH like the rest of the agent: a batch thread runs
        // when a CPU goes idle, i.e. as target threads block, and would
        // see them blocked more often than they are.
        crate::priority::run_as_other();
    }
    for drain in 0u32.. {
        let stopping = stop.load(Ordering::Relaxed);
        while let Some(item) = ring.next() {
            c.record(&item, &mut frames, window);
        }
        let paused = pauses.is_paused();
        if let Some(t) = ticks.as_mut().filter(|_| !paused) {
            let now = crate::clock::monotonic_ns();
            if was_paused {
                t.resume(now);
            }
            t.tick_if_due(now, &mut c, &mut frames);
        }
        was_paused = paused;
        if last_counts.elapsed() >= COUNTS_EVERY * 9 / 10 || drain == 0 || stopping {
            last_counts = std::time::Instant::now();
            // Deltas since the last read, placed at this time.
            if let Ok(runq) = read_sched_counts(&counts) {
                let now = crate::clock::monotonic_ns();
                let bins: Vec<u64> =
                    runq.iter().zip(&last).map(|(a, b)| a.saturating_sub(*b)).collect();
                c.runq.add_bins(now, &bins);
                last = runq;
            }
        }
        if stopping {
            break;
        }
        // Until the next tick or counts read, or the ring's wake-up.
        let now = crate::clock::monotonic_ns();
        let counts_in = COUNTS_EVERY.saturating_sub(last_counts.elapsed());
        let sleep = match ticks.as_ref().filter(|_| !paused) {
            Some(t) => t.due_in(now).min(counts_in),
            None => counts_in,
        };
        wait_readable(&ring, sleep);
    }
    if let Some(t) = ticks {
        c.ticks = t.counts();
    }
    c
}

/// Sleeps up to `timeout` or until the kernel side wakes the ring's
/// readers (at least a millisecond: never a spin).
fn wait_readable(ring: &RingBuf<MapData>, timeout: Duration) {
    let mut pfd = libc::pollfd { fd: ring.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd; a failure (EINTR) only ends the sleep early.
    unsafe { libc::poll(&mut pfd, 1, ms) };
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
}
