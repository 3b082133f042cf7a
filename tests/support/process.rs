//! Starting the emulators and servers the tests talk to: a free loopback port, a child process
//! with its output in a log file, readiness by an HTTP probe, and a clean give-up that keeps the
//! log for the panic message. moto, kinesis-mock and Prometheus all start this way.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How many times a server is started on a fresh port before a test gives up (another process
/// may take the port between the probe and the server's bind).
pub const START_ATTEMPTS: usize = 3;

/// A port that was free on 127.0.0.1 a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Spawns `cmd` with no stdin and stdout and stderr into a new file at `log_path`.
pub fn launch(cmd: &mut Command, log_path: &Path, what: &str) -> Child {
    let log = std::fs::File::create(log_path)
        .unwrap_or_else(|e| panic!("create {what} log {}: {e}", log_path.display()));
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone a log handle"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what} ({:?}): {e}", cmd.get_program()))
}

/// Kills and reaps a child that did not become ready; returns `error` with its log.
pub fn give_up(mut child: Child, log_path: &Path, what: &str, error: String) -> String {
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(log_path).unwrap_or_default();
    format!("{error}\n--- {what} log ---\n{log}")
}

/// Whether `GET path` on 127.0.0.1:port answers 200.
pub fn http_get_ok(port: u16, path: &str) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut conn) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    if conn.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    conn.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") && head.ends_with(b"200")
}

/// Waits until `GET path` on `port` answers 200 while `child` runs, then `settle`s and checks the
/// child is still running (a server that lost the port race exits instead of serving).
pub fn wait_ready(
    child: &mut Child,
    port: u16,
    path: &str,
    settle: Duration,
    timeout: Duration,
    what: &str,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Err(format!("{what} exited early: {status}"));
        }
        if http_get_ok(port, path) {
            std::thread::sleep(settle);
            return match child.try_wait().map_err(|e| e.to_string())? {
                None => Ok(()),
                Some(status) => Err(format!("{what} exited: {status}")),
            };
        }
        if Instant::now() > deadline {
            return Err(format!("no answer on port {port} after {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
