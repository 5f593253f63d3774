//! The one-line live status on stderr, refreshed in place; silent when stderr
//! is not a terminal (CI logs stay clean).

use std::io::Write as _;

use crate::{timeline::Sample, units::human_bytes};

pub struct Progress {
    enabled: bool,
    shown: bool,
}

impl Progress {
    pub fn new() -> Progress {
        // SAFETY: isatty has no preconditions.
        Progress { enabled: unsafe { libc::isatty(2) } == 1, shown: false }
    }

    pub fn update(&mut self, first: &Sample, now: &Sample, prev: &Sample, requests: u64) {
        if !self.enabled {
            return;
        }
        let elapsed = now.t_ns.saturating_sub(first.t_ns) as f64 / 1e9;
        let dt = now.t_ns.saturating_sub(prev.t_ns).max(1) as f64;
        let cpu = now.cpu_ns.saturating_sub(prev.cpu_ns) as f64 * 100.0 / dt;
        let line = format!(
            "perf-agent: {elapsed:7.1} s | CPU {cpu:6.1} % | RSS {} | faults {} | requests {requests}",
            human_bytes(now.rss_bytes),
            now.minor_faults + now.major_faults,
        );
        let _ = write!(std::io::stderr(), "\r\x1b[K{line}");
        self.shown = true;
    }

    pub fn clear(&mut self) {
        if self.shown {
            let _ = write!(std::io::stderr(), "\r\x1b[K");
            self.shown = false;
        }
    }
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}
