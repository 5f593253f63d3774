//! perf-agent: measure a running server with eBPF, without modifying it.
//!
//! `perf-agent attach --pid PID` loads the probes of `agent-ebpf`, follows the
//! whole thread group of PID, and when the run ends (duration, signal, target
//! exit) writes Bencher Metric Format JSON and prints a summary.

mod bmf;
mod percentile;
mod preflight;
mod probes;
mod procfs;
mod progress;
mod report;
mod requests;
mod session;
mod signals;
mod timeline;
mod tracefs;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

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
}

#[derive(Parser)]
#[command(name = "perf-agent", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach to a running process and measure it until --duration ends,
    /// Ctrl-C/SIGTERM, or the process exits.
    Attach(AttachArgs),
}

#[derive(clap::Args)]
struct AttachArgs {
    /// PID of the process (thread group) to measure.
    #[arg(long)]
    pid: u32,
    /// Seconds to measure (fractions allowed); without it, until interrupted.
    #[arg(long, value_parser = parse_duration, allow_negative_numbers = true)]
    duration: Option<Duration>,
    /// Write Bencher Metric Format JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Sampling interval in milliseconds (10..=60000).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    interval: u64,
    /// Allow PID 1.
    #[arg(long)]
    force: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !secs.is_finite() || secs <= 0.0 {
        return Err(format!(
            "duration must be a positive number of seconds, got {s}"
        ));
    }
    if secs > 366.0 * 86_400.0 {
        return Err(format!("duration {s} s is longer than a year"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Attach(args) => attach(args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("perf-agent: error: {e:#}");
            ExitCode::from(exit::ERROR)
        }
    }
}

fn attach(args: AttachArgs) -> anyhow::Result<u8> {
    // Everything that can fail on bad input fails here, before attaching.
    let stat = preflight::check_target(args.pid, args.force)?;
    if let Some(out) = &args.out {
        bmf::check_writable(out)?;
    }
    preflight::check_privileges()?;
    let tracefs_root = tracefs::ensure_mounted()?;
    preflight::check_kernel(&tracefs_root)?;
    // Signals are recorded from here on: a Ctrl-C during attach still ends
    // the run cleanly, after the first sample.
    signals::install();
    let pidfd = session::open_pidfd(args.pid, stat.starttime_ticks)?;
    let mut probes = probes::Probes::attach(args.pid, &tracefs_root)
        .with_context(|| format!("attaching to PID {}", args.pid))?;
    eprintln!(
        "perf-agent: attached to PID {} ({}){}",
        args.pid,
        stat.comm,
        match args.duration {
            Some(d) => format!(" for {:.1} s", d.as_secs_f64()),
            None => ", Ctrl-C to stop".into(),
        }
    );
    let config = session::SessionConfig {
        pid: args.pid,
        starttime_ticks: stat.starttime_ticks,
        duration: args.duration,
        interval: Duration::from_millis(args.interval),
    };
    let result = session::run(&mut probes, &pidfd, &config)?;
    let programs = probes.program_stats();
    drop(probes); // detach before writing: the target runs unobserved from here
    let Some(window) = timeline::window(&result.samples) else {
        bail!("no samples were taken");
    };
    let (first, last) = (
        result.samples[0].t_ns,
        result.samples[result.samples.len() - 1].t_ns,
    );
    let requests = result.log.window(first, last);
    let r = report::AttachReport {
        pid: args.pid,
        comm: &stat.comm,
        window,
        kernel: result.last_kernel,
        requests,
        in_flight: result.in_flight,
        rejected_events: result.log.rejected,
        programs,
        end: result.end,
    };
    print!("{}", report::attach_summary(&r));
    if let Some(out) = &args.out {
        report::attach_bmf(&r).write(out)?;
        eprintln!("perf-agent: wrote {}", out.display());
    }
    Ok(match result.end {
        session::EndReason::TargetExited => exit::TARGET_EXITED,
        session::EndReason::Interrupted(_) => exit::INTERRUPTED,
        _ => exit::OK,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_must_be_positive_and_finite() {
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        for bad in ["0", "-3", "nan", "inf", "abc", "1e12"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }
}
