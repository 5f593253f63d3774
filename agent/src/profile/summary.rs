//! The profile's part of the run's outputs: its BMF rows and its section
//! of the summary.

use std::fmt::Write as _;

use super::{PhaseProfile, ProfileReport};
use crate::bmf::{BmfReport, Measure};

impl ProfileReport {
    /// `profile/samples`, `profile/truncated_percent`,
    /// `sched/runq_wait_mean` (off-CPU ticks), `sched/runq_wait_p50|p99`
    /// (`--runq-waits`): whole run and `@<phase>`.
    pub fn add_bmf(&self, bmf: &mut BmfReport) {
        let mut add = |suffix: String, p: &PhaseProfile| {
            bmf.add(format!("profile/samples{suffix}"), Measure::Count, p.samples as f64);
            bmf.add(
                format!("profile/truncated_percent{suffix}"),
                Measure::Percent,
                p.truncated_percent(),
            );
            if let Some(mean) = p.runq_mean_ns {
                bmf.add(format!("sched/runq_wait_mean{suffix}"), Measure::Latency, mean);
            }
            if let Some(r) = p.runq {
                bmf.add(format!("sched/runq_wait_p50{suffix}"), Measure::Latency, r.p50_ns);
                bmf.add(format!("sched/runq_wait_p99{suffix}"), Measure::Latency, r.p99_ns);
            }
        };
        add(String::new(), &self.run);
        for p in &self.phases {
            add(format!("@{}", p.name), p);
        }
    }

