//! Adopting the connections a target had before the agent found it.
//!
//! The socket programs know a connection of the target by its socket
//! storage: a socket without storage is somebody else's, and leaves the
//! program on one load (no helper call, no map lookup), which keeps the
//! tax on the rest of the node low (issue 12). The connections the
//! programs never saw start (accepted or connected before attach, or
//! inherited across exec) get their storage here instead: user space
//! duplicates each of the target's TCP sockets (`open_sockets`) and gives
//! it a fresh `ConnState` whose `sk` is 0; the socket's first operation
//! then completes the adoption in the kernel (its address, and its
//! direction when the port did not tell: `net/conn.rs`).
//!
//! Between finding a target and giving its sockets storage, the programs
//! adopt on their own (the kernel's `ADOPTION_OPEN`): the window stays open
//! [`WINDOW`] after each new target's scan, then a second scan catches the
//! connections accepted meanwhile, and the window closes. A connection
//! whose handshake completed before the target was found and that is
//! still waiting in the accept queue when the window closes is not
//! counted (`docs/metrics.md`).

use std::os::fd::{AsRawFd as _, OwnedFd};
use std::time::{Duration, Instant};

use agent_common::{ConnState, conn_flags, direction};
use aya::maps::{Array, MapData, SkStorage};

use super::open_sockets;

/// How long the kernel adopts on its own after a target is found.
pub const WINDOW: Duration = Duration::from_secs(1);

/// `BPF_NOEXIST`: a socket the programs already track keeps its state.
const NO_EXIST: u64 = 1;

/// The adoption window and the targets whose second scan is due.
pub struct Adoption {
    open: Array<MapData, u32>,
    /// What `open` holds.
    is_open: bool,
    /// (pid, when its second scan is due).
    due: Vec<(u32, Instant)>,
    /// Until a target is found (launch and wait-for-exec modes), the
    /// window stays open: the target's first sockets may come with it.
    awaiting_target: bool,
}

impl Adoption {
    /// Opens the window (before the socket programs are attached).
    pub fn open(mut open: Array<MapData, u32>, awaiting_target: bool) -> anyhow::Result<Adoption> {
        open.set(0, 1, 0)?;
        Ok(Adoption { open, is_open: true, due: Vec::new(), awaiting_target })
    }

    /// A target was found: gives its sockets storage now and again after
    /// [`WINDOW`]; the window stays open until then.
    pub fn target_found(
        &mut self,
        pid: u32,
        conns: &mut SkStorage<MapData, ConnState>,
        listen_ports: &Array<MapData, u32>,
    ) -> anyhow::Result<usize> {
        self.awaiting_target = false;
        if !self.is_open {
            self.open.set(0, 1, 0)?;
            self.is_open = true;
        }
        self.due.retain(|&(p, _)| p != pid);
        self.due.push((pid, Instant::now() + WINDOW));
        adopt_sockets(pid, conns, listen_ports)
    }

    /// Runs the second scans that are due; closes the window once none is
    /// left.
    pub fn close_when_due(
        &mut self,
        conns: &mut SkStorage<MapData, ConnState>,
        listen_ports: &Array<MapData, u32>,
    ) -> anyhow::Result<()> {
        if self.awaiting_target || !self.is_open {
            return Ok(());
        }
        let now = Instant::now();
        let mut result = Ok(());
        self.due.retain(|&(pid, at)| {
            if at > now {
                return true;
            }
            if let Err(e) = adopt_sockets(pid, conns, listen_ports) {
                result = Err(e);
            }
            false
        });
        if self.due.is_empty() {
            self.open.set(0, 0, 0)?;
            self.is_open = false;
        }
        result
    }
}

/// Gives each TCP connection `pid` has open, that the programs do not track
/// yet, the state of an adopted connection (inbound when a target listens
/// on its local port, `listen_ports` being the kernel's `LISTEN_PORTS`, as
/// the programs decide; else decided by its first operation); returns how
/// many.
fn adopt_sockets(
    pid: u32,
    conns: &mut SkStorage<MapData, ConnState>,
    listen_ports: &Array<MapData, u32>,
) -> anyhow::Result<usize> {
    let mut adopted = 0;
    open_sockets::for_each_descriptor(pid, |fd| {
        let Some(port) = tcp_connection_port(fd) else { return };
        let listened = listen_ports.get(&u32::from(port), 0).is_ok_and(|owner| owner != 0);
        let dir = if listened { direction::INBOUND } else { 0 };
        let state = ConnState {
            direction: dir,
            flags: conn_flags::ADOPTED | (pid << conn_flags::OWNER_SHIFT),
            ..ConnState::default()
        };
        if conns.insert(fd, state, NO_EXIST).is_ok() {
            adopted += 1;
        }
    })?;
    Ok(adopted)
}

/// The local port of `fd` when it is a TCP socket that is not listening.
fn tcp_connection_port(fd: &OwnedFd) -> Option<u16> {
    let int_opt = |name| {
        let mut v: libc::c_int = 0;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `v` and `len` are valid for the option's int.
        let r = unsafe {
            libc::getsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, name, (&raw mut v).cast(), &mut len)
        };
        (r == 0).then_some(v)
    };
    let domain = int_opt(libc::SO_DOMAIN)?; // ENOTSOCK: not a socket
    if domain != libc::AF_INET && domain != libc::AF_INET6 {
        return None;
    }
    if int_opt(libc::SO_PROTOCOL)? != libc::IPPROTO_TCP || int_opt(libc::SO_ACCEPTCONN)? != 0 {
        return None;
    }
    // SAFETY: a zeroed sockaddr_storage is valid; `len` says its size.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let r = unsafe { libc::getsockname(fd.as_raw_fd(), (&raw mut addr).cast(), &mut len) };
    if r != 0 {
        return None;
    }
    // sin_port and sin6_port are both at offset 2, network order.
    // SAFETY: `addr` is at least a sockaddr_in (AF_INET or AF_INET6).
    let port = unsafe { (*(&raw const addr).cast::<libc::sockaddr_in>()).sin_port };
    Some(u16::from_be(port))
}
