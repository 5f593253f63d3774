//! Loopback helpers: a free port, one HTTP GET.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result};

/// A loopback address with a port free right now.
pub fn free_loopback_addr() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a loopback port")?;
    Ok(listener.local_addr()?)
}

/// One `GET path` on a new connection; true on a 200.
pub fn get_ok(addr: SocketAddr, path: &str) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(100)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(request.as_bytes()).is_err() {
        return false;
    }
    // Read the whole response: closing with unread bytes would make the
    // kernel reset the connection, which the agent rightly counts as an error.
    let mut response = Vec::new();
    s.read_to_end(&mut response).is_ok() && response.starts_with(b"HTTP/1.1 200")
}
