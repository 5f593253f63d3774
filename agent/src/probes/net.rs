//! Network probe: requests and upstream calls at the socket level.
//! Kernel side: `agent-ebpf/src/net/`. Definitions: `docs/metrics.md#requests`.

use std::path::Path;

use agent_common::{
    ConnState, EventRingPos, EventSlot, Milestones, NetEvent, NetStats, ParentRef,
    SYSCALL_ARG1_OFFSET, TracepointOffsets, conn_flags, direction, event_kind,
    names::{maps, programs},
    phase,
};
use anyhow::bail;
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, PerCpuArray, SkStorage},
};

use super::{
    adoption::{self, Adoption},
    hook::{self, Hook},
    mapping::Mapping,
    open_sockets, take_map,
};
use crate::{btf::Btf, event_ring::EventRing, procfs, requests::RequestLog, tracefs};

/// Memory for the request event ring, all CPUs together, at most: 64 bytes
/// a slot, at most 16 384 slots per CPU (1.6 s of 10 000 requests/s per CPU
/// between two drains, every 100 ms by default), so 2 MiB on a 2-CPU
/// machine and 16 384 slots per CPU up to 4 CPUs.
const EVENT_RING_BUDGET: u64 = 4 << 20;

/// The event ring's geometry: `(possible CPUs, log2 of slots per CPU)`.
/// Sized for every possible CPU: a program indexes it with the CPU it runs on.
pub fn event_ring_shape() -> anyhow::Result<(u32, u32)> {
    let ncpus = aya::util::nr_cpus().map_err(|(path, e)| anyhow::anyhow!("{path}: {e}"))? as u32;
    let slots = crate::event_ring::slots_per_cpu(ncpus, EVENT_RING_BUDGET);
    Ok((ncpus, slots.trailing_zeros()))
}

/// Sizes the event ring's maps before load (they are declared with one entry).
pub fn size_event_ring(loader: &mut EbpfLoader<'_>, (ncpus, shift): (u32, u32)) {
    loader.map_max_entries(maps::NET_EVENTS, ncpus << shift);
    loader.map_max_entries(maps::NET_EVENTS_POS, ncpus);
}

/// Fills the offsets of every field the network programs read.
pub fn offsets(tracefs_root: &Path, btf: &Btf, o: &mut TracepointOffsets) -> anyhow::Result<()> {
    // The socket hooks pass the `struct sock *`; adopting a socket opened
    // before attach needs its family, protocol and local port.
    o.sock_family = btf.field_offset("sock", &["__sk_common", "skc_family"])?;
    o.sock_protocol = btf.field_offset("sock", &["sk_protocol"])?;
    o.sock_num = btf.field_offset("sock", &["__sk_common", "skc_num"])?;
    o.sock_bpf_storage = btf.field_offset("sock", &["sk_bpf_storage"])?;
    // `tcp_sendmsg_locked` follows `msg->msg_iter` to the bytes being sent.
    o.msg_iter_type = btf.field_offset("msghdr", &["msg_iter", "iter_type"])?;
    o.msg_iter_iov_offset = btf.field_offset("msghdr", &["msg_iter", "iov_offset"])?;
    o.msg_iter_ubuf = btf.field_offset("msghdr", &["msg_iter", "ubuf"])?;
    let iov = btf.field_offset("msghdr", &["msg_iter", "__iov"])?;
    if iov != o.msg_iter_ubuf {
        bail!(
            "this kernel's struct iov_iter keeps __iov (at {iov}) apart from ubuf (at {}): \
             perf-agent reads either from one place and does not support it",
            o.msg_iter_ubuf
        );
    }
    o.iovec_base = btf.field_offset("iovec", &["iov_base"])?;
    o.msg_iter_count = btf.field_offset("msghdr", &["msg_iter", "count"])?;
    // The read hooks read their syscall's second argument at a constant
    // offset (see `SYSCALL_ARG1_OFFSET`): check that this kernel agrees.
    for (name, field) in READ_HOOKS {
        let event = format!("syscalls:{name}");
        let at = tracefs::read_format(tracefs_root, "syscalls", name)?.offset(&event, field, 8)?;
        if at != SYSCALL_ARG1_OFFSET {
            bail!(
                "{event}: field {field} is at offset {at}, not {SYSCALL_ARG1_OFFSET} like on every \
                 kernel perf-agent knows; this kernel's syscall tracepoints are not supported"
            );
        }
    }
    Ok(())
}

