//! Reading `/proc/PID/{stat,status,task}`: the ground truth every kernel-side
//! number is checked against, and the seed values taken at attach. The
//! samples read the target's files kept open (`kept`).
//!
//! Parsers are pure (text in, struct out) so they are unit-tested without a
//! process; the `read_*` wrappers only add the file read.

use std::{
    fmt, fs,
    io::{self, BufRead as _},
    path::PathBuf,
};

mod kept;
pub use kept::{ProcFile, ProcessFiles};

/// `PF_KTHREAD` in `/proc/PID/stat` field 9 (`flags`): the task is a kernel thread.
const PF_KTHREAD: u64 = 0x0020_0000;

/// The fields of `/proc/PID/stat` perf-agent uses (see proc_pid_stat(5)).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcStat {
    pub comm: String,
    pub state: char,
    pub ppid: i32,
    pub flags: u64,
    /// Minor / major faults of the whole thread group (live and exited threads).
    pub minflt: u64,
    pub majflt: u64,
    /// User / system CPU time of the thread group, in clock ticks.
    pub utime_ticks: u64,
    pub stime_ticks: u64,
    pub num_threads: u64,
    /// Start time after boot, in clock ticks: with the PID, it identifies the
    /// process across PID reuse.
    pub starttime_ticks: u64,
}

impl ProcStat {
    pub fn is_kernel_thread(&self) -> bool {
        self.flags & PF_KTHREAD != 0
    }

    /// utime + stime in nanoseconds.
    pub fn cpu_time_ns(&self, ticks_per_sec: u64) -> u64 {
        (self.utime_ticks + self.stime_ticks) * (1_000_000_000 / ticks_per_sec.max(1))
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct ParseError {
    pub file: &'static str,
    pub what: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot parse {}: {}", self.file, self.what)
    }
}

impl std::error::Error for ParseError {}

/// Parses `/proc/PID/stat`. `comm` may hold spaces and parentheses, so the
/// fields after it are split after the *last* `)`.
pub fn parse_stat(text: &str) -> Result<ProcStat, ParseError> {
    let err = |what: String| ParseError { file: "/proc/PID/stat", what };
    let open = text.find('(').ok_or_else(|| err("no '(' before comm".into()))?;
    let close = text.rfind(')').ok_or_else(|| err("no ')' after comm".into()))?;
    if close < open {
        return Err(err("')' before '('".into()));
    }
    let comm = text[open + 1..close].to_string();
    // Field 3 (state) is rest[0]; field N is rest[N - 3].
    let rest: Vec<&str> = text[close + 1..].split_ascii_whitespace().collect();
    let field = |n: usize| -> Result<&str, ParseError> {
        rest.get(n - 3).copied().ok_or_else(|| err(format!("field {n} missing")))
    };
    let num = |n: usize| -> Result<u64, ParseError> {
        field(n)?.parse().map_err(|e| err(format!("field {n}: {e}")))
    };
    Ok(ProcStat {
        comm,
        state: field(3)?.chars().next().unwrap_or('?'),
        ppid: field(4)?.parse().map_err(|e| err(format!("field 4: {e}")))?,
        flags: num(9)?,
        minflt: num(10)?,
        majflt: num(12)?,
        utime_ticks: num(14)?,
        stime_ticks: num(15)?,
        num_threads: num(20)?,
        starttime_ticks: num(22)?,
    })
}

/// The memory fields of `/proc/PID/status`, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcStatus {
    pub vm_rss: u64,
    pub vm_hwm: u64,
    pub rss_anon: u64,
    pub rss_file: u64,
    pub rss_shmem: u64,
    pub vm_swap: u64,
    pub threads: u64,
}

/// Parses `/proc/PID/status`. A process without an mm (a zombie, a kernel
/// thread) has no `Vm*` lines: those fields stay 0.
pub fn parse_status(text: &str) -> Result<ProcStatus, ParseError> {
    let mut status = ProcStatus::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let slot = match key {
            "VmRSS" => &mut status.vm_rss,
            "VmHWM" => &mut status.vm_hwm,
            "RssAnon" => &mut status.rss_anon,
            "RssFile" => &mut status.rss_file,
            "RssShmem" => &mut status.rss_shmem,
            "VmSwap" => &mut status.vm_swap,
            "Threads" => {
                status.threads = value.trim().parse().map_err(|e| ParseError {
                    file: "/proc/PID/status",
                    what: format!("Threads: {e}"),
                })?;
                continue;
            }
            _ => continue,
        };
        let mut parts = value.split_ascii_whitespace();
        let n: u64 = parts.next().and_then(|v| v.parse().ok()).ok_or_else(|| ParseError {
            file: "/proc/PID/status",
            what: format!("{key}: not a number: {value:?}"),
        })?;
        *slot = match parts.next() {
            Some("kB") => n * 1024,
            None => n,
            Some(unit) => {
                return Err(ParseError {
                    file: "/proc/PID/status",
                    what: format!("{key}: unknown unit {unit:?}"),
                });
            }
        };
    }
    Ok(status)
}

