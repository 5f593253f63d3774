//! The consumer side of the per-CPU request event ring (`NET_EVENTS`, see
//! `agent_common::EventSlot`): user space maps the ring and the per-CPU
//! positions, copies out every committed event and then publishes how far it
//! read, so the kernel side may reuse those slots. No system call per event
//! or per drain.
//!
//! Kernel side: `emit` in `agent-ebpf/src/net.rs`. The protocol, per CPU:
//! 1. the producer checks `head − tail < slots − EVENT_RING_MARGIN` (else it
//!    counts a drop), reserves position `p` with an atomic add on `head`,
//!    writes the event to slot `p mod slots`, then writes `commit = p + 1`;
//! 2. the consumer reads slots from `tail` while their `commit` says they are
//!    complete, then stores the new `tail`.
//!
//! A slot reserved but not committed yet (its program is still running, or
//! was interrupted on that CPU) stops the consumer for that CPU until the
//! next drain. If a reservation were never committed, the CPU's events would
//! stop for good; after [`STUCK_DRAINS`] drains on the same position the
//! consumer gives that slot up and counts it lost.

use std::ptr::{self, NonNull};
use std::sync::atomic::{Ordering, fence};

use agent_common::{EventRingPos, EventSlot, NetEvent};

/// Drains a position may block for before its slot is given up as lost
/// (at the default 100 ms interval, 5 s).
pub const STUCK_DRAINS: u32 = 50;

/// Slots per CPU: a power of two, about `budget_bytes` for the whole ring,
/// at least 1024 and at most 16 384 per CPU.
pub fn slots_per_cpu(ncpus: u32, budget_bytes: u64) -> u64 {
    let per_cpu = budget_bytes / size_of::<EventSlot>() as u64 / u64::from(ncpus.max(1));
    let floor_pow2 = if per_cpu == 0 { 1 } else { 1u64 << (63 - per_cpu.leading_zeros()) };
    floor_pow2.clamp(1024, 16_384)
}

/// A view of the ring: `ncpus` CPUs of `slots` slots each, and one position
/// pair per CPU. The memory is shared with the kernel: every access is
/// volatile.
pub struct EventRing {
    slots_ptr: NonNull<EventSlot>,
    pos_ptr: NonNull<EventRingPos>,
    ncpus: usize,
    slots: u64,
    /// Per CPU: the position that blocked the last drain, and for how many.
    blocked: Vec<(u64, u32)>,
    /// Reservations given up as never committed.
    pub lost: u64,
    /// Whether the last drain stopped, on some CPU, at a slot reserved but
    /// not committed yet.
    pub waiting: bool,
}

// SAFETY: the pointers are to memory mappings owned alongside the ring (see
// `probes::net`), used from one thread at a time through `&mut self`.
unsafe impl Send for EventRing {}

impl EventRing {
    /// # Safety
    /// `slots_ptr` must point to `ncpus * slots` readable `EventSlot`s and
    /// `pos_ptr` to `ncpus` readable and writable `EventRingPos`, valid for
    /// the life of the ring; `slots` must be a power of two.
    pub unsafe fn new(
        slots_ptr: NonNull<EventSlot>,
        pos_ptr: NonNull<EventRingPos>,
        ncpus: usize,
        slots: u64,
    ) -> EventRing {
        assert!(slots.is_power_of_two(), "slots per CPU must be a power of two");
        EventRing {
            slots_ptr,
            pos_ptr,
            ncpus,
            slots,
            blocked: vec![(0, 0); ncpus],
            lost: 0,
            waiting: false,
        }
    }

