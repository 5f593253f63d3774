//! Startup milestones, from the target's exec (time zero) to the first
//! socket in LISTEN, the first accepted connection, the first response byte,
//! and the first healthy / ready response. Pure.

use crate::requests::{FirstResponse, RequestLog};

/// Absolute CLOCK_MONOTONIC times (ns); `None` when not reached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Startup {
    pub exec_ns: u64,
    pub listen_ns: Option<u64>,
    pub listen_port: u32,
    pub first_accept_ns: Option<u64>,
    pub first_response_ns: Option<u64>,
    /// First complete response; with `--health-path`, the first 2xx to it.
    pub healthy_ns: Option<u64>,
    /// First 2xx response; with `--ready-path`, the first 2xx to it.
    pub ready_ns: Option<u64>,
}

/// Which paths were watched.
#[derive(Clone, Copy, Debug, Default)]
pub struct Watched {
    pub health_path: bool,
    pub ready_path: bool,
}

fn nonzero(t: u64) -> Option<u64> {
    (t != 0).then_some(t)
}

impl Startup {
    pub fn compute(
        exec_ns: u64,
        milestones: &agent_common::Milestones,
        log: &RequestLog,
        watched: Watched,
    ) -> Startup {
        let first = |kind| log.first_response_end(kind);
        let healthy_ns =
            first(if watched.health_path { FirstResponse::HealthOk } else { FirstResponse::Any });
        let ready_ns =
            first(if watched.ready_path { FirstResponse::ReadyOk } else { FirstResponse::Ok });
        Startup {
            exec_ns,
            listen_ns: nonzero(milestones.first_listen_ns),
            listen_port: milestones.first_listen_port,
            first_accept_ns: nonzero(milestones.first_accept_ns),
            first_response_ns: nonzero(milestones.first_response_ns),
            healthy_ns,
            ready_ns,
        }
    }

    /// (metric id, ns since exec) of every milestone reached, in order.
    pub fn durations(&self) -> Vec<(&'static str, u64)> {
        let since = |t: Option<u64>| t.map(|t| t.saturating_sub(self.exec_ns));
        [
            ("startup/to_listen", since(self.listen_ns)),
            ("startup/to_first_accept", since(self.first_accept_ns)),
            ("startup/to_first_response", since(self.first_response_ns)),
            ("startup/to_healthy", since(self.healthy_ns)),
            ("startup/to_ready", since(self.ready_ns)),
        ]
        .into_iter()
        .filter_map(|(name, d)| d.map(|d| (name, d)))
        .collect()
    }

    /// The end of startup: ready, else healthy, else listening.
    pub fn end_ns(&self) -> Option<u64> {
        self.ready_ns.or(self.healthy_ns).or(self.listen_ns)
    }

    /// How far it got, for a target that exited or stalled.
    pub fn last_milestone(&self) -> &'static str {
        match self.durations().last() {
            Some((name, _)) => name.trim_start_matches("startup/to_"),
            None => "exec",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_common::{Milestones, NetEvent, conn_flags, event_kind};

    const MS: u64 = 1_000_000;

    fn log_with(reqs: &[(u64, u32, u32)]) -> RequestLog {
        let mut log = RequestLog::default();
        for &(end_ms, status, flags) in reqs {
            log.push(&NetEvent {
                start_ns: end_ms * MS - 100,
                first_response_ns: end_ms * MS - 50,
                end_ns: end_ms * MS,
                kind: event_kind::REQUEST,
                status,
                flags,
                ..Default::default()
            });
        }
        log
    }

    #[test]
    fn milestones_relative_to_exec() {
        let m = Milestones {
            first_listen_ns: 1300 * MS,
            first_accept_ns: 1400 * MS,
            first_response_ns: 1450 * MS,
            first_listen_port: 8080,
            outbound_seen: 0,
        };
        let log = log_with(&[(1500, 503, 0), (1600, 200, 0)]);
        let s = Startup::compute(1000 * MS, &m, &log, Watched::default());
        let d = s.durations();
        assert_eq!(d[0], ("startup/to_listen", 300 * MS));
        assert_eq!(d[1], ("startup/to_first_accept", 400 * MS));
        assert_eq!(d[3], ("startup/to_healthy", 500 * MS), "any complete response");
        assert_eq!(d[4], ("startup/to_ready", 600 * MS), "first 2xx");
        assert_eq!(s.end_ns(), Some(1600 * MS));
    }

    #[test]
    fn watched_paths_need_a_2xx_on_that_path() {
        let log = log_with(&[
            (10, 200, 0),
            (20, 503, conn_flags::PATH_HEALTH),
            (30, 200, conn_flags::PATH_HEALTH),
            (40, 200, conn_flags::PATH_READY),
        ]);
        let w = Watched { health_path: true, ready_path: true };
        let s = Startup::compute(0, &Milestones::default(), &log, w);
        assert_eq!(s.healthy_ns, Some(30 * MS));
        assert_eq!(s.ready_ns, Some(40 * MS));
    }

    #[test]
    fn a_target_that_never_listens() {
        let s =
            Startup::compute(5, &Milestones::default(), &RequestLog::default(), Watched::default());
        assert!(s.durations().is_empty());
        assert_eq!(s.last_milestone(), "exec");
        assert_eq!(s.end_ns(), None);
    }
}