fn proc_path(pid: u32, file: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{file}"))
}

fn invalid(e: ParseError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

pub fn read_stat(pid: u32) -> io::Result<ProcStat> {
    parse_stat(&fs::read_to_string(proc_path(pid, "stat"))?).map_err(invalid)
}

pub fn read_status(pid: u32) -> io::Result<ProcStatus> {
    parse_status(&fs::read_to_string(proc_path(pid, "status"))?).map_err(invalid)
}

/// The executable of `pid` (`/proc/PID/exe`), for messages and `binary/size`.
pub fn exe(pid: u32) -> io::Result<PathBuf> {
    fs::read_link(proc_path(pid, "exe"))
}

/// `sysconf(_SC_CLK_TCK)`: the unit of utime/stime.
pub fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as u64 } else { 100 }
}

/// One socket line of `/proc/PID/net/tcp` or `tcp6`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSocket {
    pub local_port: u16,
    /// Kernel TCP state number (10 = LISTEN, 1 = ESTABLISHED).
    pub state: u8,
    pub inode: u64,
}

pub const TCP_LISTEN: u8 = 10;

/// Parses `/proc/net/tcp`-format text. Bad lines are skipped: the file is
/// the kernel's, but a process can vanish while it is read.
pub fn parse_net_tcp(text: &str) -> Vec<TcpSocket> {
    text.lines().skip(1).filter_map(parse_net_tcp_line).collect()
}

/// One socket line of `/proc/net/tcp` or `tcp6` (`None` for the header and
/// for bad lines).
pub fn parse_net_tcp_line(line: &str) -> Option<TcpSocket> {
    let f: Vec<&str> = line.split_ascii_whitespace().collect();
    let local = f.get(1)?;
    let port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
    let state = u8::from_str_radix(f.get(3)?, 16).ok()?;
    let inode = f.get(9)?.parse().ok()?;
    Some(TcpSocket { local_port: port, state, inode })
}

/// `TcpExt: ListenOverflows` of `/proc/net/netstat`-format text: handshakes
/// the kernel dropped because a listener's accept queue was full, in the
/// network namespace the file belongs to (all its listeners together).
pub fn parse_listen_overflows(text: &str) -> Option<u64> {
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next()?, lines.next()?);
    let at = names.split_ascii_whitespace().position(|n| n == "ListenOverflows")?;
    values.split_ascii_whitespace().nth(at)?.parse().ok()
}

/// [`parse_listen_overflows`] of `/proc/PID/net/netstat` (the target's
/// network namespace).
pub fn listen_overflows(pid: u32) -> io::Result<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/net/netstat"))?;
    parse_listen_overflows(&text)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no TcpExt ListenOverflows"))
}

/// Inodes of the sockets `pid` has open (`/proc/PID/fd/* -> socket:[N]`).
pub fn socket_inodes(pid: u32) -> io::Result<std::collections::HashSet<u64>> {
    let mut inodes = std::collections::HashSet::new();
    for entry in fs::read_dir(proc_path(pid, "fd"))? {
        let target = match fs::read_link(entry?.path()) {
            Ok(t) => t,
            // Another user's process without CAP_SYS_PTRACE: the directory
            // lists (CAP_DAC_READ_SEARCH) but no link reads. Say so rather
            // than return an empty set.
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return Err(e),
            Err(_) => continue, // the fd was closed meanwhile
        };
        let target = target.to_string_lossy();
        if let Some(n) = target.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']'))
            && let Ok(n) = n.parse()
        {
            inodes.insert(n);
        }
    }
    Ok(inodes)
}

/// TCP ports `pid` is listening on now, in its own network namespace.
pub fn listening_ports(pid: u32) -> io::Result<Vec<u16>> {
    let inodes = socket_inodes(pid)?;
    let mut ports = Vec::new();
    for file in ["net/tcp", "net/tcp6"] {
        // Line by line: the table is the whole network namespace's, which
        // can hold hundreds of thousands of sockets (TIME_WAIT, orphans) and
        // tens of MiB of text; read whole, it set the agent's peak memory.
        let Ok(f) = fs::File::open(proc_path(pid, file)) else {
            continue;
        };
        for line in io::BufReader::new(f).lines() {
            let Some(s) = parse_net_tcp_line(&line?) else { continue };
            if s.state == TCP_LISTEN && inodes.contains(&s.inode) && !ports.contains(&s.local_port)
            {
                ports.push(s.local_port);
            }
        }
    }
    Ok(ports)
}

