//! The HTTP endpoint: `GET /metrics` and `GET /healthz` on one thread, one
//! connection at a time (a scraper every few seconds is the whole load).
//! Nothing is writable: any other method gets 405, any other path 404.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, bail};

use super::exposition::{self, AgentCounters, Format};
use super::registry::Registry;

/// What the sampling loop shares with the endpoint.
pub struct Shared {
    pub registry: Mutex<Registry>,
    pub agent: Mutex<AgentCounters>,
}

/// Binds `addr` before anything is attached, so a busy or privileged port
/// fails early with the fix. A non-loopback address is allowed only because
/// it was given; it is printed as a warning.
pub fn bind(addr: &str) -> anyhow::Result<TcpListener> {
    let parsed: SocketAddr = addr.parse().with_context(|| {
        format!("--listen {addr:?}: give an IP address and port, e.g. 127.0.0.1:9464")
    })?;
    if parsed.port() < 1024 {
        bail!(
            "--listen {addr}: port {} is privileged (< 1024); give a port from 1024 up, e.g. \
             the default 127.0.0.1:9464",
            parsed.port()
        );
    }
    let listener = TcpListener::bind(parsed).map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => anyhow::anyhow!(
            "--listen {addr}: the port is in use by another process (`ss -ltnp 'sport = :{}'` \
             shows which); give another port with --listen",
            parsed.port()
        ),
        _ => anyhow::Error::new(e).context(format!("--listen {addr}: cannot listen there")),
    })?;
    if !parsed.ip().is_loopback() {
        eprintln!(
            "perf-agent: warning: serving metrics on {parsed}, reachable from other machines \
             (anyone who can reach it sees process names and paths); the default is 127.0.0.1"
        );
    }
    Ok(listener)
}

/// Serves until the process ends (the thread is not joined: it holds no
/// kernel state).
pub fn spawn(listener: TcpListener, shared: Arc<Shared>) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("metrics-http".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Err(e) = handle(stream, &shared) {
                    eprintln!("perf-agent: warning: metrics request: {e}");
                }
            }
        })
        .context("starting the metrics thread")?;
    Ok(())
}

fn handle(stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut accept = String::new();
    // Headers, up to the blank line (at most 100, each at most a line).
    for _ in 0..100 {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("accept")
        {
            accept = value.trim().to_string();
        }
    }
    let mut parts = request_line.split_ascii_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            let format = Format::from_accept(&accept);
            let body = {
                let registry = shared.registry.lock().unwrap_or_else(|p| p.into_inner());
                let agent = shared.agent.lock().unwrap_or_else(|p| p.into_inner()).clone();
                exposition::render(&registry, &agent, format)
            };
            ("200 OK", format.content_type(), body)
        }
        ("GET" | "HEAD", "/healthz") => ("200 OK", "text/plain; charset=utf-8", "ok\n".into()),
        ("GET" | "HEAD", _) => {
            ("404 Not Found", "text/plain; charset=utf-8", "try /metrics or /healthz\n".into())
        }
        _ => {
            ("405 Method Not Allowed", "text/plain; charset=utf-8", "read-only: GET only\n".into())
        }
    };
    let mut out = stream;
    write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n{}\r\n",
        body.len(),
        if status.starts_with("405") { "Allow: GET, HEAD\r\n" } else { "" }
    )?;
    if method != "HEAD" {
        out.write_all(body.as_bytes())?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn privileged_busy_and_malformed_addresses_are_refused() {
        let e = bind("127.0.0.1:80").unwrap_err().to_string();
        assert!(e.contains("privileged"), "{e}");
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let busy = format!("127.0.0.1:{}", taken.local_addr().unwrap().port());
        let e = bind(&busy).unwrap_err().to_string();
        assert!(e.contains("in use"), "{e}");
        assert!(bind("localhost").unwrap_err().to_string().contains("e.g. 127.0.0.1:9464"));
    }

    #[test]
    fn serves_metrics_healthz_and_refuses_writes() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            registry: Mutex::new(Registry::new(vec![0.1])),
            agent: Mutex::new(AgentCounters::default()),
        });
        spawn(listener, shared).unwrap();
        let ask = |request: &str| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(request.as_bytes()).unwrap();
            let mut response = String::new();
            std::io::Read::read_to_string(&mut s, &mut response).unwrap();
            response
        };
        let r = ask("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 200") && r.contains("version=0.0.4"), "{r}");
        assert!(r.contains("perf_agent_targets 0"));
        let r = ask("GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text\r\n\r\n");
        assert!(r.contains("application/openmetrics-text") && r.ends_with("# EOF\n"), "{r}");
        assert!(ask("GET /healthz HTTP/1.1\r\n\r\n").ends_with("\r\n\r\nok\n"));
        assert!(ask("POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
        assert!(ask("GET /other HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
    }
}
