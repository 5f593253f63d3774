//! Time the hypervisor stole from the target's threads while they ran,
//! estimated for the off-CPU totals ([`super::tick_totals`]) when no
//! program runs at context switches (without `--runq-waits`, which sums it
//! exactly at each switch-out, `agent-ebpf/src/sched.rs`).
//!
//! On a VM the scheduler's task clock skips stolen time: a running thread
//! loses it from its CPU time, and without a correction its off-CPU total
//! would count it as blocked. The estimate: the machine's steal as a share
//! of its busy time (`/proc/stat`, over the last second), times the CPU
//! time the thread ran. It is exact when the host steals evenly from the
//! busy CPUs, and costs one read of `/proc/stat` per 100 ms instead of
//! ~0.1 µs at every context switch of the machine (`docs/performance.md`,
//! nineteenth session).

use std::collections::VecDeque;

/// How far back the steal share looks: long enough that `/proc/stat`'s
/// 10 ms ticks are a small part of it, short enough to follow the host.
const WINDOW_NS: u64 = 1_000_000_000;
/// `/proc/stat` is read at most this often (a read takes tens of µs).
const READ_EVERY_NS: u64 = 100_000_000;

/// The machine's busy and stolen CPU time, in `/proc/stat`'s ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatTimes {
    /// user + nice + system + irq + softirq (guest time is inside user).
    pub busy: u64,
    pub steal: u64,
}

impl StatTimes {
    /// From the text of `/proc/stat`: its first line, `cpu  user nice
    /// system idle iowait irq softirq steal …`. `None` if it is not there.
    pub fn parse(stat: &str) -> Option<StatTimes> {
        let line = stat.lines().next()?;
        let mut fields = line.split_ascii_whitespace();
        if fields.next()? != "cpu" {
            return None;
        }
        let v: Vec<u64> = fields.take(8).map(str::parse).collect::<Result<_, _>>().ok()?;
        let [user, nice, system, _idle, _iowait, irq, softirq, steal] = v[..] else {
            return None;
        };
        Some(StatTimes { busy: user + nice + system + irq + softirq, steal })
    }

    fn read() -> Option<StatTimes> {
        StatTimes::parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }
}

/// Readings of `/proc/stat` over the last [`WINDOW_NS`], and the first.
#[derive(Debug, Default)]
pub struct HostSteal {
    readings: VecDeque<(u64, StatTimes)>,
    first: Option<StatTimes>,
}

impl HostSteal {
    /// Stolen ns per ns of CPU time run at `now_ns` (over the last second;
    /// 0 until two readings differ). `/proc/stat` is read when the last
    /// reading is [`READ_EVERY_NS`] old; unreadable, the share is 0 (no
    /// correction, as on bare metal).
    pub fn share(&mut self, now_ns: u64) -> f64 {
        let due = self.readings.back().is_none_or(|(t, _)| now_ns >= t + READ_EVERY_NS);
        if due && let Some(times) = StatTimes::read() {
            self.add(now_ns, times);
        }
        self.window_share()
    }

    /// A reading `times` at `now_ns`.
    pub fn add(&mut self, now_ns: u64, times: StatTimes) {
        self.first.get_or_insert(times);
        self.readings.push_back((now_ns, times));
        // Keep the newest reading at least a window old as the base.
        while self.readings.len() > 2 && self.readings[1].0 + WINDOW_NS <= now_ns {
            self.readings.pop_front();
        }
    }

    /// Steal per busy ns between the oldest and newest readings kept.
    pub fn window_share(&self) -> f64 {
        match (self.readings.front(), self.readings.back()) {
            (Some((_, a)), Some((_, b))) => ratio(a, b),
            _ => 0.0,
        }
    }

    /// Steal as a share of busy time since the first reading: for the
    /// summary. `None` before two readings.
    pub fn overall_share(&self) -> Option<f64> {
        let (first, (_, last)) = (self.first?, self.readings.back()?);
        (last.busy > first.busy).then(|| ratio(&first, last))
    }
}

fn ratio(a: &StatTimes, b: &StatTimes) -> f64 {
    let busy = b.busy.saturating_sub(a.busy);
    if busy == 0 { 0.0 } else { b.steal.saturating_sub(a.steal) as f64 / busy as f64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn parses_the_machine_line_of_proc_stat() {
        let stat = "cpu  100 5 40 9000 7 3 2 50 30 0\ncpu0 50 2 20 4500 3 1 1 25 15 0\n";
        assert_eq!(StatTimes::parse(stat), Some(StatTimes { busy: 150, steal: 50 }));
        assert_eq!(StatTimes::parse("cpu0 1 2 3 4 5 6 7 8\n"), None);
        assert_eq!(StatTimes::parse("cpu  1 2 3\n"), None, "too few fields");
        assert!(StatTimes::read().is_some(), "this machine's /proc/stat");
    }

    #[test]
    fn the_share_follows_the_last_second() {
        let mut h = HostSteal::default();
        let at = |busy, steal| StatTimes { busy, steal };
        assert_eq!(h.window_share(), 0.0);
        h.add(0, at(1000, 0));
        h.add(SEC / 2, at(1050, 0));
        assert_eq!(h.window_share(), 0.0);
        // The host steals 20 ticks per 100 busy from here on.
        h.add(SEC, at(1150, 20));
        assert!((h.window_share() - 20.0 / 150.0).abs() < 1e-12);
        h.add(2 * SEC, at(1250, 40));
        h.add(3 * SEC, at(1350, 60));
        assert!((h.window_share() - 0.2).abs() < 1e-12, "{h:?}");
        assert!((h.overall_share().unwrap() - 60.0 / 350.0).abs() < 1e-12);
        // No busy time in the window: nothing to scale.
        h.add(5 * SEC, at(1350, 60));
        h.add(7 * SEC, at(1350, 60));
        assert_eq!(h.window_share(), 0.0);
    }
}
