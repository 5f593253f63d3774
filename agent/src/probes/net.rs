//! Network probe: requests and upstream calls at the socket level.
//! Kernel side: `agent-ebpf/src/net.rs`. Definitions: `docs/metrics.md#requests`.

use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::ptr::NonNull;

use agent_common::{
    ConnState, EventRingPos, EventSlot, Milestones, NetEvent, NetStats, SYSCALL_ARG1_OFFSET,
    TracepointOffsets, conn_flags, direction, event_kind, phase,
};
use anyhow::{Context as _, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, PerCpuArray},
    programs::{BtfTracePoint, RawTracePoint, TracePoint},
};

use super::take_map;
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
    loader.map_max_entries("NET_EVENTS", ncpus << shift);
    loader.map_max_entries("NET_EVENTS_POS", ncpus);
}

/// Fills the offsets of every field the network programs read.
pub fn offsets(tracefs_root: &Path, btf: &Btf, o: &mut TracepointOffsets) -> anyhow::Result<()> {
    // The raw socket tracepoints pass the `struct sock *`; adopting a socket
    // opened before attach needs its family and protocol.
    o.sock_family = btf.field_offset("sock", &["__sk_common", "skc_family"])?;
    o.sock_protocol = btf.field_offset("sock", &["sk_protocol"])?;
    o.sock_num = btf.field_offset("sock", &["__sk_common", "skc_num"])?;
    o.receive_reset_skaddr = tracefs::read_format(tracefs_root, "tcp", "tcp_receive_reset")?
        .offset("tcp:tcp_receive_reset", "skaddr", 8)?;
    o.send_reset_skaddr = tracefs::read_format(tracefs_root, "tcp", "tcp_send_reset")?.offset(
        "tcp:tcp_send_reset",
        "skaddr",
        8,
    )?;
    // The buffer hooks read their syscall's second argument at a constant
    // offset (see `SYSCALL_ARG1_OFFSET`): check that this kernel agrees.
    for (name, field) in [
        ("sys_enter_write", "buf"),
        ("sys_enter_sendto", "buff"),
        ("sys_enter_writev", "vec"),
        ("sys_enter_sendmsg", "msg"),
        ("sys_enter_read", "buf"),
        ("sys_enter_recvfrom", "ubuf"),
        ("sys_enter_readv", "vec"),
        ("sys_enter_recvmsg", "msg"),
    ] {
        let event = format!("syscalls:{name}");
        let at = tracefs::read_format(tracefs_root, "syscalls", name)?.offset(&event, field, 8)?;
        if at != SYSCALL_ARG1_OFFSET {
            anyhow::bail!(
                "{event}: field {field} is at offset {at}, not {SYSCALL_ARG1_OFFSET} like on every \
                 kernel perf-agent knows; this kernel's syscall tracepoints are not supported"
            );
        }
    }
    Ok(())
}

/// Counters of the network probes, summed over CPUs.
#[derive(Clone, Copy, Debug, Default)]
pub struct NetReading {
    pub stats: NetStats,
    pub milestones: Milestones,
}

pub struct NetProbe {
    // Declared before the mappings it points into: dropped first.
    events: EventRing,
    _event_slots: Mapping,
    _event_positions: Mapping,
    stats: PerCpuArray<MapData, NetStats>,
    milestones: Array<MapData, Milestones>,
    conns: HashMap<MapData, u64, ConnState>,
    _listen_ports: HashMap<MapData, u32, u32>,
}

/// Classic tracepoints: (program, category, name).
const PROGRAMS: [(&str, &str, &str); 6] = [
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
        kernel_btf: &aya::Btf,
        running: Option<u32>,
        with_paths: bool,
        (ncpus, shift): (u32, u32),
    ) -> anyhow::Result<NetProbe> {
        let slots_per_cpu = 1u64 << shift;
        let event_slots = Mapping::of_array(
            take_map(ebpf, "NET_EVENTS")?,
            (u64::from(ncpus) * slots_per_cpu) as usize * size_of::<EventSlot>(),
        )?;
        let event_positions = Mapping::of_array(
            take_map(ebpf, "NET_EVENTS_POS")?,
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
        // The state tracker first, so connections are classified before
        // data flows. A BTF tracepoint: arguments and fields read in place.
        let state: &mut BtfTracePoint = ebpf
            .program_mut("inet_sock_set_state")
            .context("eBPF object has no program inet_sock_set_state")?
            .try_into()?;
        state.load("inet_sock_set_state", kernel_btf).context("loading inet_sock_set_state")?;
        state.attach().context("attaching to BTF tracepoint inet_sock_set_state")?;
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
        Ok(NetProbe {
            events,
            _event_slots: event_slots,
            _event_positions: event_positions,
            stats,
            milestones,
            conns,
            _listen_ports: listen_ports,
        })
    }

    /// Moves every event waiting in the event ring into `log`; returns how
    /// many.
    pub fn drain(&mut self, log: &mut RequestLog) -> u64 {
        self.events.drain(false, |event| log.push(event))
    }

    /// The last drain of a run: an event whose program is still writing it
    /// (microseconds) is waited for, up to 20 ms; a slot still open then is
    /// counted lost.
    pub fn drain_last(&mut self, log: &mut RequestLog) -> u64 {
        let mut n = self.drain(log);
        for _ in 0..20 {
            if !self.events.waiting {
                return n;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
            n += self.drain(log);
        }
        n + self.events.drain(true, |event| log.push(event))
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
        // Reserved but never committed: lost like a full ring's.
        r.stats.events_dropped += self.events.lost;
        r.milestones = self.milestones.get(&0, 0)?;
        Ok(r)
    }

    /// At the end of a run: responses already written on connections still
    /// open are complete as far as the target is concerned; report them
    /// (flagged `AT_END`). Requests still being read are in flight: counted.
    pub fn drain_open_exchanges(&self, log: &mut RequestLog) -> u64 {
        let mut in_flight = 0;
        for entry in self.conns.iter() {
            let Ok((_, c)) = entry else { continue };
            match c.phase {
                phase::RESPONSE => log.push(&NetEvent {
                    start_ns: c.start_ns,
                    first_response_ns: c.first_response_ns,
                    end_ns: c.last_response_ns,
                    upstream_ns: c.upstream_ns,
                    bytes_in: c.bytes_in.min(u32::MAX.into()) as u32,
                    bytes_out: c.bytes_out.min(u32::MAX.into()) as u32,
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

/// A shared memory mapping of an mmapable BPF array map (`BPF_F_MMAPABLE`),
/// read and written in place.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    // Programs loaded later refer to the map by this fd: it must stay open
    // until they are (the mapping alone would keep the map, not the fd).
    _map: MapData,
}

// SAFETY: plain shared memory, accessed through `EventRing` only.
unsafe impl Send for Mapping {}

impl Mapping {
    fn of_array(map: Map, bytes: usize) -> anyhow::Result<Mapping> {
        let Map::Array(data) = map else {
            bail!("event ring map is not an ARRAY");
        };
        let fd = data.fd().as_fd();
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let len = bytes.div_ceil(page) * page;
        // SAFETY: a new shared mapping of the whole map; checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error())
                .context("mapping the request event ring (an mmapable BPF array, Linux 5.5+)");
        }
        let ptr = NonNull::new(ptr.cast()).expect("mmap returned a non-null address");
        Ok(Mapping { ptr, len, _map: data })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in `of_array`.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
