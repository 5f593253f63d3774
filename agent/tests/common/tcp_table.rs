//! The kernel's IPv4 TCP table (`/proc/net/tcp`) as ground truth for the
//! tests that hold many connections, and a wait for a previous test's
//! sockets to be torn down before the next one starts.

use std::{
    fs,
    time::{Duration, Instant},
};

/// `/proc/net/tcp` state of CLOSE_WAIT (`st` column, hex).
pub const CLOSE_WAIT: &str = "08";

/// (local port, remote port, state) of every IPv4 TCP socket.
fn sockets() -> Vec<(u16, u16, String)> {
    let table = fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let port = |addr: &str| addr.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            // sl local_address rem_address st ...
            let mut fields = line.split_whitespace().skip(1);
            let local = port(fields.next()?)?;
            let remote = port(fields.next()?)?;
            Some((local, remote, fields.next()?.to_string()))
        })
        .collect()
}

/// Sockets whose local port is one of `ports`, in `state`.
pub fn count_local(ports: &[u16], state: &str) -> u64 {
    sockets().iter().filter(|(l, _, st)| st == state && ports.contains(l)).count() as u64
}

/// Sockets with either end on one of `ports`, in any state but TIME_WAIT
/// (which holds no memory the next test would miss, and no CPU).
fn live_on(ports: &[u16]) -> u64 {
    const TIME_WAIT: &str = "06";
    sockets()
        .iter()
        .filter(|(l, r, st)| st != TIME_WAIT && (ports.contains(l) || ports.contains(r)))
        .count() as u64
}

/// Orphaned sockets of the machine (`/proc/net/sockstat`, `TCP: … orphan N`):
/// closed by their process, still being torn down by the kernel.
fn orphans() -> u64 {
    let stat = fs::read_to_string("/proc/net/sockstat").expect("/proc/net/sockstat");
    let tcp = stat.lines().find(|l| l.starts_with("TCP:")).unwrap_or("");
    let words: Vec<&str> = tcp.split_whitespace().collect();
    words.windows(2).find(|w| w[0] == "orphan").and_then(|w| w[1].parse().ok()).unwrap_or(0)
}

/// Orphans below which the machine counts as quiet (an idle one has none;
/// a test that just dropped 100 000 connections has tens of thousands).
const QUIET_ORPHANS: u64 = 100;

/// Waits (up to `timeout`, else panics) until no live socket has an end on
/// `ports` and the machine has (almost) no orphaned socket left: the teardown of a run that held
/// many connections (resets, orphans, socket storage freed after an RCU
/// grace period) is over, so it neither shares the CPUs with the next
/// measurement nor runs the agent's TCP hooks in softirq under it. Returns
/// how long it took.
pub fn wait_torn_down(ports: &[u16], timeout: Duration) -> Duration {
    let start = Instant::now();
    while live_on(ports) > 0 || orphans() >= QUIET_ORPHANS {
        if start.elapsed() > timeout {
            panic!(
                "after {timeout:?}, {} sockets still live on ports {ports:?} and {} orphans",
                live_on(ports),
                orphans()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}