    /// The summary's profile section: per phase samples, truncation,
    /// off-CPU time and run-queue waits; the top functions of `canonical`
    /// (else of the whole run).
    pub fn summary(&self, canonical: Option<&str>) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "\nprofiles ({}):", self.dir.display());
        let _ = writeln!(
            out,
            "  {:<16} {:>8} {:>11} {:>11} {:>12} {:>12} {:>12}",
            "phase", "samples", "truncated", "off-CPU", "runq mean", "runq p50", "runq p99"
        );
        for p in std::iter::once(&self.run).chain(&self.phases) {
            let (p50, p99) = p.runq.map_or(("-".into(), "-".into()), |r| {
                (crate::units::human_ns(r.p50_ns), crate::units::human_ns(r.p99_ns))
            });
            let mean = p.runq_mean_ns.map_or("-".into(), crate::units::human_ns);
            let _ = writeln!(
                out,
                "  {:<16} {:>8} {:>9.1} % {:>11} {:>12} {:>12} {:>12}",
                p.name,
                p.samples,
                p.truncated_percent(),
                if self.off_cpu { crate::units::human_ns(p.off_cpu_ns as f64) } else { "-".into() },
                mean,
                p50,
                p99
            );
        }
        let (pauses, paused_ns) = self.paused;
        let truth = match self.proc_run_delay {
            // The programs saw none of the waits in the pauses; /proc did.
            _ if pauses > 0 => "not comparable: profiling was paused".into(),
            None => "not readable".into(),
            Some(t) => crate::units::human_ns(t.run_delay_ns as f64),
        };
        // The ground truth shows live threads only: say when it misses some.
        let exited = match self.proc_run_delay {
            Some(t) if t.misses_exited_threads() => format!(
                "; threads that exited during the run used {} of CPU: /proc no longer shows \
                 their waits",
                crate::units::human_ns(t.exited_cpu_ns as f64)
            ),
            _ => String::new(),
        };
        if self.runq_waits {
            let _ = writeln!(
                out,
                "  run-queue wait total {} (/proc schedstat run_delay {truth}); {} waits{exited}",
                crate::units::human_ns(self.runq_total_ns as f64),
                self.counters.kernel.runq_waits
            );
        } else {
            let _ = writeln!(
                out,
                "  run-queue waits: /proc schedstat run_delay {truth} in all{exited}; their \
                 mean from the threads' run_delay at the off-CPU ticks; p50/p99 only with \
                 --runq-waits (a program at every context switch of the machine)"
            );
        }
        if pauses > 0 {
            let _ = writeln!(
                out,
                "  paused {pauses} times by --profile-control, {} of the {} profiled: the \
                 profiles and their rates are of the rest",
                crate::units::human_ns(paused_ns as f64),
                crate::units::human_ns(self.window_ns as f64)
            );
        }
        let c = &self.counters;
        if self.off_cpu {
            let torn = match c.off_cpu_torn {
                0 => String::new(),
                n => format!(
                    "; {n} more dropped, their thread having run while they were copied (its \
                     time counts, without a stack)"
                ),
            };
            let steal = match self.steal {
                // Nothing stolen that /proc/stat saw (its steal moves in
                // 10 ms ticks): nothing to say.
                Some(s) if !self.runq_waits && s.stolen.estimated_ns == 0 => String::new(),
                Some(s) if !self.runq_waits => format!(
                    "; the host stole {:.1} % of the machine's busy CPU time (/proc/stat): {} \
                     of the threads' running time by that share, not counted off CPU \
                     (--runq-waits: summed at each switch-out)",
                    s.share * 100.0,
                    crate::units::human_ns(s.stolen.estimated_ns as f64)
                ),
                Some(s) => format!(
                    "; the host stole {} of the threads' running time, summed at their \
                     switch-outs and not counted off CPU ({:.1} % of the machine's busy CPU \
                     time in /proc/stat would make it {})",
                    crate::units::human_ns(s.stolen.summed_ns as f64),
                    s.share * 100.0,
                    crate::units::human_ns(s.stolen.estimated_ns as f64)
                ),
                None => String::new(),
            };
            let _ = writeln!(
                out,
                "  off-CPU: {} blocks, {} stacks taken at {} ticks (about {} per CPU and second \
                 aimed at; each thread's time off CPU, from the scheduler's counters, is split \
                 among its stacks by them){torn}{steal}",
                c.off_cpu_blocks, c.off_cpu_stacks, c.off_cpu_ticks, self.off_cpu_hz
            );
        }
        // Losses, only when there are some: what the profile is missing.
        let mut lost = Vec::new();
        if c.kernel.ring_full > 0 {
            lost.push(format!("{} samples (ring buffer full)", c.kernel.ring_full));
        }
        if self.malformed > 0 {
            lost.push(format!("{} records unreadable (a bug: please report it)", self.malformed));
        }
        if !lost.is_empty() {
            let _ = writeln!(out, "  lost: {}", lost.join("; "));
        }
        let top =
            canonical.and_then(|c| self.phases.iter().find(|p| p.name == c)).unwrap_or(&self.run);
        let _ = writeln!(out, "  on-CPU top functions of {} (self %, total %):", top.name);
        for f in top.top.iter().take(10) {
            let _ =
                writeln!(out, "    {:>5.1} {:>5.1}  {}", f.self_percent, f.total_percent, f.name);
        }
        if self.off_cpu {
            let _ = writeln!(
                out,
                "  off-CPU sites of {} (% of time blocked: the call that blocked ← its \
                 callers):",
                top.name
            );
            for b in top.off_cpu_sites.iter().take(5) {
                let _ = writeln!(out, "    {:>5.1}  {}", b.percent, b.site);
            }
        }
        let stacks = c.kernel.sent + c.off_cpu_stacks;
        let _ = writeln!(
            out,
            "  cost: {:.1} samples/s, {:.0} B of user stack copied per stack ({} stacks); \
             unwinding {:.1} µs per stack; symbolizing and writing {:.0} ms",
            self.samples_in_window as f64
                / (self.window_ns.saturating_sub(paused_ns).max(1) as f64 / 1e9),
            (c.kernel.stack_bytes + c.off_cpu_stack_bytes) as f64 / stacks.max(1) as f64,
            stacks,
            self.unwind_us_per_sample,
            self.symbolize_ms
        );
        out
    }
}
