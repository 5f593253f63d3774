//! Delivery probe (issue 14): queue time before the target reads a request
//! and drain time until the peer acknowledges its response, sent as
//! `event_kind::DELIVERY` events through the request event ring. Kernel
//! side: `agent-ebpf/src/net/delivery.rs`; definitions:
//! `docs/metrics.md#delivery-queue-drain-accept-wait`.

use agent_common::{TracepointOffsets, names::programs};
use aya::Ebpf;

use super::hook::{self, Hook};
use crate::btf::Btf;

/// Its BTF tracepoints: each fires for every socket of the machine and
/// filters with one socket-storage lookup (only the target's have one).
const BTF_HOOKS: [&str; 3] =
    [programs::SK_DATA_READY, programs::TCP_PROBE, programs::TCP_RETRANSMIT_SKB];

/// Fills the `tcp_sock` and segment fields the programs read.
pub fn offsets(btf: &Btf, o: &mut TracepointOffsets) -> anyhow::Result<()> {
    o.tcp_write_seq = btf.field_offset("tcp_sock", &["write_seq"])?;
    o.tcp_snd_nxt = btf.field_offset("tcp_sock", &["snd_nxt"])?;
    o.tcp_snd_wnd = btf.field_offset("tcp_sock", &["snd_wnd"])?;
    o.tcp_mss_cache = btf.field_offset("tcp_sock", &["mss_cache"])?;
    // The ACK of an incoming segment: TCP's control block lives in `skb->cb`.
    o.skb_ack_seq =
        btf.field_offset("sk_buff", &["cb"])? + btf.field_offset("tcp_skb_cb", &["ack_seq"])?;
    Ok(())
}

/// Attaches the delivery hooks (after the network family's, so the
/// connections they follow are already tracked).
pub fn attach(ebpf: &mut Ebpf, kernel_btf: &aya::Btf) -> anyhow::Result<()> {
    for program in BTF_HOOKS {
        hook::attach(ebpf, program, Hook::BtfTracePoint { name: program, btf: kernel_btf })?;
    }
    Ok(())
}
