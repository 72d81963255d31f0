//! gates_core::probe against real loopback HTTP servers (tiny_http) and raw
//! TCP servers that hang or answer garbage.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use gates_core::probe::{self, probe_health, probe_metrics};
use gates_core::sample::Health;
use gates_core::Emitter;
use serde_json::{json, Value};
use testkit::TestProject;

type Handler = dyn Fn(&str, usize) -> (u16, String) + Send + Sync;

/// A loopback server answering every request through `handler(url, n)`.
struct Scripted {
    server: Arc<tiny_http::Server>,
    port: u16,
    hits: Arc<AtomicUsize>,
}

impl Scripted {
    fn new(handler: impl Fn(&str, usize) -> (u16, String) + Send + Sync + 'static) -> Scripted {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let port = server.server_addr().to_ip().unwrap().port();
        let hits = Arc::new(AtomicUsize::new(0));
        let handler: Arc<Handler> = Arc::new(handler);
        let (s, h) = (Arc::clone(&server), Arc::clone(&hits));
        thread::spawn(move || {
            for req in s.incoming_requests() {
                let n = h.fetch_add(1, Ordering::SeqCst);
                let (status, body) = handler(req.url(), n);
                let resp = tiny_http::Response::from_string(body).with_status_code(status);
                let _ = req.respond(resp);
            }
        });
        Scripted { server, port, hits }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.server.unblock();
    }
}

/// Accepts connections and never answers (holds them open).
fn hanging_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming().flatten() {
            held.push(s);
        }
    });
    port
}

/// Answers every connection with bytes that are not HTTP.
fn garbage_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let _ = s.write_all(b"this is not http at all\r\n\r\n");
        }
    });
    port
}

fn closed_port() -> u16 {
    testkit::free_port()
}

fn metrics_doc() -> Value {
    json!({
        "release": "v1-0000abcd", "uptime_seconds": 12.5,
        "requests_total": 40, "hash_requests_total": 30, "extraction_failures_total": 2, "errors_total": 1,
        "hash_time_ms": {"buckets": [{"le": 5, "count": 10}, {"le": "+Inf", "count": 30}, {"le": 50, "count": 25}],
                          "count": 30, "sum": 900.0},
        "low_confidence_queue": 3,
        "process": {"cpu_percent": 1.5, "memory_rss_bytes": 1000, "memory_percent": 12.0},
        "disk": {"data_dir_bytes": 4096, "disk_percent": 40.0}
    })
}