/// CPU time the machine has been busy since boot, all CPUs, in clock ticks:
/// the `cpu` line of `/proc/stat` without idle, iowait and steal (time the
/// hypervisor gave to other guests is not this machine's work).
pub fn parse_machine_busy_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line.split_whitespace().skip(1).filter_map(|w| w.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal ...
    Some([0, 1, 2, 5, 6].iter().filter_map(|&i| f.get(i)).sum())
}

/// [`parse_machine_busy_ticks`] of this machine, in nanoseconds.
pub fn machine_busy_ns() -> io::Result<u64> {
    let ticks = parse_machine_busy_ticks(&fs::read_to_string("/proc/stat")?)
        .ok_or_else(|| invalid(ParseError { file: "/proc/stat", what: "no `cpu ` line".into() }))?;
    Ok(ticks * (1_000_000_000 / clock_ticks_per_sec()))
}

/// CPU time of the whole thread group `pid`, ns, exact: its CPU-time clock
/// (`clock_getcpuclockid` + `clock_gettime`), the scheduler's nanosecond
/// runtime of every thread, those that exited included, and slices running
/// at the read. utime + stime in `/proc/PID/stat` are this in 10 ms ticks.
/// An error once the process is gone (reaped).
pub fn process_cpu_ns(pid: u32) -> io::Result<u64> {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: an out-pointer to a clockid_t; `pid` is only looked up.
    let rc = unsafe { libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc)); // it returns the error
    }
    // SAFETY: a zeroed timespec is valid.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a clock id from the kernel and a timespec to write.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// `/proc/PID/task/TID/schedstat`: the thread's ns on a CPU
/// (`se.sum_exec_runtime`) and ns waiting on a run queue
/// (`sched_info.run_delay`), exact.
pub fn parse_schedstat(text: &str) -> Option<(u64, u64)> {
    let mut fields = text.split_whitespace().map(str::parse::<u64>);
    Some((fields.next()?.ok()?, fields.next()?.ok()?))
}

/// [`parse_schedstat`] of thread `tid` of process `pid`.
pub fn task_schedstat(pid: u32, tid: u32) -> io::Result<(u64, u64)> {
    let path = proc_path(pid, &format!("task/{tid}/schedstat"));
    parse_schedstat(&fs::read_to_string(path)?).ok_or_else(|| {
        invalid(ParseError { file: "schedstat", what: format!("thread {tid} of {pid}") })
    })
}

/// [`parse_schedstat`] of every live thread of process `pid`, by tid (a
/// thread that exits while they are read is left out).
pub fn thread_schedstats(pid: u32) -> io::Result<std::collections::HashMap<u32, (u64, u64)>> {
    let mut out = std::collections::HashMap::new();
    for task in fs::read_dir(proc_path(pid, "task"))?.flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else { continue };
        if let Ok(stats) = task_schedstat(pid, tid) {
            out.insert(tid, stats);
        }
    }
    Ok(out)
}