    /// Calls `f` for every committed event, in order per CPU; returns how
    /// many. `give_up`: a slot still not committed is skipped and counted in
    /// [`lost`](Self::lost) (the last drain of a run, after
    /// [`waiting`](Self::waiting) stayed set for a while).
    pub fn drain(&mut self, give_up: bool, mut f: impl FnMut(&NetEvent)) -> u64 {
        let mut n = 0;
        self.waiting = false;
        for cpu in 0..self.ncpus {
            // SAFETY: cpu < ncpus (see `new`).
            let pos = unsafe { self.pos_ptr.as_ptr().add(cpu) };
            // SAFETY: valid, shared with the kernel: volatile.
            let head = unsafe { ptr::read_volatile(&raw const (*pos).head) };
            let mut tail = unsafe { ptr::read_volatile(&raw const (*pos).tail) };
            while tail < head {
                let index = cpu as u64 * self.slots + (tail & (self.slots - 1));
                // SAFETY: index < ncpus * slots.
                let slot = unsafe { self.slots_ptr.as_ptr().add(index as usize) };
                let commit = unsafe { ptr::read_volatile(&raw const (*slot).commit) };
                // The event's bytes are read after its commit (pairs with
                // the producer's store order).
                fence(Ordering::Acquire);
                if commit != tail + 1 {
                    let blocked = &mut self.blocked[cpu];
                    *blocked = if blocked.0 == tail { (tail, blocked.1 + 1) } else { (tail, 1) };
                    if give_up || blocked.1 >= STUCK_DRAINS {
                        self.lost += 1;
                        tail += 1;
                        continue;
                    }
                    self.waiting = true;
                    break;
                }
                let event = unsafe { ptr::read_volatile(&raw const (*slot).event) };
                f(&event);
                n += 1;
                tail += 1;
            }
            // Slots before `tail` are free again only once read.
            fence(Ordering::Release);
            // SAFETY: as above; only user space writes `tail`.
            unsafe { ptr::write_volatile(&raw mut (*pos).tail, tail) };
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ring in ordinary memory, with the kernel side's protocol.
    struct Fake {
        slots: Vec<EventSlot>,
        pos: Vec<EventRingPos>,
        per_cpu: u64,
    }

    impl Fake {
        fn new(ncpus: usize, per_cpu: u64) -> Fake {
            Fake {
                slots: vec![EventSlot::default(); ncpus * per_cpu as usize],
                pos: vec![EventRingPos::default(); ncpus],
                per_cpu,
            }
        }
        fn ring(&mut self) -> EventRing {
            // SAFETY: the vectors outlive every use in the tests and are not
            // reallocated while the ring is used.
            unsafe {
                EventRing::new(
                    NonNull::new(self.slots.as_mut_ptr()).unwrap(),
                    NonNull::new(self.pos.as_mut_ptr()).unwrap(),
                    self.pos.len(),
                    self.per_cpu,
                )
            }
        }
        /// Reserves the next position on `cpu`; `None` when full (like the
        /// kernel side, keeping the margin free).
        fn reserve(&mut self, cpu: usize) -> Option<u64> {
            let p = &mut self.pos[cpu];
            if p.head - p.tail >= self.per_cpu - agent_common::EVENT_RING_MARGIN.min(self.per_cpu) {
                return None;
            }
            p.head += 1;
            Some(p.head - 1)
        }
        fn commit(&mut self, cpu: usize, at: u64, seq: u32) {
            let slot = &mut self.slots[cpu * self.per_cpu as usize + (at % self.per_cpu) as usize];
            slot.event = NetEvent { seq, start_ns: 1, ..Default::default() };
            slot.commit = at + 1;
        }
        fn emit(&mut self, cpu: usize, seq: u32) -> bool {
            match self.reserve(cpu) {
                Some(at) => {
                    self.commit(cpu, at, seq);
                    true
                }
                None => false,
            }
        }
    }

    fn seqs(ring: &mut EventRing, give_up: bool) -> Vec<u32> {
        let mut out = Vec::new();
        ring.drain(give_up, |e| out.push(e.seq));
        out
    }

    #[test]
    fn every_committed_event_once_in_order_per_cpu() {
        let mut fake = Fake::new(2, 1024);
        for i in 0..10 {
            assert!(fake.emit(i % 2, i as u32));
        }
        let mut ring = fake.ring();
        let mut got = seqs(&mut ring, false);
        got.sort();
        assert_eq!(got, (0..10).collect::<Vec<_>>());
        assert!(seqs(&mut ring, false).is_empty(), "nothing is read twice");
        assert_eq!(fake.pos[0].tail, 5);
        assert_eq!(fake.pos[1].tail, 5);
    }

    #[test]
    fn wraps_around_many_laps_without_loss() {
        let mut fake = Fake::new(1, 1024);
        let mut ring = fake.ring();
        let mut next = 0u32;
        let mut seen = 0u32;
        for _ in 0..20 {
            for _ in 0..900 {
                assert!(fake.emit(0, next), "a drained ring has room");
                next += 1;
            }
            for s in seqs(&mut ring, false) {
                assert_eq!(s, seen, "in order, none skipped");
                seen += 1;
            }
        }
        assert_eq!(seen, next);
        assert_eq!(ring.lost, 0);
    }

    #[test]
    fn a_full_ring_refuses_until_drained() {
        let mut fake = Fake::new(1, 1024);
        let mut accepted = 0;
        while fake.emit(0, accepted) {
            accepted += 1;
        }
        assert_eq!(accepted as u64, 1024 - agent_common::EVENT_RING_MARGIN);
        let mut ring = fake.ring();
        assert_eq!(seqs(&mut ring, false).len() as u32, accepted);
        assert!(fake.emit(0, 0), "room again once read");
    }

    #[test]
    fn an_uncommitted_slot_waits_then_is_given_up() {
        let mut fake = Fake::new(1, 1024);
        assert!(fake.emit(0, 0));
        let open = fake.reserve(0).unwrap(); // reserved, not yet written
        assert!(fake.emit(0, 2));
        let mut ring = fake.ring();
        assert_eq!(seqs(&mut ring, false), vec![0], "stops before the open slot");
        assert!(ring.waiting);
        fake.commit(0, open, 1);
        assert_eq!(seqs(&mut ring, false), vec![1, 2], "resumes once committed");
        assert!(!ring.waiting);

        // One that is never committed: skipped after STUCK_DRAINS drains.
        fake.reserve(0).unwrap();
        assert!(fake.emit(0, 4));
        for _ in 1..STUCK_DRAINS {
            assert!(seqs(&mut ring, false).is_empty());
        }
        assert_eq!(seqs(&mut ring, false), vec![4]);
        assert_eq!(ring.lost, 1);
    }

    #[test]
    fn giving_up_skips_what_will_never_be_committed() {
        let mut fake = Fake::new(1, 1024);
        fake.reserve(0).unwrap();
        assert!(fake.emit(0, 7));
        let mut ring = fake.ring();
        assert!(seqs(&mut ring, false).is_empty());
        assert_eq!(seqs(&mut ring, true), vec![7]);
        assert_eq!(ring.lost, 1);
    }

    #[test]
    fn a_stale_commit_from_an_earlier_lap_is_not_taken() {
        let mut fake = Fake::new(1, 1024);
        let mut ring = fake.ring();
        for i in 0..1024 - agent_common::EVENT_RING_MARGIN as u32 {
            assert!(fake.emit(0, i));
        }
        assert_eq!(seqs(&mut ring, false).len(), 1008);
        // Position 1024 reuses slot 0, whose commit (1) is an earlier lap's.
        for i in 0..16 {
            assert!(fake.emit(0, i));
        }
        let at = fake.reserve(0).unwrap();
        assert_eq!(at % 1024, 0);
        assert_eq!(seqs(&mut ring, false).len(), 16, "slot 0 of the new lap is not ready");
    }

    #[test]
    fn ring_size_follows_the_budget() {
        assert_eq!(slots_per_cpu(2, 4 << 20), 16_384);
        assert_eq!(slots_per_cpu(4, 4 << 20), 16_384);
        assert_eq!(slots_per_cpu(8, 4 << 20), 8_192);
        assert_eq!(slots_per_cpu(256, 4 << 20), 1_024);
        assert_eq!(slots_per_cpu(1, u64::MAX), 16_384);
        assert_eq!(slots_per_cpu(0, 0), 1_024);
    }
}
