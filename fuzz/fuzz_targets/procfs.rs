//! `/proc/PID/stat`, `/proc/PID/status` and `/proc/PID/net/tcp{,6}`: a
//! process can vanish (or a comm can hold anything) while they are read, so
//! truncated and odd text must give an error or fewer entries, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use perf_agent::procfs;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(stat) = procfs::parse_stat(&text) {
        let _ = stat.cpu_time_ns(100);
        let _ = stat.is_kernel_thread();
    }
    let _ = procfs::parse_status(&text);
    let _ = procfs::parse_net_tcp(&text);
});