#[test]
fn health_ok_not_ok_and_error() {
    let s = Scripted::new(|url, _| match url {
        "/ok" => (200, r#"{"status":"ok","release":"r"}"#.into()),
        "/down" => (503, r#"{"status":"error","reason":"schema behind"}"#.into()),
        "/degraded" => (200, r#"{"status":"degraded"}"#.into()),
        "/text" => (200, "fine".into()),
        _ => (404, "nope".into()),
    });
    let t = Duration::from_secs(2);
    assert_eq!(probe_health(&s.url("/ok"), t), Health::Ok);
    match probe_health(&s.url("/down"), t) {
        Health::NotOk { detail } => {
            assert!(
                detail.contains("503") && detail.contains("schema behind"),
                "{detail}"
            )
        }
        other => panic!("503 must be not-ok, got {other:?}"),
    }
    assert!(matches!(
        probe_health(&s.url("/degraded"), t),
        Health::NotOk { .. }
    ));
    assert!(matches!(
        probe_health(&s.url("/text"), t),
        Health::NotOk { .. }
    ));
    assert!(matches!(
        probe_health(&s.url("/missing"), t),
        Health::NotOk { .. }
    ));

    let refused = probe_health(&format!("http://127.0.0.1:{}/health", closed_port()), t);
    assert!(matches!(refused, Health::Error { .. }), "{refused:?}");
    let garbage = probe_health(&format!("http://127.0.0.1:{}/health", garbage_server()), t);
    assert!(matches!(garbage, Health::Error { .. }), "{garbage:?}");
}

#[test]
fn hanging_endpoints_time_out_in_bounded_time() {
    let port = hanging_server();
    let timeout = Duration::from_millis(800);
    let url = format!("http://127.0.0.1:{port}/health");

    let t0 = Instant::now();
    let h = probe_health(&url, timeout);
    assert!(
        t0.elapsed() < timeout + Duration::from_secs(1),
        "took {:?}",
        t0.elapsed()
    );
    match h {
        Health::Error { detail } => assert!(detail.contains("no answer within"), "{detail}"),
        other => panic!("expected an error, got {other:?}"),
    }

    let t0 = Instant::now();
    let m = probe_metrics(
        &format!("http://127.0.0.1:{port}/metrics"),
        &format!("http://127.0.0.1:{port}/api/dhash/queue/status"),
        timeout,
    );
    assert!(m.is_err(), "{m:?}");
    assert!(
        t0.elapsed() < timeout + Duration::from_secs(1),
        "took {:?}",
        t0.elapsed()
    );
}

#[test]
fn metrics_parse_histogram_and_missing_figures() {
    let doc = metrics_doc().to_string();
    let s = Scripted::new(move |url, _| match url {
        "/metrics" => (200, doc.clone()),
        "/bare" => (
            200,
            r#"{"release":"x","hash_time_ms":{"buckets":[{"le":10,"count":1}],"count":4,"sum":9}}"#
                .into(),
        ),
        "/api/dhash/queue/status" => (200, r#"{"length": 7, "oldest_age_seconds": null}"#.into()),
        "/broken" => (200, "{not json".into()),
        _ => (500, r#"{"error":"boom"}"#.into()),
    });
    let t = Duration::from_secs(2);
    let queue = s.url("/api/dhash/queue/status");
    let m = probe_metrics(&s.url("/metrics"), &queue, t).unwrap();
    assert_eq!(m.requests_total, Some(40.0));
    assert_eq!(m.hash_requests_total, Some(30.0));
    assert_eq!(m.extraction_failures_total, Some(2.0));
    assert_eq!(m.errors_total, Some(1.0));
    assert_eq!(
        m.low_confidence_queue,
        Some(3.0),
        "from /metrics, not the queue endpoint"
    );
    assert_eq!(m.memory_percent, Some(12.0));
    assert_eq!(m.cpu_percent, Some(1.5));
    assert_eq!(m.disk_percent, Some(40.0));
    let b = m.hash_time_buckets.unwrap();
    let les: Vec<f64> = b.iter().map(|b| b.le).collect();
    assert_eq!(les, vec![5.0, 50.0, f64::INFINITY], "sorted, +Inf last");
    assert_eq!(b[2].count, 30.0);

    // Missing figures are None (never 0); the queue endpoint fills the queue;
    // a histogram without +Inf gets it from `count`.
    let bare = probe_metrics(&s.url("/bare"), &queue, t).unwrap();
    assert_eq!(bare.requests_total, None);
    assert_eq!(bare.errors_total, None);
    assert_eq!(bare.memory_percent, None);
    assert_eq!(bare.low_confidence_queue, Some(7.0));
    let b = bare.hash_time_buckets.unwrap();
    assert_eq!((b.len(), b[1].le, b[1].count), (2, f64::INFINITY, 4.0));

    // The queue endpoint down: still metrics, queue unknown.
    let no_queue = probe_metrics(&s.url("/bare"), &s.url("/gone"), t).unwrap();
    assert_eq!(no_queue.low_confidence_queue, None);

    let e = probe_metrics(&s.url("/broken"), &queue, t).unwrap_err();
    assert!(e.contains("not JSON"), "{e}");
    let e = probe_metrics(&s.url("/other"), &queue, t).unwrap_err();
    assert!(e.contains("500"), "{e}");
}

fn project_pointing_at(s: &Scripted) -> (TestProject, gates_core::config::EnvConfig) {
    let tp = TestProject::new();
    let (h, m, q) = (
        s.url("/health"),
        s.url("/metrics"),
        s.url("/api/dhash/queue/status"),
    );
    tp.edit_topology(|t| {
        let e = &mut t["environments"]["staging"];
        e["health_url"] = json!(h);
        e["metrics_url"] = json!(m);
        e["queue_url"] = json!(q);
    });
    let env = tp.env("staging");
    (tp, env)
}

#[test]
fn wait_healthy_needs_consecutive_ok_and_a_failure_resets() {
    // ok, ok, FAIL, ok, ok, ok → 6 checks.
    let s = Scripted::new(|url, n| match (url, n) {
        ("/health", 2) => (503, r#"{"status":"error","reason":"blip"}"#.into()),
        ("/health", _) => (200, r#"{"status":"ok"}"#.into()),
        _ => (404, String::new()),
    });
    let (_tp, env) = project_pointing_at(&s);
    let buf = Arc::new(Mutex::new(Vec::new()));
    let em = Emitter::to_writer("probe-test", "staging", Box::new(Shared(Arc::clone(&buf))));
    let checks = probe::wait_healthy(&env, &env.health, &em).unwrap();
    assert_eq!(checks, 6);
    assert_eq!(s.hits.load(Ordering::SeqCst), 6);
    let text = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
    let events: Vec<Value> = testkit::events(text.as_bytes());
    assert_eq!(events.len(), 6);
    assert!(events
        .iter()
        .all(|e| e["event"] == "health.checked" && e["level"] == "debug"));
    assert_eq!(events[2]["state"], "not-ok");
    assert_eq!(events[2]["consecutive_ok"], 0);
    assert_eq!(events[5]["consecutive_ok"], 3);
}

#[test]
fn wait_healthy_fails_within_its_timeout() {
    let s = Scripted::new(|_, _| (503, r#"{"status":"error","reason":"db down"}"#.into()));
    let (_tp, env) = project_pointing_at(&s);
    let mut policy = env.health.clone();
    policy.timeout = Duration::from_millis(1500);
    let t0 = Instant::now();
    let err = probe::wait_healthy(&env, &policy, &Emitter::sink("t", "staging")).unwrap_err();
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t0.elapsed()
    );
    let msg = format!("{err:#}");
    assert!(msg.contains("0 of 3") && msg.contains("db down"), "{msg}");
}

#[test]
fn poll_reads_health_and_metrics() {
    let doc = metrics_doc().to_string();
    let s = Scripted::new(move |url, _| match url {
        "/health" => (200, r#"{"status":"ok"}"#.into()),
        "/metrics" => (200, doc.clone()),
        _ => (404, String::new()),
    });
    let (_tp, env) = project_pointing_at(&s);
    let before = probe::now_ms();
    let sample = probe::poll(&env);
    assert!(sample.t_ms >= before);
    assert_eq!(sample.health, Health::Ok);
    assert_eq!(sample.metrics.unwrap().hash_requests_total, Some(30.0));

    // Nothing listening: both sides are errors, not panics or zeros.
    let tp = TestProject::new();
    let sample = probe::poll(&tp.env("production"));
    assert!(matches!(sample.health, Health::Error { .. }));
    assert!(sample.metrics.is_err());
}

#[derive(Clone)]
struct Shared(Arc<Mutex<Vec<u8>>>);
impl Write for Shared {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