/// BTF tracepoints of the network family, attached in this order (the state
/// tracker first, so connections are classified before data flows).
const BTF_HOOKS: [&str; 5] = [
    programs::INET_SOCK_SET_STATE,
    programs::TCP_RCV_SPACE_ADJUST,
    programs::TCP_SENDMSG_LOCKED,
    programs::TCP_RECEIVE_RESET,
    programs::TCP_SEND_RESET,
];

/// Read-side syscall hooks (program = tracepoint name, buffer field): they
/// fire for every such system call of the machine, so they are attached only
/// when a request path must be recognised, and detached once the milestones
/// they serve are reached.
const READ_HOOKS: [(&str, &str); 4] = [
    (programs::SYS_ENTER_READ, "buf"),
    (programs::SYS_ENTER_RECVFROM, "ubuf"),
    (programs::SYS_ENTER_READV, "vec"),
    (programs::SYS_ENTER_RECVMSG, "msg"),
];

/// Counters of the network probes, summed over CPUs.
#[derive(Clone, Copy, Debug, Default)]
pub struct NetReading {
    pub stats: NetStats,
    pub milestones: Milestones,
}

/// The startup milestones the read hooks serve and that are still to come:
/// the first 2xx response to a request for the health or ready path (as
/// `startup.rs` defines them).
#[derive(Clone, Copy, Debug, Default)]
struct PathsAwaited {
    health: bool,
    ready: bool,
}

impl PathsAwaited {
    fn note(&mut self, e: &NetEvent) {
        if e.kind != event_kind::REQUEST || !(200..300).contains(&e.status) {
            return;
        }
        if e.flags & conn_flags::PATH_HEALTH != 0 {
            self.health = false;
        }
        if e.flags & conn_flags::PATH_READY != 0 {
            self.ready = false;
        }
    }

    fn none(&self) -> bool {
        !self.health && !self.ready
    }
}

pub struct NetProbe {
    // Declared before the mappings it points into: dropped first.
    events: EventRing,
    _event_slots: Mapping,
    _event_positions: Mapping,
    stats: PerCpuArray<MapData, NetStats>,
    milestones: Array<MapData, Milestones>,
    conns: SkStorage<MapData, ConnState>,
    upstream_wait: HashMap<MapData, ParentRef, u64>,
    read_buf: HashMap<MapData, u32, u64>,
    /// Entry `port` is the listener's tgid (the owner of the connections
    /// accepted there), 0 when no target listens on it.
    listen_ports: Array<MapData, u32>,
    /// Storage for the connections targets had before they were found.
    adoption: Adoption,
    /// Read hooks attached and milestones they still serve.
    paths_awaited: Option<PathsAwaited>,
}

