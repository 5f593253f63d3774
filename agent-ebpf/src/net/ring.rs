//! The producer side of the request event ring (consumer:
//! `agent/src/event_ring.rs`; layout: `agent_common::EventSlot`).

use core::intrinsics::AtomicOrdering;

use agent_common::{
    ConnState, EVENT_RING_MARGIN, EventRingPos, EventSlot, NetEvent, NetStats, event_kind,
};
use aya_ebpf::{
    bindings::BPF_F_MMAPABLE, helpers::bpf_get_smp_processor_id, macros::map, maps::Array,
};

use super::stats;
use crate::{access::read_const, config::EVENT_RING_SHIFT};

/// The event ring: `ncpus << EVENT_RING_SHIFT` slots (user space sets the
/// size before load and maps it); see `agent_common::EventSlot`.
#[map]
static NET_EVENTS: Array<EventSlot> = Array::with_max_entries(1, BPF_F_MMAPABLE);
/// Each CPU's producer and consumer positions in [`NET_EVENTS`].
#[map]
static NET_EVENTS_POS: Array<EventRingPos> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// Sends a finished request or call to user space through this CPU's part
/// of the event ring. Never wakes the reader; a full ring loses the event
/// and counts it.
#[inline(always)]
pub(super) fn emit(kind: u32, c: &ConnState, end_ns: u64, upstream_ns: u64, extra_flags: u32) {
    emit_event(&NetEvent {
        start_ns: c.start_ns,
        first_response_ns: c.first_response_ns,
        end_ns,
        upstream_ns,
        bytes_in: 0,
        bytes_out: saturate(c.bytes_out),
        kind,
        status: c.status,
        flags: c.flags | extra_flags,
        seq: c.seq,
    });
}

/// Sends `event` as it is (see [`emit`]).
#[inline(always)]
pub(super) fn emit_event(event: &NetEvent) {
    let Some(s) = stats() else { return };
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let shift = *read_const(&EVENT_RING_SHIFT) & 31;
    let slots = 1u64 << shift;
    // A delivery (issue 14) is a request's second event: deliveries may
    // fill half of the ring only, so requests keep the other half, and a
    // lost delivery is counted apart (it loses no request).
    let delivery = event.kind == event_kind::DELIVERY;
    let dropped = |s: &mut NetStats| {
        if delivery {
            s.deliveries_dropped += 1;
        } else {
            s.events_dropped += 1;
        }
    };
    let Some(pos) = NET_EVENTS_POS.get_ptr_mut(cpu) else {
        dropped(s);
        return;
    };
    // Fullness first: user space may still be reading the slots behind
    // `tail`. The margin covers programs nesting on this CPU between this
    // check and the reservation below.
    let (head, tail) =
        unsafe { (core::ptr::read_volatile(&(*pos).head), core::ptr::read_volatile(&(*pos).tail)) };
    let room = if delivery { slots / 2 } else { slots.saturating_sub(EVENT_RING_MARGIN) };
    if head.wrapping_sub(tail) >= room {
        dropped(s);
        return;
    }
    // Atomic: a softirq (a TCP close) or a preempting task can emit on this
    // CPU in the middle of this one; each gets its own position.
    // (`AtomicU64::fetch_add` is not offered on BPF, whose target claims no
    // compare-and-swap. SeqCst, not Relaxed: LLVM 22's BPF backend lowers a
    // relaxed add to the non-fetching `lock +=` even when its result is used,
    // and then reads the old value from the unchanged source register; a
    // sequentially consistent one becomes `atomic64_fetch_add` (check with
    // `bpftool prog dump xlated`). On x86-64 both are one `lock xadd`.)
    let at = unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(
            &raw mut (*pos).head,
            1,
        )
    };
    let index = ((cpu as u64) << shift) | (at & (slots - 1));
    // Always present when user space sized the ring for every possible CPU.
    let Some(slot) = NET_EVENTS.get_ptr_mut(index as u32) else {
        dropped(s);
        return;
    };
    // Volatile stores, event then commit: the compiler keeps volatile
    // accesses in order, and x86-64 does not reorder stores with stores, so
    // user space never sees a commit before its event. (A compiler fence
    // would say the same, but the BPF backend cannot lower one.)
    unsafe {
        core::ptr::write_volatile(&raw mut (*slot).event, *event);
        core::ptr::write_volatile(&raw mut (*slot).commit, at + 1);
    }
}

#[inline(always)]
pub(super) fn saturate(bytes: u64) -> u32 {
    if bytes > u32::MAX as u64 { u32::MAX } else { bytes as u32 }
}
