//! Network probe: requests and upstream calls at the socket level.
//! Kernel side: `agent-ebpf/src/net.rs`. Definitions: `docs/metrics.md#requests`.

use std::path::Path;

use agent_common::{
    ConnState, Milestones, NetEvent, NetStats, TracepointOffsets, conn_flags, direction,
    event_kind, phase,
};
use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{RawTracePoint, TracePoint},
};

use super::take_map;
use crate::{btf::Btf, procfs, requests::RequestLog, tracefs};

/// Fills the offsets of every field the network programs read.
pub fn offsets(tracefs_root: &Path, btf: &Btf, o: &mut TracepointOffsets) -> anyhow::Result<()> {
    // The raw socket tracepoints pass the `struct sock *`; adopting a socket
    // opened before attach needs its family and protocol.
    o.sock_family = btf.field_offset("sock", &["__sk_common", "skc_family"])?;
    o.sock_protocol = btf.field_offset("sock", &["sk_protocol"])?;
    o.sock_num = btf.field_offset("sock", &["__sk_common", "skc_num"])?;
    let ev = "sock:inet_sock_set_state";
    let set_state = tracefs::read_format(tracefs_root, "sock", "inet_sock_set_state")?;
    o.set_state_skaddr = set_state.offset(ev, "skaddr", 8)?;
    o.set_state_oldstate = set_state.offset(ev, "oldstate", 4)?;
    o.set_state_newstate = set_state.offset(ev, "newstate", 4)?;
    o.set_state_sport = set_state.offset(ev, "sport", 2)?;
    o.set_state_protocol = set_state.offset(ev, "protocol", 2)?;
    o.receive_reset_skaddr = tracefs::read_format(tracefs_root, "tcp", "tcp_receive_reset")?
        .offset("tcp:tcp_receive_reset", "skaddr", 8)?;
    o.send_reset_skaddr = tracefs::read_format(tracefs_root, "tcp", "tcp_send_reset")?.offset(
        "tcp:tcp_send_reset",
        "skaddr",
        8,
    )?;
    let sys = |name: &str, field: &str| -> anyhow::Result<u32> {
        tracefs::read_format(tracefs_root, "syscalls", name)?.offset(
            &format!("syscalls:{name}"),
            field,
            8,
        )
    };
    o.write_buf = sys("sys_enter_write", "buf")?;
    o.sendto_buf = sys("sys_enter_sendto", "buff")?;
    o.writev_vec = sys("sys_enter_writev", "vec")?;
    o.sendmsg_msg = sys("sys_enter_sendmsg", "msg")?;
    o.read_buf = sys("sys_enter_read", "buf")?;
    o.recvfrom_buf = sys("sys_enter_recvfrom", "ubuf")?;
    o.readv_vec = sys("sys_enter_readv", "vec")?;
    o.recvmsg_msg = sys("sys_enter_recvmsg", "msg")?;
    Ok(())
}

/// Counters of the network probes, summed over CPUs.
#[derive(Clone, Copy, Debug, Default)]
pub struct NetReading {
    pub stats: NetStats,
    pub milestones: Milestones,
}

pub struct NetProbe {
    events: RingBuf<MapData>,
    stats: PerCpuArray<MapData, NetStats>,
    milestones: Array<MapData, Milestones>,
    conns: HashMap<MapData, u64, ConnState>,
    _listen_ports: HashMap<MapData, u32, u32>,
}

/// (program, tracepoint category, tracepoint name). The state tracker comes
/// first so connections are classified before data flows.
const PROGRAMS: [(&str, &str, &str); 7] = [
    ("inet_sock_set_state", "sock", "inet_sock_set_state"),
    ("tcp_receive_reset", "tcp", "tcp_receive_reset"),
    ("tcp_send_reset", "tcp", "tcp_send_reset"),
    ("sys_enter_write", "syscalls", "sys_enter_write"),
    ("sys_enter_sendto", "syscalls", "sys_enter_sendto"),
    ("sys_enter_writev", "syscalls", "sys_enter_writev"),
    ("sys_enter_sendmsg", "syscalls", "sys_enter_sendmsg"),
];

/// Read-side syscall hooks: they fire on every read of the target, so they
/// are attached only when a request path must be recognised.
const READ_PROGRAMS: [(&str, &str, &str); 4] = [
    ("sys_enter_read", "syscalls", "sys_enter_read"),
    ("sys_enter_recvfrom", "syscalls", "sys_enter_recvfrom"),
    ("sys_enter_readv", "syscalls", "sys_enter_readv"),
    ("sys_enter_recvmsg", "syscalls", "sys_enter_recvmsg"),
];

