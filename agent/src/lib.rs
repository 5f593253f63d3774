//! perf-agent's library: everything but the command line, so that tests,
//! benchmarks and fuzz targets can reach the pure parts (request delimiting
//! results, phases, percentiles, parsers, BMF writing).

pub mod bmf;
pub mod btf;
pub mod event_ring;
pub mod k6;
pub mod launch;
pub mod marks;
pub mod measure;
pub mod percentile;
pub mod phases;
pub mod preflight;
pub mod probes;
pub mod procfs;
pub mod profile;
pub mod progress;
pub mod report;
pub mod requests;
pub mod session;
pub mod signals;
pub mod startup;
pub mod timeline;
pub mod tracefs;

/// Exit codes (documented in the README and the man page).
pub mod exit {
    /// Complete run, results written.
    pub const OK: u8 = 0;
    /// Error: nothing measured (bad input, missing privilege or kernel feature).
    pub const ERROR: u8 = 1;
    // 2: usage error (clap).
    /// Partial: the target exited before the end; results so far written.
    pub const TARGET_EXITED: u8 = 3;
    /// Partial: interrupted before `--duration` elapsed; results so far written.
    pub const INTERRUPTED: u8 = 4;
    /// The target exited during startup (before listening); what was
    /// measured is written.
    pub const STARTUP_FAILED: u8 = 5;
}
