//! perf-agent's library: everything but the command line, so that tests,
//! benchmarks and fuzz targets can reach the pure parts (request delimiting
//! results, phases, percentiles, parsers, BMF writing).

pub mod bmf;
pub mod btf;
pub mod cgroup;
pub mod clock;
pub mod compare;
pub mod event_ring;
pub mod histogram;
pub mod k6;
pub mod launch;
pub mod load;
pub mod marks;
pub mod measure;
pub mod outcome;
pub mod output;
pub mod percentile;
pub mod phases;
pub mod preflight;
pub mod priority;
pub mod probes;
pub mod profile;
pub mod progress;
pub mod repeat;
pub mod report;
pub mod requests;
pub mod serve;
pub mod session;
pub mod signals;
pub mod startup;
pub mod timeline;
pub mod tracefs;
pub mod units;

/// The `/proc` readers (a crate of their own, shared with the bench).
pub use agent_procfs as procfs;
