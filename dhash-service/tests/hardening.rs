//! Abusive HTTP clients against the real service: header and body limits,
//! slow senders, connection floods, and the health answer of a service
//! whose hash workers cannot finish. Raw sockets on loopback, every wait
//! bounded by socket timeouts or a deadline.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{get, images, Fixture, Service, BIN};

fn addr(svc: &Service) -> String {
    svc.url.trim_start_matches("http://").to_string()
}

/// A loopback connection whose reads and writes give up after 10 s.
fn connect(svc: &Service) -> TcpStream {
    let s = TcpStream::connect(addr(svc)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// One raw answer: status, head and body text.
#[derive(Debug)]
struct Raw {
    status: u16,
    head: String,
    body: String,
}

impl Raw {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
}

/// Reads one answer: up to the end of its content-length body, or EOF.
/// None when the connection ended (or reset) before a status line.
fn read_reply(s: &mut TcpStream) -> Option<Raw> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let status = head.split(' ').nth(1)?.parse().ok()?;
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).to_string();
                return Some(Raw { status, head, body });
            }
        }
        match s.read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Whether the server closed the connection (EOF or reset) within `within`.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut b = [0u8; 1024];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false
            }
            Err(_) => return true,
        }
    }
}

/// A kB figure of /proc/<pid>/status (VmRSS, VmHWM).
fn proc_kb(pid: i32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Sends `prefix` then `fill` bytes in 64 KiB writes until the server stops
/// taking them or `cap` bytes went; returns the answer if one came.
fn flood(svc: &Service, prefix: &str, fill: u8, cap: usize) -> (usize, Option<Raw>) {
    let mut s = connect(svc);
    s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut reader = s.try_clone().unwrap();
    let answer = thread::spawn(move || read_reply(&mut reader));
    let mut sent = 0;
    if s.write_all(prefix.as_bytes()).is_ok() {
        let chunk = vec![fill; 64 * 1024];
        while sent < cap && s.write_all(&chunk).is_ok() {
            sent += chunk.len();
        }
    }
    (sent, answer.join().unwrap())
}

fn metrics(svc: &Service) -> Value {
    let r = get(&svc.u("/metrics"));
    assert_eq!(r.status, 200, "{}", r.text);
    r.json()
}

/// Waits (at most 5 s) until the service has closed every connection but
/// the one asking, so a count of connections starts from zero.
fn settle(svc: &Service) {
    let t0 = Instant::now();
    while metrics(svc)["connections"]["open"] != 1 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "connections stay open"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// A normal hash POST on a fresh connection: (status, how long it took).
fn timed_hash(svc: &Service) -> (u16, Duration) {
    let t0 = Instant::now();
    let r = svc.hash(&images::blocks_png(7).unwrap());
    (r.status, t0.elapsed())
}

#[test]
fn endless_header_lines_get_431_and_memory_stays_bounded() {
    let fx = Fixture::new(&[]);
    let svc = fx.start(&[]);
    let pid = svc.pid();
    assert_eq!(get(&svc.u("/health")).status, 200);
    let before_kb = proc_kb(pid, "VmRSS");
    // Four clients each try to send a 64 MB header line (the 4 × 640 MB).
    let url_svc = &svc;
    let results: Vec<(usize, Option<Raw>)> = thread::scope(|scope| {
        let hs: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(move || {
                    flood(
                        url_svc,
                        "GET /health HTTP/1.1\r\nHost: x\r\nX-Endless: ",
                        b'a',
                        64 << 20,
                    )
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (sent, answer) in &results {
        assert!(*sent < 64 << 20, "the service kept reading: {sent} bytes");
        let a = answer.as_ref().expect("an answer to an endless header");
        assert_eq!(a.status, 431, "{a:?}");
    }
    let hwm_kb = proc_kb(pid, "VmHWM");
    eprintln!(
        "endless headers: RSS before {before_kb} kB, peak {hwm_kb} kB, sent {:?}",
        results.iter().map(|r| r.0).collect::<Vec<_>>()
    );
    assert!(
        hwm_kb < before_kb + 64 * 1024,
        "peak RSS {hwm_kb} kB, {before_kb} kB before"
    );
    assert_eq!(get(&svc.u("/health")).status, 200);
    assert_eq!(metrics(&svc)["head_rejected_total"], 4);
}

#[test]
fn too_many_header_lines_get_431() {
    let fx = Fixture::new(&[]);
    let svc = fx.start(&[]);
    let request = |lines: usize| {
        let mut s = connect(&svc);
        let mut req = String::from("GET /health HTTP/1.1\r\nHost: x\r\n");
        for i in 1..lines {
            req.push_str(&format!("X-H{i}: v\r\n"));
        }
        req.push_str("Connection: close\r\n\r\n");
        s.write_all(req.as_bytes()).unwrap();
        read_reply(&mut s).unwrap_or_else(|| panic!("no answer to {lines} header lines"))
    };
    // Host, 98 more, Connection: 100 lines, the default limit.
    let ok = request(99);
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(ok.json()["status"], "ok");
    let refused = request(101);
    assert_eq!(refused.status, 431, "{refused:?}");
    // Many small lines that pass the line count but not the 32 KiB head.
    let mut s = connect(&svc);
    let mut req = String::from("GET /health HTTP/1.1\r\nHost: x\r\n");
    for i in 0..50 {
        req.push_str(&format!("X-H{i}: {}\r\n", "v".repeat(1000)));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let big = read_reply(&mut s).expect("an answer to a 50 KB head");
    assert_eq!(big.status, 431, "{big:?}");
    // A lower limit from the command line applies.
    drop(svc);
    let svc = fx.start(&["--limit", "header_lines=10"]);
    let mut s = connect(&svc);
    let mut req = String::from("GET /health HTTP/1.1\r\nHost: x\r\n");
    for i in 0..12 {
        req.push_str(&format!("X-H{i}: v\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    assert_eq!(read_reply(&mut s).unwrap().status, 431);
    assert_eq!(get(&svc.u("/health")).status, 200);
    assert_eq!(metrics(&svc)["head_rejected_total"], 1);
}

#[test]
fn long_request_targets_and_endless_request_lines_get_414() {
    let fx = Fixture::new(&[]);
    let svc = fx.start(&[]);
    let pid = svc.pid();
    // Over the 8 KiB target limit: 414 with a JSON reason.
    let mut s = connect(&svc);
    let target = format!("/health?pad={}", "a".repeat(9000));
    s.write_all(format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .unwrap();
    let r = read_reply(&mut s).expect("an answer to a 9 KB target");
    assert_eq!(r.status, 414, "{r:?}");
    let e = r.json();
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("exceeds the limit of 8192 bytes"),
        "{e}"
    );
    assert!(closed_within(&mut s, Duration::from_secs(5)));
    // Just under the limit: served.
    let ok = get(&svc.u(&format!("/health?pad={}", "a".repeat(8000))));
    assert_eq!(ok.status, 200);
    // A request line with no end: 414 once it passes the limit, never
    // buffered.
    let before_kb = proc_kb(pid, "VmRSS");
    let (sent, answer) = flood(&svc, "GET /", b'a', 64 << 20);
    assert!(sent < 64 << 20, "the service kept reading: {sent} bytes");
    let a = answer.expect("an answer to an endless request line");
    assert_eq!(a.status, 414, "{a:?}");
    assert_eq!(a.json()["limit_bytes"], 8192);
    // A long target on a kept-alive connection's second request: 414 too.
    let mut s = connect(&svc);
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_reply(&mut s).unwrap().status, 200);
    s.write_all(
        format!(
            "GET /health?pad={} HTTP/1.1\r\nHost: x\r\n\r\n",
            "b".repeat(20_000)
        )
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(read_reply(&mut s).unwrap().status, 414);
    let hwm_kb = proc_kb(pid, "VmHWM");
    assert!(
        hwm_kb < before_kb + 64 * 1024,
        "peak RSS {hwm_kb} kB, {before_kb} kB before"
    );
    assert_eq!(get(&svc.u("/health")).status, 200);
    assert_eq!(metrics(&svc)["head_rejected_total"], 3);
}

/// Opens `n` hash POSTs that declare 1 MB and send 2 bytes, then stall.
fn slow_bodies(svc: &Service, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let mut s = connect(svc);
            s.write_all(
                b"POST /api/dhash/hash HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 1048576\r\n\r\n\x89P",
            )
            .unwrap();
            s
        })
        .collect()
}

#[test]
fn slow_bodies_do_not_starve_hashing() {
    let fx = Fixture::new(&[]);
    let svc = fx.start(&[]);
    // Twice as many slow senders as hash workers (8).
    let slow = slow_bodies(&svc, 16);
    thread::sleep(Duration::from_millis(300));
    for _ in 0..3 {
        let (status, took) = timed_hash(&svc);
        assert_eq!(status, 200);
        assert!(took < Duration::from_secs(3), "hash took {took:?}");
    }
    let h = get(&svc.u("/health"));
    assert_eq!(h.status, 200, "{}", h.text);
    let m = metrics(&svc);
    assert_eq!(m["connections"]["bodies_receiving"], 16, "{m}");
    assert_eq!(m["hashing"]["busy"], 0, "no worker waits on a body: {m}");
    assert_eq!(m["hash_requests_total"], 3);
    drop(slow);
}

#[test]
fn slow_bodies_are_cut_off_at_their_deadline() {
    let fx = Fixture::new(&[]);
    let svc = fx.start(&["--limit", "body_timeout_ms=1000"]);
    // Declares 1 MB, sends 2 bytes, stalls.
    let mut stalled = slow_bodies(&svc, 1).remove(0);
    // Sends a byte every 100 ms: alive, but never done in time.
    let mut trickle = connect(&svc);
    trickle
        .write_all(b"POST /api/dhash/hash HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        .unwrap();
    let t0 = Instant::now();
    let writer = {
        let mut w = trickle.try_clone().unwrap();
        thread::spawn(move || {
            for _ in 0..50 {
                if w.write_all(b"x").is_err() {
                    return;
                }
                thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let r = read_reply(&mut stalled).expect("an answer to the stalled body");
    let took = t0.elapsed();
    assert_eq!(r.status, 408, "{r:?}");
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(4),
        "{took:?}"
    );
    let e = r.json();
    let msg = e["error"].as_str().unwrap();
    assert!(
        msg.contains("within 1000 ms") && msg.contains("2 of 1048576 bytes"),
        "{msg}"
    );
    assert!(
        r.head.to_ascii_lowercase().contains("connection: close"),
        "{r:?}"
    );
    assert!(closed_within(&mut stalled, Duration::from_secs(5)));
    let r = read_reply(&mut trickle).expect("an answer to the trickle");
    assert_eq!(r.status, 408, "{r:?}");
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
    writer.join().unwrap();
    // A slow head is closed at its deadline too.
    drop(svc);
    let svc = fx.start(&["--limit", "header_timeout_ms=1000"]);
    // A kept-alive connection that served a request, then idles: closed at
    // the same deadline, but idle is not slow (not counted).
    let mut kept = connect(&svc);
    kept.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_reply(&mut kept).unwrap().status, 200);
    let mut s = connect(&svc);
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").unwrap();
    let t0 = Instant::now();
    assert!(closed_within(&mut s, Duration::from_secs(5)));
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
    assert!(closed_within(&mut kept, Duration::from_secs(2)));
    let m = metrics(&svc);
    assert_eq!(m["client_timeouts_total"], 1, "{m}");
    assert_eq!(get(&svc.u("/health")).status, 200);
}

#[test]
fn body_readers_and_connections_are_bounded() {
    let fx = Fixture::new(&[]);
    let svc = fx.start(&["--limit", "body_readers=2", "--limit", "max_connections=6"]);
    let slow = slow_bodies(&svc, 2);
    thread::sleep(Duration::from_millis(300));
    let r = svc.hash(&images::blocks_png(1).unwrap());
    assert_eq!(r.status, 503, "{}", r.text);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("2 request bodies"),
        "{}",
        r.text
    );
    // The light endpoints do not read bodies: still served.
    assert_eq!(get(&svc.u("/health")).status, 200);
    drop(slow);
    thread::sleep(Duration::from_millis(300));
    assert_eq!(svc.hash(&images::blocks_png(1).unwrap()).status, 200);

    // 9 kept-alive connections against a limit of 6: at most 6 are served,
    // the others get 503 and are closed. (The connection that asked for the
    // metrics just before may still hold a slot for a moment: 5 or 6.)
    settle(&svc);
    let mut conns: Vec<TcpStream> = (0..9).map(|_| connect(&svc)).collect();
    thread::sleep(Duration::from_millis(300));
    let mut statuses = Vec::new();
    for c in &mut conns {
        // A refused connection already holds its 503; read it before
        // writing (a write to a closed socket could reset it unread).
        c.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let r = read_reply(c).unwrap_or_else(|| {
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            read_reply(c).expect("an answer to a served connection")
        });
        if r.status == 503 {
            assert!(
                r.json()["error"]
                    .as_str()
                    .unwrap()
                    .contains("6 connections"),
                "{r:?}"
            );
        }
        statuses.push(r.status);
    }
    let served = statuses.iter().filter(|&&s| s == 200).count();
    let refused = statuses.iter().filter(|&&s| s == 503).count();
    assert!(
        matches!(served, 5 | 6) && served + refused == 9,
        "{statuses:?}"
    );
    drop(conns);
    settle(&svc);
    let m = metrics(&svc);
    assert_eq!(m["connections_refused_total"], refused, "{m}");
    assert_eq!(m["errors_total"], 1, "the busy 503 is a 5xx on /api/: {m}");
}

#[test]
fn bodies_in_memory_are_bounded_in_bytes() {
    let fx = Fixture::new(&[]);
    // 24 MiB for all bodies in memory (the smallest allowed: ≥ the 20 MiB
    // body limit).
    let svc = fx.start(&["--limit", "body_memory_bytes=25165824"]);
    let head = "POST /api/dhash/hash HTTP/1.1\r\nHost: x\r\nContent-Length: 20000000\r\n\r\n";
    // A sends 14 MiB of its 20 MB and stalls: 14 MiB held.
    let mut a = connect(&svc);
    a.write_all(head.as_bytes()).unwrap();
    a.write_all(&vec![b'a'; 14 << 20]).unwrap();
    let t0 = Instant::now();
    while metrics(&svc)["connections"]["bodies_bytes"] != 14 << 20 {
        assert!(t0.elapsed() < Duration::from_secs(5), "{}", metrics(&svc));
        thread::sleep(Duration::from_millis(50));
    }
    // B would pass the budget after 10 MiB: 503, closed.
    let (sent, answer) = flood(&svc, head, b'b', 14 << 20);
    let r = answer.expect("an answer to the body over the memory budget");
    assert_eq!(r.status, 503, "{r:?} after {sent} bytes");
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("25165824 bytes"),
        "{r:?}"
    );
    // Small bodies still fit beside A.
    assert_eq!(timed_hash(&svc).0, 200);
    drop(a);
    settle(&svc);
    let m = metrics(&svc);
    assert_eq!(m["connections"]["bodies_bytes"], 0, "{m}");
    assert_eq!(m["errors_total"], 1, "{m}");
    // A budget below the body limit is refused at start.
    let o = fx
        .serve_cmd("127.0.0.1:0", &["--limit", "body_memory_bytes=1048576"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("below max_body_bytes"), "{err}");
}

#[test]
fn health_reports_hashing_that_cannot_finish() {
    let fx = Fixture::new(&[]);
    let svc = fx.start(&[
        "--workers",
        "2",
        "--fault",
        "hash_latency_ms=4000",
        "--limit",
        "hash_stall_ms=800",
    ]);
    let url = svc.u("/api/dhash/hash");
    let send = |i: u64| {
        let url = url.clone();
        thread::spawn(move || super::post(&url, &images::blocks_png(i).unwrap()).status)
    };
    let first = send(1);
    thread::sleep(Duration::from_millis(1200));
    // One of two workers is free: the service can hash.
    let h = get(&svc.u("/health"));
    assert_eq!(h.status, 200, "{}", h.text);
    let second = send(2);
    thread::sleep(Duration::from_millis(1300));
    // Both busy, none finished for > 0.8 s: degraded.
    let h = get(&svc.u("/health"));
    assert_eq!(h.status, 503, "{}", h.text);
    let j = h.json();
    assert_eq!(j["status"], "degraded");
    let reason = j["reason"].as_str().unwrap();
    assert!(
        reason.contains("cannot hash") && reason.contains("all 2 hash workers busy"),
        "{reason}"
    );
    let m = metrics(&svc);
    assert_eq!(m["hashing"]["busy"], 2, "{m}");
    assert!(
        m["hashing"]["stalled_seconds"].as_f64().unwrap() >= 0.8,
        "{m}"
    );
    let t = get(&svc.u("/metrics?format=prometheus")).text;
    assert!(t.contains("dhash_hash_workers_busy 2\n"), "{t}");
    assert_eq!(first.join().unwrap(), 200);
    assert_eq!(second.join().unwrap(), 200);
    // Hashes finish again: healthy.
    let h = get(&svc.u("/health"));
    assert_eq!(h.status, 200, "{}", h.text);
    assert_eq!(metrics(&svc)["hashing"]["stalled_seconds"], 0.0);
}

#[test]
fn chunked_and_expect_continue_bodies_and_head_requests_still_work() {
    let fx = Fixture::new(&[]);
    let svc = fx.start(&[]);
    let png = images::blocks_png(3).unwrap();
    let want = dhash_service::dhash::hash_bytes(&png).unwrap().hex();
    // Chunked transfer encoding.
    let mut s = connect(&svc);
    let mut req =
        b"POST /api/dhash/hash HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for part in png.chunks(100) {
        req.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        req.extend_from_slice(part);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    s.write_all(&req).unwrap();
    let r = read_reply(&mut s).unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["dhash"], want.as_str());
    // Keep-alive: the same connection serves the next request.
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_reply(&mut s).unwrap().status, 200);
    // Expect: 100-continue gets the interim answer, then the hash.
    let mut s = connect(&svc);
    s.write_all(
        format!(
            "POST /api/dhash/hash HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            png.len()
        )
        .as_bytes(),
    )
    .unwrap();
    let mut first = [0u8; 25];
    s.read_exact(&mut first).unwrap();
    assert!(first.starts_with(b"HTTP/1.1 100 Continue\r\n"), "{first:?}");
    s.write_all(&png).unwrap();
    let r = read_reply(&mut s).unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["dhash"], want.as_str());
    // Too large with Expect: refused without waiting for the body.
    let mut s = connect(&svc);
    s.write_all(b"POST /api/dhash/hash HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 999999999\r\n\r\n").unwrap();
    let r = read_reply(&mut s).unwrap();
    assert_eq!(r.status, 413, "{r:?}");
    assert_eq!(r.json()["limit_bytes"], 20 * 1024 * 1024);
    // HEAD /health: the status and no body.
    let mut s = connect(&svc);
    s.write_all(b"HEAD /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("\r\n\r\n"), "no body after the head: {text}");
    // A malformed request line: 400.
    let mut s = connect(&svc);
    s.write_all(b"GARBAGE\x01 / HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(read_reply(&mut s).unwrap().status, 400);
}

#[test]
fn bad_limit_arguments_exit_2() {
    for arg in [
        "body_timeout_ms=0",
        "header_lines=-1",
        "nope=3",
        "max_connections",
        "header_bytes=99999999999999999999999",
    ] {
        let o = std::process::Command::new(BIN)
            .args(["serve", "--database", "/nonexistent", "--limit", arg])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{arg}: {err}");
        assert!(err.contains("--limit"), "{arg}: {err}");
    }
}

#[test]
fn sigterm_with_a_slow_sender_still_exits_0_in_bounded_time() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let fx = Fixture::new(&[]);
    let mut svc = fx.start(&["--limit", "body_timeout_ms=2000"]);
    let mut slow = slow_bodies(&svc, 1).remove(0);
    // An idle kept-alive connection too: closed at once by the shutdown.
    let mut idle = connect(&svc);
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_reply(&mut idle).unwrap().status, 200);
    thread::sleep(Duration::from_millis(200));
    let t0 = Instant::now();
    kill(Pid::from_raw(svc.pid()), Signal::SIGTERM).unwrap();
    assert!(closed_within(&mut idle, Duration::from_secs(2)));
    // The slow body gets its 408 at its deadline, then the service exits.
    let r = read_reply(&mut slow).expect("the slow sender's answer");
    assert_eq!(r.status, 408, "{r:?}");
    let st = svc.wait_exit(Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "stderr: {}", svc.stderr.lock().unwrap());
    assert!(t0.elapsed() < Duration::from_secs(6), "{:?}", t0.elapsed());
}