impl NetProbe {
    /// `running`: a process already running (its listening ports are seeded
    /// from /proc, its connections adopted). `awaiting_target`: a target
    /// will be found later (armed at its exec): until then the programs
    /// adopt on their own. `paths`: (health, ready) watched; when either
    /// is, the read hooks that match request paths are attached.
    pub fn attach(
        ebpf: &mut Ebpf,
        kernel_btf: &aya::Btf,
        running: Option<u32>,
        awaiting_target: bool,
        paths: (bool, bool),
        (ncpus, shift): (u32, u32),
    ) -> anyhow::Result<NetProbe> {
        let slots_per_cpu = 1u64 << shift;
        let event_slots = Mapping::of_array(
            take_map(ebpf, maps::NET_EVENTS)?,
            (u64::from(ncpus) * slots_per_cpu) as usize * size_of::<EventSlot>(),
        )?;
        let event_positions = Mapping::of_array(
            take_map(ebpf, maps::NET_EVENTS_POS)?,
            ncpus as usize * size_of::<EventRingPos>(),
        )?;
        // SAFETY: the mappings hold ncpus << shift slots and ncpus positions
        // (the maps were sized so before load) and live as long as the ring.
        let events = unsafe {
            EventRing::new(
                event_slots.ptr.cast(),
                event_positions.ptr.cast(),
                ncpus as usize,
                slots_per_cpu,
            )
        };
        let listen_ports = seed_listen_ports(take_map(ebpf, maps::LISTEN_PORTS)?, running)?;
        let adoption =
            Adoption::open(take_map(ebpf, maps::ADOPTION_OPEN)?.try_into()?, awaiting_target)?;
        for program in BTF_HOOKS {
            hook::attach(ebpf, program, Hook::BtfTracePoint { name: program, btf: kernel_btf })?;
        }
        let paths_awaited =
            (paths.0 || paths.1).then_some(PathsAwaited { health: paths.0, ready: paths.1 });
        if paths_awaited.is_some() {
            for (program, _) in READ_HOOKS {
                hook::attach(
                    ebpf,
                    program,
                    Hook::TracePoint { category: "syscalls", name: program },
                )?;
            }
        }
        let mut net = NetProbe {
            events,
            _event_slots: event_slots,
            _event_positions: event_positions,
            stats: take_map(ebpf, maps::NET_STATS)?.try_into()?,
            milestones: take_map(ebpf, maps::MILESTONES)?.try_into()?,
            conns: take_map(ebpf, maps::CONNS)?.try_into()?,
            upstream_wait: take_map(ebpf, maps::UPSTREAM_WAIT)?.try_into()?,
            read_buf: take_map(ebpf, maps::READ_BUF)?.try_into()?,
            listen_ports,
            adoption,
            paths_awaited,
        };
        if let Some(pid) = running {
            net.adopt_connections(pid);
        }
        Ok(net)
    }

    /// Moves every event waiting in the event ring into `log`; returns how
    /// many.
    pub fn drain(&mut self, log: &mut RequestLog) -> u64 {
        self.drain_where(log, false, |_| true)
    }

    /// [`drain`](Self::drain), keeping only the events `keep` accepts;
    /// `give_up` as in `EventRing::drain`.
    fn drain_where(
        &mut self,
        log: &mut RequestLog,
        give_up: bool,
        mut keep: impl FnMut(&NetEvent) -> bool,
    ) -> u64 {
        let paths = &mut self.paths_awaited;
        self.events.drain(give_up, |event| {
            if !keep(event) {
                return;
            }
            if let Some(p) = paths.as_mut() {
                p.note(event);
            }
            log.push(event)
        })
    }

    /// Hands every event waiting in the event ring to `f` (node mode, which
    /// sorts them by owner); returns how many.
    pub fn drain_events(&mut self, f: impl FnMut(&NetEvent)) -> u64 {
        self.events.drain(false, f)
    }

    /// A target was found (armed at its exec, or found running in node
    /// mode): the ports it listens on now become its own, and its
    /// connections are adopted (`adoption`).
    pub fn target_found(&mut self, pid: u32) {
        match procfs::listening_ports(pid) {
            Ok(ports) => {
                for port in ports {
                    if let Err(e) = self.listen_ports.set(u32::from(port), pid, 0) {
                        eprintln!("perf-agent: warning: noting port {port} of PID {pid}: {e}");
                    }
                }
            }
            Err(e) => eprintln!(
                "perf-agent: warning: cannot read the listening sockets of PID {pid} ({e}): \
                 connections to them count once it uses them"
            ),
        }
        self.adopt_connections(pid);
    }

    /// Gives `pid`'s connections storage (see `adoption`); a failure is a
    /// warning: the programs still adopt while the window is open.
    fn adopt_connections(&mut self, pid: u32) {
        if let Err(e) = self.adoption.target_found(pid, &mut self.conns, &self.listen_ports) {
            eprintln!(
                "perf-agent: warning: {e:#}: connections PID {pid} opened before attach count \
                 only if used within {} s",
                adoption::WINDOW.as_secs()
            );
        }
    }

