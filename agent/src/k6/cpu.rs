//! k6's own CPU time, per phase: how busy the load generator was. k6's
//! latencies include its own queueing (a VU waits for a CPU before it reads
//! the response it was sent), so beside a server that answers in 10 µs, a
//! k6 near the machine's cores reports hundreds of µs. Its CPU says which
//! case a run is in. Read from k6's process CPU clock (the scheduler's own
//! total over its threads, ns) at every sample while it runs. Pure apart
//! from the record call's caller.

/// Readings of k6's CPU clock, oldest first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClientCpu {
    /// `(t_ns, cpu_ns)`: CLOCK_MONOTONIC, k6's CPU ns since its start.
    readings: Vec<(u64, u64)>,
}

impl ClientCpu {
    /// k6 had used `cpu_ns` by `t_ns` (not before the last reading).
    pub fn record(&mut self, t_ns: u64, cpu_ns: u64) {
        if self.readings.last().is_none_or(|&(t, _)| t_ns > t) {
            self.readings.push((t_ns, cpu_ns));
        }
    }

    /// k6's CPU ns by `t_ns`: linear between readings, 0 before the first
    /// (its start), the last one's after (it had ended).
    fn at(&self, t_ns: u64) -> u64 {
        let i = self.readings.partition_point(|&(t, _)| t <= t_ns);
        match (i.checked_sub(1).map(|j| self.readings[j]), self.readings.get(i)) {
            (None, _) => 0,
            (Some((_, c)), None) => c,
            (Some((t0, c0)), Some(&(t1, c1))) => {
                let f = (t_ns - t0) as f64 / (t1 - t0) as f64;
                c0 + (c1.saturating_sub(c0) as f64 * f) as u64
            }
        }
    }

    /// Average % of one core k6 used over `[start_ns, end_ns]`; `None`
    /// without readings or for an empty window.
    pub fn percent(&self, start_ns: u64, end_ns: u64) -> Option<f64> {
        if self.readings.is_empty() || end_ns <= start_ns {
            return None;
        }
        let used = self.at(end_ns).saturating_sub(self.at(start_ns));
        Some(used as f64 * 100.0 / (end_ns - start_ns) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn a_window_gets_the_cpu_used_in_it_interpolated_between_readings() {
        let mut c = ClientCpu::default();
        // Started at 100 ms, one core busy until 300 ms, then half a core
        // until it ended at 500 ms.
        c.record(100 * MS, 0);
        c.record(200 * MS, 100 * MS);
        c.record(300 * MS, 200 * MS);
        c.record(500 * MS, 300 * MS);
        c.record(500 * MS, 999 * MS); // not after the last: ignored
        assert_eq!(c.percent(100 * MS, 300 * MS), Some(100.0));
        assert_eq!(c.percent(300 * MS, 500 * MS), Some(50.0));
        // Before its start and after its end it used nothing.
        assert_eq!(c.percent(0, 100 * MS), Some(0.0));
        assert_eq!(c.percent(500 * MS, 900 * MS), Some(0.0));
        // Across the start and the end: (0 + 300 ms) over 1 s.
        assert_eq!(c.percent(0, 1000 * MS), Some(30.0));
        // Between readings: 150 → 400 ms is 50 + 100 + 50 ms of CPU.
        assert_eq!(c.percent(150 * MS, 400 * MS), Some(80.0));
    }

    #[test]
    fn no_readings_or_an_empty_window_give_nothing() {
        assert_eq!(ClientCpu::default().percent(0, MS), None);
        let mut c = ClientCpu::default();
        c.record(MS, 0);
        assert_eq!(c.percent(5 * MS, 5 * MS), None);
    }
}
