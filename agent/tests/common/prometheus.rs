//! A real Prometheus (Debian's `prometheus`, installed by `cargo xtask
//! setup` under CI) on loopback, scraping `perf-agent serve` every second
//! with a generated config, and a minimal HTTP client for its query API and
//! for the agent's own endpoint. Killed and its data removed on drop.

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use super::{KillOnDrop, in_ci, scratch_dir, wait_until};

/// A loopback port nobody listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `GET path` on `addr` with an `Accept` header: (status line, body).
pub fn http_get(addr: &str, path: &str, accept: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.lines().next().unwrap_or_default().to_string();
    // Prometheus answers queries in chunks.
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub struct Prometheus {
    _process: KillOnDrop,
    pub addr: String,
    dir: PathBuf,
}

/// The Prometheus binary: `None` (the test skips) outside CI when missing.
pub fn binary() -> Option<PathBuf> {
    let found = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    if found.is_none() {
        assert!(
            !in_ci(),
            "CI=true but prometheus is not installed (cargo xtask setup installs it)"
        );
        eprintln!("\n*** SKIPPED: prometheus is not installed (apt-get install prometheus) ***\n");
    }
    found
}

impl Prometheus {
    /// Starts Prometheus scraping `target` (`ip:port`) every second.
    pub fn start(binary: &PathBuf, target: &str) -> Prometheus {
        let dir = scratch_dir().join(format!("prometheus-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: perf-agent\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let process = KillOnDrop::spawn(
            Command::new(binary)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
                .arg(format!("--web.listen-address={addr}"))
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap()),
            "prometheus",
        );
        let p = Prometheus { _process: process, addr, dir };
        let ready = wait_until(Duration::from_secs(30), || {
            TcpStream::connect(&p.addr).is_ok()
                && http_get(&p.addr, "/-/ready", "*/*").0.contains("200")
        });
        assert!(ready, "prometheus not ready: {}", p.log());
        p
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query: the `result` array.
    pub fn query(&self, promql: &str) -> Vec<serde_json::Value> {
        let (status, body) =
            http_get(&self.addr, &format!("/api/v1/query?query={}", encode(promql)), "*/*");
        let v: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{promql}: {status}: {e}: {body}"));
        assert_eq!(v["status"], "success", "{promql}: {v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// An instant query that returns one sample: its value.
    pub fn value(&self, promql: &str) -> Option<f64> {
        let r = self.query(promql);
        assert!(r.len() <= 1, "{promql}: more than one series: {r:?}");
        r.first()?["value"][1].as_str()?.parse().ok()
    }

    /// Waits until the agent has been scraped successfully `n` more times.
    pub fn wait_scrapes(&self, n: u32) {
        let count = || self.value("count_over_time(up[1h])").unwrap_or(0.0);
        let start = count();
        let done = wait_until(Duration::from_secs(10 + 2 * u64::from(n)), || {
            count() >= start + f64::from(n)
        });
        assert!(done, "prometheus did not scrape {n} times: {}", self.log());
        assert_eq!(self.value("up"), Some(1.0), "the last scrape failed: {}", self.log());
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