    /// Runs the adoption's second scans that are due, closing the window
    /// once none is left (every interval).
    pub fn close_adoption_when_due(&mut self) {
        if let Err(e) = self.adoption.close_when_due(&mut self.conns, &self.listen_ports) {
            eprintln!("perf-agent: warning: adopting connections: {e:#}");
        }
    }

    /// Once every milestone the read hooks serve has been reached, detaches
    /// them (they tax every read system call of the machine) and forgets
    /// the buffers they recorded, so no later request is matched against a
    /// stale one. Returns true when it detached them now.
    pub fn detach_read_hooks_when_done(&mut self, ebpf: &mut Ebpf) -> anyhow::Result<bool> {
        if !self.paths_awaited.is_some_and(|p| p.none()) {
            return Ok(false);
        }
        self.paths_awaited = None;
        for (program, _) in READ_HOOKS {
            hook::detach_tracepoint(ebpf, program)?;
        }
        let tids: Vec<u32> = self.read_buf.keys().filter_map(Result::ok).collect();
        for tid in tids {
            let _ = self.read_buf.remove(&tid); // gone already: fine
        }
        Ok(true)
    }

    /// The last drain of a run: an event whose program is still writing it
    /// (microseconds) is waited for, up to 20 ms; a slot still open then is
    /// counted lost. `keep` as in [`drain_where`](Self::drain_where).
    fn drain_last_where(
        &mut self,
        log: &mut RequestLog,
        mut keep: impl FnMut(&NetEvent) -> bool,
    ) -> u64 {
        let mut n = self.drain_where(log, false, &mut keep);
        for _ in 0..20 {
            if !self.events.waiting {
                return n;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
            n += self.drain_where(log, false, &mut keep);
        }
        n + self.drain_where(log, true, keep)
    }

    /// [`drain_last_where`](Self::drain_last_where) keeping every event.
    pub fn drain_last(&mut self, log: &mut RequestLog) -> u64 {
        self.drain_last_where(log, |_| true)
    }

    pub fn read(&self) -> anyhow::Result<NetReading> {
        let mut r = NetReading::default();
        for s in self.stats.get(&0, 0)?.iter() {
            r.stats.accumulate(s);
        }
        // Reserved but never committed: lost like a full ring's.
        r.stats.events_dropped += self.events.lost;
        r.milestones = self.milestones.get(&0, 0)?;
        Ok(r)
    }

    /// At the end of a run, after [`drain_last`](Self::drain_last):
    /// responses already written on connections still open are complete as
    /// far as the target is concerned; report them (flagged `AT_END`).
    /// Requests still being read are in flight: counted. The connections
    /// are the target's open sockets (`pid`'s descriptors), each read from
    /// its socket storage.
    ///
    /// A connection the target closes meanwhile ends its exchange in the
    /// kernel after its descriptor is gone (`close` drops the descriptor,
    /// then the socket): that event reaches the ring after the last drain
    /// and the descriptor is not found here. So the ring is drained once
    /// more, keeping the exchanges that ended before this scan started and
    /// were not reported from storage (the same start and number).
    pub fn drain_open_exchanges(&mut self, pid: u32, log: &mut RequestLog) -> u64 {
        let scan_ns = crate::clock::monotonic_ns();
        let conns = match open_sockets::states(pid, &self.conns) {
            Ok(conns) => conns,
            Err(e) => {
                eprintln!(
                    "perf-agent: warning: exchanges still open at the end are not reported: {e:#}"
                );
                return 0;
            }
        };
        let mut in_flight = 0;
        let mut reported = std::collections::HashSet::new();
        for c in conns {
            match c.phase {
                phase::RESPONSE => {
                    let e = self.open_exchange(&c);
                    reported.insert((e.start_ns, e.seq));
                    log.push(&e);
                }
                phase::REQUEST => in_flight += 1,
                _ => {}
            }
        }
        self.drain_last_where(log, |e| {
            e.end_ns <= scan_ns && !reported.contains(&(e.start_ns, e.seq))
        });
        in_flight
    }

    /// The event `c`'s exchange would give if it ended now.
    fn open_exchange(&self, c: &ConnState) -> NetEvent {
        let inbound = c.direction == direction::INBOUND;
        let upstream_ns = if inbound {
            let key = ParentRef { sk: c.sk, seq: c.seq, _pad: 0 };
            self.upstream_wait.get(&key, 0).unwrap_or(0)
        } else {
            0
        };
        NetEvent {
            start_ns: c.start_ns,
            first_response_ns: c.first_response_ns,
            end_ns: c.last_response_ns,
            upstream_ns,
            bytes_in: 0,
            bytes_out: c.bytes_out.min(u32::MAX.into()) as u32,
            kind: if inbound { event_kind::REQUEST } else { event_kind::UPSTREAM_CALL },
            status: c.status,
            flags: c.flags | conn_flags::AT_END,
            seq: c.seq,
        }
    }
}

/// Ports the target listened on before attach (in attach mode); later ones
/// the kernel side learns itself.
fn seed_listen_ports(map: Map, running: Option<u32>) -> anyhow::Result<Array<MapData, u32>> {
    let mut listen_ports: Array<MapData, u32> = map.try_into()?;
    let Some(pid) = running else { return Ok(listen_ports) };
    let ports = procfs::listening_ports(pid).unwrap_or_else(|e| {
        eprintln!(
            "perf-agent: warning: cannot read the sockets of PID {pid} in /proc/{pid}/fd ({e}; \
             another user's process needs CAP_SYS_PTRACE): its connections will count as \
             opened before attach"
        );
        Vec::new()
    });
    for port in ports {
        // The value is the listener's tgid: the owner of accepted connections.
        listen_ports.set(u32::from(port), pid, 0)?;
    }
    Ok(listen_ports)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A literal with every field: adding a field to `NetStats` breaks this
    /// test until it is listed here, and `accumulate` must then sum it too.
    fn distinct() -> NetStats {
        NetStats {
            events_dropped: 1,
            conns_untracked: 2,
            inserts_failed: 4,
            inbound_conns: 8,
            outbound_conns: 16,
            adopted_conns: 32,
            inbound_resets: 64,
            outbound_resets: 128,
            unmatched_writes: 256,
            deliveries_dropped: 512,
        }
    }

    #[test]
    fn per_cpu_counters_are_summed_field_by_field() {
        let mut total = distinct();
        total.accumulate(&distinct());
        let once = distinct();
        assert_eq!(total.events_dropped, 2 * once.events_dropped);
        assert_eq!(total.conns_untracked, 2 * once.conns_untracked);
        assert_eq!(total.inserts_failed, 2 * once.inserts_failed);
        assert_eq!(total.inbound_conns, 2 * once.inbound_conns);
        assert_eq!(total.outbound_conns, 2 * once.outbound_conns);
        assert_eq!(total.adopted_conns, 2 * once.adopted_conns);
        assert_eq!(total.inbound_resets, 2 * once.inbound_resets);
        assert_eq!(total.outbound_resets, 2 * once.outbound_resets);
        assert_eq!(total.unmatched_writes, 2 * once.unmatched_writes);
        assert_eq!(total.deliveries_dropped, 2 * once.deliveries_dropped);
        // Losses: events dropped, connections untracked, inserts failed.
        assert_eq!(once.lost(), 1 + 2 + 4);
    }

    #[test]
    fn read_hooks_wait_for_a_2xx_on_every_watched_path() {
        let event = |status, flags| NetEvent {
            kind: event_kind::REQUEST,
            status,
            flags,
            ..Default::default()
        };
        let mut awaited = PathsAwaited { health: true, ready: true };
        awaited.note(&event(503, conn_flags::PATH_HEALTH));
        awaited.note(&event(200, 0));
        assert!(!awaited.none(), "no 2xx on a watched path yet");
        awaited.note(&event(204, conn_flags::PATH_HEALTH));
        assert!(!awaited.none(), "ready still awaited");
        awaited.note(&event(200, conn_flags::PATH_READY | conn_flags::AT_END));
        assert!(awaited.none());
    }
}
