//! Loopback HTTP receivers for tests: a real HTTP server on `127.0.0.1:<free
//! port>` that records every request (method, path, headers, body, arrival
//! time) and answers from a script.
//!
//! ```no_run
//! use testkit::receiver::{Receiver, Reply};
//! // Fails twice, then accepts like Slack does.
//! let rx = Receiver::start(vec![Reply::status(500), Reply::status(500), Reply::ok_text("ok")]);
//! let url = rx.url_with("/services/T000/B000/XXXX");
//! // ... point the tool at `url` ...
//! assert_eq!(rx.requests().len(), 3);
//! ```
//!
//! Replies are used in order; once the script is used up the last reply is
//! repeated (an empty script answers `200 ok`). [`Reply::hang`] never answers:
//! the request is held open until the receiver is dropped. The server stops on
//! `Drop`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One scripted answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub headers: Vec<(String, String)>,
    /// Wait this long before answering (other requests are still served).
    pub delay: Option<Duration>,
    /// Never answer; hold the connection open until the receiver stops.
    pub hang: bool,
}

impl Reply {
    /// A status with an empty body.
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            body: String::new(),
            headers: Vec::new(),
            delay: None,
            hang: false,
        }
    }

    /// `200` with a plain-text body (Slack answers `200 ok`).
    pub fn ok_text(body: &str) -> Reply {
        Reply::text(200, body)
    }

    /// Any status with a plain-text body.
    pub fn text(status: u16, body: &str) -> Reply {
        Reply::status(status)
            .body(body)
            .header("Content-Type", "text/plain; charset=utf-8")
    }

    /// Any status with a JSON body, e.g. `Reply::json(429, r#"{"retry_after":0.5}"#)`.
    pub fn json(status: u16, body: &str) -> Reply {
        Reply::status(status)
            .body(body)
            .header("Content-Type", "application/json")
    }

    /// Never answers.
    pub fn hang() -> Reply {
        Reply {
            hang: true,
            ..Reply::status(0)
        }
    }

    pub fn body(mut self, body: &str) -> Reply {
        self.body = body.to_string();
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Answers after `delay`.
    pub fn after(mut self, delay: Duration) -> Reply {
        self.delay = Some(delay);
        self
    }
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query as sent (`/services/T0/B0/x?wait=true`).
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// When the request arrived (for timing assertions such as `retry_after`).
    pub at: Instant,
}

impl Recorded {
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON (`Value::Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A loopback HTTP server answering from a script. Stops on drop.
pub struct Receiver {
    server: Arc<tiny_http::Server>,
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Receiver {
    /// Binds `127.0.0.1:0` and serves `script` in a background thread.
    ///
    /// Panics when no loopback port can be bound (a test cannot go on then).
    pub fn start(script: Vec<Reply>) -> Receiver {
        Self::try_start(script).unwrap_or_else(|e| panic!("receiver: cannot start: {e:#}"))
    }

    pub fn try_start(script: Vec<Reply>) -> anyhow::Result<Receiver> {
        let server = tiny_http::Server::http("127.0.0.1:0")
            .map_err(|e| anyhow::anyhow!("binding 127.0.0.1:0: {e}"))?;
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| anyhow::anyhow!("receiver is not on an IP socket"))?;
        let server = Arc::new(server);
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let server = Arc::clone(&server);
            let requests = Arc::clone(&requests);
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name(format!("receiver-{}", addr.port()))
                .spawn(move || serve(&server, &requests, &stop, script))?
        };
        Ok(Receiver {
            server,
            addr,
            requests,
            stop,
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://127.0.0.1:<port><path>` (path starts with `/`).
    pub fn url_with(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Waits until at least `n` requests arrived or `timeout` passed; returns
    /// what arrived.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Recorded> {
        let end = Instant::now() + timeout;
        loop {
            let got = self.requests();
            if got.len() >= n || Instant::now() >= end {
                return got;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    server: &tiny_http::Server,
    requests: &Mutex<Vec<Recorded>>,
    stop: &AtomicBool,
    script: Vec<Reply>,
) {
    let mut next = 0usize;
    // Requests scripted to hang are kept here (dropping one would answer 500).
    let mut held: Vec<tiny_http::Request> = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let mut req = match server.recv_timeout(Duration::from_millis(100)) {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(_) => break,
        };
        let mut body = Vec::new();
        let _ = req.as_reader().read_to_end(&mut body);
        let rec = Recorded {
            method: req.method().as_str().to_string(),
            path: req.url().to_string(),
            headers: req
                .headers()
                .iter()
                .map(|h| {
                    (
                        h.field.as_str().as_str().to_string(),
                        h.value.as_str().to_string(),
                    )
                })
                .collect(),
            body,
            at: Instant::now(),
        };
        if let Ok(mut r) = requests.lock() {
            r.push(rec);
        }
        let reply = script
            .get(next)
            .or_else(|| script.last())
            .cloned()
            .unwrap_or_else(|| Reply::ok_text("ok"));
        next += 1;
        if reply.hang {
            held.push(req);
            continue;
        }
        match reply.delay {
            Some(d) => {
                let _ = std::thread::Builder::new().spawn(move || {
                    std::thread::sleep(d);
                    respond(req, &reply);
                });
            }
            None => respond(req, &reply),
        }
    }
    drop(held);
}

fn respond(req: tiny_http::Request, reply: &Reply) {
    let mut resp = tiny_http::Response::from_string(reply.body.clone())
        .with_status_code(tiny_http::StatusCode(reply.status));
    for (name, value) in &reply.headers {
        if let Ok(h) = tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()) {
            resp.add_header(h);
        }
    }
    let _ = req.respond(resp);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;

    fn post(addr: SocketAddr, path: &str, body: &str) -> String {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .expect("write");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    #[test]
    fn scripted_replies_and_recording() {
        let rx = Receiver::start(vec![
            Reply::status(500),
            Reply::json(429, r#"{"retry_after":0.5}"#),
            Reply::ok_text("ok"),
        ]);
        assert!(post(rx.addr(), "/a", "{}").starts_with("HTTP/1.1 500"));
        let r429 = post(rx.addr(), "/b?x=1", "{\"k\":1}");
        assert!(r429.starts_with("HTTP/1.1 429"), "{r429}");
        assert!(r429.contains("retry_after"));
        assert!(post(rx.addr(), "/c", "").ends_with("ok"));
        assert!(
            post(rx.addr(), "/d", "").ends_with("ok"),
            "last reply repeats"
        );
        let got = rx.requests();
        assert_eq!(got.len(), 4);
        assert_eq!(got[1].path, "/b?x=1");
        assert_eq!(got[1].method, "POST");
        assert_eq!(got[1].json()["k"], 1);
        assert_eq!(got[1].header("content-type"), Some("application/json"));
    }

    #[test]
    fn hang_never_answers() {
        let rx = Receiver::start(vec![Reply::hang()]);
        let mut s = TcpStream::connect(rx.addr()).expect("connect");
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        write!(s, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").expect("write");
        let mut buf = [0u8; 16];
        let err = s.read(&mut buf).expect_err("no answer expected");
        assert!(matches!(
            err.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ));
        assert_eq!(rx.wait_for(1, Duration::from_secs(2)).len(), 1);
    }
}