impl NetProbe {
    /// `running`: a process already running (its listening ports are seeded
    /// from /proc). `with_paths`: attach the read hooks that match request
    /// paths (only when `--health-path`/`--ready-path` asked for it).
    pub fn attach(
        ebpf: &mut Ebpf,
        running: Option<u32>,
        with_paths: bool,
    ) -> anyhow::Result<NetProbe> {
        let events: RingBuf<MapData> = take_map(ebpf, "NET_EVENTS")?.try_into()?;
        let stats: PerCpuArray<MapData, NetStats> = take_map(ebpf, "NET_STATS")?.try_into()?;
        let milestones: Array<MapData, Milestones> = take_map(ebpf, "MILESTONES")?.try_into()?;
        let conns: HashMap<MapData, u64, ConnState> = take_map(ebpf, "CONNS")?.try_into()?;
        let mut listen_ports: HashMap<MapData, u32, u32> =
            take_map(ebpf, "LISTEN_PORTS")?.try_into()?;
        // Ports the target listened on before attach; later ones the kernel
        // side learns itself.
        if let Some(pid) = running {
            let ports = match procfs::listening_ports(pid) {
                Ok(ports) => ports,
                Err(e) => {
                    eprintln!(
                        "perf-agent: warning: cannot read the sockets of PID {pid} in \
                         /proc/{pid}/fd ({e}; another user's process needs CAP_SYS_PTRACE): \
                         its connections will count as opened before attach"
                    );
                    Vec::new()
                }
            };
            for port in ports {
                listen_ports.insert(u32::from(port), 1, 0)?;
            }
        }
        // The hot ones: raw tracepoints (no trace record built per call).
        for name in ["sock_recv_length", "sock_send_length"] {
            let prog: &mut RawTracePoint = ebpf
                .program_mut(name)
                .with_context(|| format!("eBPF object has no program {name}"))?
                .try_into()?;
            prog.load().with_context(|| format!("loading {name}"))?;
            prog.attach(name).with_context(|| format!("attaching to raw tracepoint {name}"))?;
        }
        let read_hooks = if with_paths { &READ_PROGRAMS[..] } else { &[] };
        for (program, category, name) in PROGRAMS.iter().chain(read_hooks) {
            let prog: &mut TracePoint = ebpf
                .program_mut(program)
                .with_context(|| format!("eBPF object has no program {program}"))?
                .try_into()?;
            prog.load().with_context(|| format!("loading {program}"))?;
            prog.attach(category, name)
                .with_context(|| format!("attaching to tracepoint {category}:{name}"))?;
        }
        Ok(NetProbe { events, stats, milestones, conns, _listen_ports: listen_ports })
    }

    /// Moves every event waiting in the ring buffer into `log`; returns how many.
    pub fn drain(&mut self, log: &mut RequestLog) -> u64 {
        let mut n = 0;
        while let Some(item) = self.events.next() {
            if item.len() >= size_of::<NetEvent>() {
                // SAFETY: the kernel side writes exactly a NetEvent; read_unaligned
                // because ring buffer records are only 8-byte aligned.
                let event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<NetEvent>()) };
                log.push(&event);
                n += 1;
            }
        }
        n
    }

    pub fn read(&self) -> anyhow::Result<NetReading> {
        let mut r = NetReading::default();
        for s in self.stats.get(&0, 0)?.iter() {
            let t = &mut r.stats;
            t.events_submitted += s.events_submitted;
            t.events_dropped += s.events_dropped;
            t.conns_untracked += s.conns_untracked;
            t.inbound_conns += s.inbound_conns;
            t.outbound_conns += s.outbound_conns;
            t.adopted_conns += s.adopted_conns;
            t.inbound_resets += s.inbound_resets;
            t.outbound_resets += s.outbound_resets;
            t.unmatched_writes += s.unmatched_writes;
        }
        r.milestones = self.milestones.get(&0, 0)?;
        Ok(r)
    }

    /// At the end of a run: responses already written on connections still
    /// open are complete as far as the target is concerned; report them
    /// (flagged `AT_END`). Requests still being read are in flight: counted.
    pub fn drain_open_exchanges(&self, log: &mut RequestLog) -> u64 {
        let mut in_flight = 0;
        for entry in self.conns.iter() {
            let Ok((sk, c)) = entry else { continue };
            match c.phase {
                phase::RESPONSE => log.push(&NetEvent {
                    start_ns: c.start_ns,
                    first_response_ns: c.first_response_ns,
                    end_ns: c.last_response_ns,
                    upstream_ns: c.upstream_ns,
                    bytes_in: c.bytes_in,
                    bytes_out: c.bytes_out,
                    sk,
                    kind: if c.direction == direction::INBOUND {
                        event_kind::REQUEST
                    } else {
                        event_kind::UPSTREAM_CALL
                    },
                    status: c.status,
                    flags: c.flags | conn_flags::AT_END,
                    seq: c.seq,
                }),
                phase::REQUEST => in_flight += 1,
                _ => {}
            }
        }
        in_flight
    }
}