/// How many `bpf_link` descriptors process `pid` holds: one per program
/// attached through a link.
pub fn bpf_link_count(pid: u32) -> io::Result<usize> {
    let mut n = 0;
    for entry in fs::read_dir(proc_path(pid, "fd"))? {
        if fs::read_link(entry?.path()).is_ok_and(|t| t.to_string_lossy().contains("bpf_link")) {
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {

    #[test]
    fn schedstat_is_cpu_then_run_queue_ns() {
        use super::{parse_schedstat, thread_schedstats};
        assert_eq!(parse_schedstat("123456 789 42\n"), Some((123456, 789)));
        assert_eq!(parse_schedstat("12"), None);
        assert_eq!(parse_schedstat("x 1 2"), None);
        let me = std::process::id();
        let threads = thread_schedstats(me).unwrap();
        assert!(threads.get(&me).is_some_and(|(cpu, _)| *cpu > 0), "{threads:?}");
    }

    /// Burns about `ms` of this thread's CPU.
    fn burn(ms: u64) {
        let start = std::time::Instant::now();
        let mut x = 1u64;
        while start.elapsed() < std::time::Duration::from_millis(ms) {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }

    #[test]
    fn the_process_cpu_clock_counts_threads_that_exited() {
        let pid = std::process::id();
        let before = super::process_cpu_ns(pid).unwrap();
        std::thread::spawn(|| burn(60)).join().unwrap();
        let grown = super::process_cpu_ns(pid).unwrap() - before;
        // The exited thread's 60 ms (wall time: at least that little CPU
        // when it was not preempted; a loaded machine may give it less).
        assert!(grown >= 20_000_000, "grew {grown} ns");
        assert!(grown < 5_000_000_000, "grew {grown} ns");
        let pid_max: u32 =
            std::fs::read_to_string("/proc/sys/kernel/pid_max").unwrap().trim().parse().unwrap();
        assert!(super::process_cpu_ns(pid_max + 1).is_err(), "no such process");
    }

    #[test]
    fn listen_overflows_from_netstat() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops\n\
                    TcpExt: 0 17 19\n\
                    IpExt: InNoRoutes\nIpExt: 0\n";
        assert_eq!(parse_listen_overflows(text), Some(17));
        assert_eq!(parse_listen_overflows("IpExt: A\nIpExt: 1\n"), None);
    }

    use super::*;

    #[test]
    fn net_tcp_lines() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 23456 1 0000000000000000 20 4 30 10 -1
   2: garbage
";
        let v = parse_net_tcp(text);
        assert_eq!(v.len(), 2);
        assert_eq!(v[0], TcpSocket { local_port: 8080, state: TCP_LISTEN, inode: 12345 });
        assert_eq!(v[1].state, 1);
        let v6 = parse_net_tcp(
            "hdr\n   0: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1\n",
        );
        assert_eq!(v6[0].local_port, 80);
    }

    const STAT: &str = "4242 (my (odd) server) S 1 4242 4242 0 -1 4194560 1234 0 5 0 \
        250 30 0 0 20 0 7 0 987654 123456789 2048 18446744073709551615 1 1 0 0 0 0 0 \
        4096 0 0 0 0 17 1 0 0 0 0 0";

    #[test]
    fn stat_fields_after_a_comm_with_spaces_and_parentheses() {
        let s = parse_stat(STAT).unwrap();
        assert_eq!(s.comm, "my (odd) server");
        assert_eq!(s.state, 'S');
        assert_eq!(s.ppid, 1);
        assert_eq!(s.flags, 4194560);
        assert_eq!((s.minflt, s.majflt), (1234, 5));
        assert_eq!((s.utime_ticks, s.stime_ticks), (250, 30));
        assert_eq!(s.num_threads, 7);
        assert_eq!(s.starttime_ticks, 987654);
        assert!(!s.is_kernel_thread());
        assert_eq!(s.cpu_time_ns(100), 2_800_000_000);
    }

    #[test]
    fn kernel_thread_flag() {
        let kthread = "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 1 0 0 \
            18446744073709551615 0 0 0 0 0 0 0 2147483647 0 0 0 0 0 1 0 0 0 0 0";
        assert!(parse_stat(kthread).unwrap().is_kernel_thread());
    }

    #[test]
    fn truncated_stat_is_an_error_not_a_panic() {
        let e = parse_stat("4242 (x) S 1 2").unwrap_err();
        assert!(e.what.contains("missing"), "{e}");
        assert!(parse_stat("garbage").is_err());
        assert!(parse_stat("1 )x( S").is_err());
    }

    #[test]
    fn status_memory_in_bytes() {
        let text = "Name:\tx\nThreads:\t3\nVmHWM:\t  262400 kB\nVmRSS:\t    2048 kB\n\
            RssAnon:\t    1024 kB\nRssFile:\t    1000 kB\nRssShmem:\t      24 kB\nVmSwap:\t0 kB\n";
        let s = parse_status(text).unwrap();
        assert_eq!(s.vm_hwm, 262_400 * 1024);
        assert_eq!(s.vm_rss, 2048 * 1024);
        assert_eq!(s.rss_anon + s.rss_file + s.rss_shmem, s.vm_rss);
        assert_eq!(s.threads, 3);
    }

    #[test]
    fn status_of_a_zombie_has_no_memory() {
        let s = parse_status("Name:\tx\nState:\tZ (zombie)\nThreads:\t1\n").unwrap();
        assert_eq!(s.vm_rss, 0);
    }

    #[test]
    fn status_garbage_number_is_an_error() {
        assert!(parse_status("VmRSS:\tlots kB\n").is_err());
        assert!(parse_status("VmRSS:\t12 MB\n").is_err());
    }

    #[test]
    fn machine_busy_leaves_out_idle_iowait_and_steal() {
        let s = "cpu  10 1 20 1000 50 3 4 70 0 0\ncpu0 1 1 1 1 1 1 1 1 0 0\n";
        assert_eq!(parse_machine_busy_ticks(s), Some(38));
        assert_eq!(parse_machine_busy_ticks("intr 1 2\n"), None);
    }
}
