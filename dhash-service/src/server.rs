//! The HTTP service (`dhash-service serve`).
//!
//! Threads: tiny_http accepts connections; a few *receiver* threads take
//! requests and answer the light endpoints (`/health`, `/metrics`, queue
//! status) themselves, and hand `POST /api/dhash/hash` to a bounded queue
//! served by the *hash workers*. So slow hashing (or the latency fault) never
//! delays `/health`. A full hash queue answers 503 at once.
//!
//! SIGTERM / SIGINT / SIGHUP: stop taking new requests, answer those already
//! received, let the hash workers finish their queue, exit 0.

use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;
use gates_core::{Emitter, Exit, Level, ToolError};
use serde_json::{json, Value};
use tiny_http::{Header, Method, Request, Response, Server};

use crate::config::ServiceConfig;
use crate::db::{self, DbState, NewHash};
use crate::dhash;
use crate::metrics::{self, inc, Gauges, Metrics};
use crate::procstat::{self, CpuMeter};
use gates_core::release::ReleaseManifest;

/// Threads that take requests and answer the light endpoints.
pub const RECEIVERS: usize = 4;
/// Default number of hash workers.
pub const DEFAULT_WORKERS: usize = 8;
/// Hash requests waiting for a worker before new ones get 503.
pub const HASH_QUEUE: usize = 256;
/// A body over the limit is read and discarded up to this size (so the
/// client sees the 413 instead of a reset connection); beyond it the
/// connection is closed.
const DRAIN_CAP: u64 = 512 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub bind: String,
    pub database: PathBuf,
    pub data_dir: PathBuf,
    pub release_dir: PathBuf,
    /// `key=value` fault overrides applied over config.json.
    pub faults: Vec<(String, String)>,
    pub workers: usize,
    pub verbose: bool,
}

struct State {
    release: ReleaseManifest,
    config: ServiceConfig,
    db_path: PathBuf,
    data_dir: PathBuf,
    db_state: Mutex<DbState>,
    metrics: Metrics,
    started: Instant,
    cpu: CpuMeter,
    failure_seq: AtomicU64,
    error_seq: AtomicU64,
    verbose: bool,
}

fn fail(msg: impl std::fmt::Display) -> anyhow::Error {
    ToolError::new(Exit::Failed, anyhow::anyhow!("{msg}")).into()
}

/// Loads the release, checks the database, binds, and serves until a
/// termination signal. Start-up problems are errors (exit 1).
pub fn serve(opts: &ServeOptions, em: &Emitter) -> anyhow::Result<Exit> {
    let release = ReleaseManifest::read(&opts.release_dir).map_err(|e| {
        fail(format!(
            "{e:#} (--release-dir must be an installed release bundle)"
        ))
    })?;
    let config_file = opts.release_dir.join("config.json");
    let mut config = if config_file.exists() {
        ServiceConfig::load(&config_file).map_err(|e| fail(format!("{e:#}")))?
    } else {
        em.human(&format!(
            "{} not found: default settings, no faults",
            config_file.display()
        ));
        ServiceConfig::default()
    };
    config.faults.apply(&opts.faults).map_err(fail)?;

    let (mut conn, db_state) = db::check(&opts.database, release.schema_version, &release.id)
        .map_err(|e| fail(format!("refusing to start: {e}")))?;

    let server = Server::http(opts.bind.as_str())
        .map_err(|e| fail(format!("cannot listen on {}: {e}", opts.bind)))?;
    let addr = server
        .server_addr()
        .to_ip()
        .map(|a| a.to_string())
        .unwrap_or_else(|| opts.bind.clone());

    if config.faults.crash_at_start {
        return Err(fail(format!(
            "fault crash_at_start: release {} exits before serving on {addr}",
            release.id
        )));
    }
    if config.faults.low_confidence_flood > 0 {
        db::flood(
            &mut conn,
            &opts.database,
            db_state,
            config.faults.low_confidence_flood,
        )
        .map_err(|e| fail(format!("fault low_confidence_flood: {e}")))?;
        em.human(&format!(
            "fault low_confidence_flood: {} items added to the low-confidence queue",
            config.faults.low_confidence_flood
        ));
    }
    drop(conn);

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .context("cannot install the signal handler")
            .map_err(|e| fail(format!("{e:#}")))?;
    }

    let state = Arc::new(State {
        release,
        config,
        db_path: opts.database.clone(),
        data_dir: opts.data_dir.clone(),
        db_state: Mutex::new(db_state),
        metrics: Metrics::new(),
        started: Instant::now(),
        cpu: CpuMeter::new(),
        failure_seq: AtomicU64::new(0),
        error_seq: AtomicU64::new(0),
        verbose: opts.verbose,
    });
    let server = Arc::new(server);
    let (tx, rx) = mpsc::sync_channel::<Request>(HASH_QUEUE);
    let rx = Arc::new(Mutex::new(rx));

    let workers: Vec<_> = (0..opts.workers.max(1))
        .map(|i| {
            let (state, rx) = (state.clone(), rx.clone());
            thread::Builder::new()
                .name(format!("hash-{i}"))
                .spawn(move || hash_worker(&state, &rx))
        })
        .collect::<Result<_, _>>()
        .context("cannot start worker threads")?;
    let receivers: Vec<_> = (0..RECEIVERS)
        .map(|i| {
            let (state, server, tx, stop) =
                (state.clone(), server.clone(), tx.clone(), stop.clone());
            thread::Builder::new()
                .name(format!("recv-{i}"))
                .spawn(move || receiver(&server, &state, &tx, &stop))
        })
        .collect::<Result<_, _>>()
        .context("cannot start receiver threads")?;
    drop(tx);

    em.emit(
        "service.started",
        Level::Info,
        format!(
            "dhash-service {} listening on http://{addr}",
            state.release.id
        ),
        json!({
            "bind": addr,
            "url": format!("http://{addr}"),
            "release": state.release.id,
            "schema_version": db_state.schema_version,
            "required_schema_version": state.release.schema_version,
            "faults": state.config.faults.active(),
            "pid": std::process::id(),
        }),
    );

    for r in receivers {
        let _ = r.join();
    }
    em.human("stopping: answering the requests already received");
    for w in workers {
        let _ = w.join();
    }
    let s = state.metrics.snapshot();
    em.emit(
        "service.stopped",
        Level::Info,
        format!("dhash-service {} stopped", state.release.id),
        json!({
            "release": state.release.id,
            "uptime_seconds": state.started.elapsed().as_secs_f64(),
            "requests_total": s.requests_total,
            "hash_requests_total": s.hash_requests_total,
        }),
    );
    Ok(Exit::Ok)
}

fn receiver(server: &Server, st: &State, tx: &SyncSender<Request>, stop: &AtomicBool) {
    loop {
        let next = if stop.load(Ordering::SeqCst) {
            server.try_recv()
        } else {
            server.recv_timeout(Duration::from_millis(200))
        };
        match next {
            Ok(Some(req)) => dispatch(req, st, tx),
            Ok(None) if stop.load(Ordering::SeqCst) => return,
            Ok(None) => {}
            Err(e) => {
                eprintln!("dhash-service: receiving a request: {e}");
                if stop.load(Ordering::SeqCst) {
                    return;
                }
            }
        }
    }
}

fn hash_worker(st: &State, rx: &Mutex<Receiver<Request>>) {
    loop {
        let next = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(req) = next else { return };
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handle_hash(req, st)));
        if outcome.is_err() {
            // The request was dropped during the panic: tiny_http answered 500.
            inc(&st.metrics.errors_total);
            eprintln!("dhash-service: a hash request panicked");
        }
    }
}

fn header(name: &str, value: &str) -> Option<Header> {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).ok()
}

fn respond_json(req: Request, status: u16, body: &Value, st: &State) {
    let method = req.method().clone();
    let url = req.url().to_string();
    let mut resp = Response::from_string(body.to_string()).with_status_code(status);
    if let Some(h) = header("Content-Type", "application/json") {
        resp = resp.with_header(h);
    }
    log(st, &method, &url, status);
    if let Err(e) = req.respond(resp) {
        eprintln!("dhash-service: writing the answer to {method} {url}: {e}");
    }
}

fn respond_text(req: Request, status: u16, body: String, content_type: &str, st: &State) {
    let method = req.method().clone();
    let url = req.url().to_string();
    let mut resp = Response::from_string(body).with_status_code(status);
    if let Some(h) = header("Content-Type", content_type) {
        resp = resp.with_header(h);
    }
    log(st, &method, &url, status);
    if let Err(e) = req.respond(resp) {
        eprintln!("dhash-service: writing the answer to {method} {url}: {e}");
    }
}

fn log(st: &State, method: &Method, url: &str, status: u16) {
    if st.verbose || status >= 500 && url.starts_with("/api/") {
        eprintln!("dhash-service: {method} {url} {status}");
    }
}

fn dispatch(req: Request, st: &State, tx: &SyncSender<Request>) {
    let url = req.url().to_string();
    let (path, query) = url.split_once('?').unwrap_or((url.as_str(), ""));
    let method = req.method().clone();
    let is_api = path.starts_with("/api/");
    if is_api {
        inc(&st.metrics.requests_total);
    }
    let allowed: Option<&str> = match path {
        "/health" | "/metrics" | "/api/dhash/queue/status" => Some("GET"),
        "/api/dhash/hash" => Some("POST"),
        _ => None,
    };
    match (allowed, &method) {
        (Some("GET"), Method::Get | Method::Head) => match path {
            "/health" => health(req, st),
            "/metrics" => metrics_endpoint(req, query, st),
            _ => queue_status(req, st),
        },
        (Some("POST"), Method::Post) => match tx.try_send(req) {
            Ok(()) => {}
            Err(TrySendError::Full(req)) => {
                inc(&st.metrics.errors_total);
                respond_json(
                    req,
                    503,
                    &json!({"error": "busy: too many hash requests waiting"}),
                    st,
                );
            }
            Err(TrySendError::Disconnected(req)) => {
                inc(&st.metrics.errors_total);
                respond_json(req, 503, &json!({"error": "the service is stopping"}), st);
            }
        },
        (Some(allow), _) => {
            let body =
                json!({"error": format!("method {method} not allowed on {path}; use {allow}")});
            respond_json(req, 405, &body, st);
        }
        (None, _) => {
            let body = json!({
                "error": format!("no such endpoint: {path}"),
                "endpoints": ["GET /health", "GET /metrics", "GET /api/dhash/queue/status", "POST /api/dhash/hash"],
            });
            respond_json(req, 404, &body, st);
        }
    }
}

fn uptime(st: &State) -> f64 {
    (st.started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0
}

fn health(req: Request, st: &State) {
    if st.config.faults.health_fail {
        let body = json!({
            "status": "error",
            "reason": "fault injected: health_fail",
            "release": st.release.id,
        });
        return respond_json(req, 503, &body, st);
    }
    match db::check(&st.db_path, st.release.schema_version, &st.release.id) {
        Ok((_, state)) => {
            if let Ok(mut s) = st.db_state.lock() {
                *s = state;
            }
            let body = json!({
                "status": "ok",
                "release": st.release.id,
                "tag": st.release.tag,
                "schema_version": state.schema_version,
                "required_schema_version": st.release.schema_version,
                "uptime_seconds": uptime(st),
                "faults": st.config.faults.active(),
            });
            respond_json(req, 200, &body, st)
        }
        Err(e) => {
            let body =
                json!({"status": "error", "reason": e.to_string(), "release": st.release.id});
            respond_json(req, 503, &body, st)
        }
    }
}

fn queue_figures(st: &State) -> Result<(i64, Option<f64>), db::DbError> {
    let conn = db::open(&st.db_path)?;
    let (len, oldest) = db::queue_status(&conn, &st.db_path)?;
    let age = oldest
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
        .map(|t| {
            let ms = (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_milliseconds();
            (ms.max(0) as f64) / 1000.0
        });
    Ok((len, age))
}

fn queue_status(req: Request, st: &State) {
    match queue_figures(st) {
        Ok((len, age)) => respond_json(
            req,
            200,
            &json!({"length": len, "oldest_age_seconds": age}),
            st,
        ),
        Err(e) => {
            inc(&st.metrics.errors_total);
            respond_json(req, 503, &json!({"error": e.to_string()}), st)
        }
    }
}

fn wants_prometheus(req: &Request, query: &str) -> bool {
    for pair in query.split('&') {
        if let Some(v) = pair.strip_prefix("format=") {
            return matches!(v, "prometheus" | "text");
        }
    }
    req.headers().iter().any(|h| {
        h.field.equiv("Accept") && {
            let v = h.value.as_str().to_ascii_lowercase();
            (v.contains("text/plain") || v.contains("openmetrics"))
                && !v.contains("application/json")
        }
    })
}

fn gauges(st: &State) -> Gauges {
    let queue = queue_figures(st).ok();
    let rss = procstat::rss_bytes();
    let mem_pct = match (rss, procstat::mem_limit_bytes()) {
        (Some(r), Some(t)) if t > 0 => Some(procstat::round2(r as f64 / t as f64 * 100.0)),
        _ => None,
    };
    let schema = st.db_state.lock().map(|s| s.schema_version).unwrap_or(0);
    Gauges {
        release: st.release.id.clone(),
        schema_version: schema,
        uptime_seconds: uptime(st),
        low_confidence_queue: queue.map(|q| q.0),
        oldest_age_seconds: queue.and_then(|q| q.1),
        cpu_percent: st.cpu.percent(),
        memory_rss_bytes: rss,
        memory_percent: mem_pct,
        data_dir_bytes: procstat::dir_bytes(&st.data_dir),
        disk_percent: procstat::disk_percent(&st.data_dir),
        faults: st.config.faults.active(),
    }
}

fn metrics_endpoint(req: Request, query: &str, st: &State) {
    let snap = st.metrics.snapshot();
    let g = gauges(st);
    if wants_prometheus(&req, query) {
        let text = metrics::render_prometheus(&snap, &g);
        respond_text(
            req,
            200,
            text,
            "text/plain; version=0.0.4; charset=utf-8",
            st,
        )
    } else {
        respond_json(req, 200, &metrics::render_json(&snap, &g), st)
    }
}

/// Whether request `n` (1-based) is one of the fraction `f` that fails:
/// spreads failures evenly and exactly (`f = 0.25` → requests 4, 8, 12, ...).
pub fn fraction_hits(n: u64, f: f64) -> bool {
    f > 0.0 && ((n as f64) * f).floor() > (((n - 1) as f64) * f).floor()
}

fn drain(reader: &mut dyn Read, cap: u64) -> u64 {
    std::io::copy(&mut reader.take(cap), &mut std::io::sink()).unwrap_or(0)
}

fn too_large(req: Request, st: &State, len: Option<u64>) {
    inc(&st.metrics.rejected_total);
    let limit = st.config.max_body_bytes;
    let what = match len {
        Some(n) => format!("request body of {n} bytes"),
        None => "request body".to_string(),
    };
    let body = json!({
        "error": format!("{what} exceeds the limit of {limit} bytes"),
        "limit_bytes": limit,
    });
    respond_json(req, 413, &body, st);
}

fn ms_since(t0: Instant) -> f64 {
    (t0.elapsed().as_secs_f64() * 1_000_000.0).round() / 1000.0
}

fn handle_hash(mut req: Request, st: &State) {
    let t0 = Instant::now();
    let limit = st.config.max_body_bytes;
    if let Some(len) = req.body_length().map(|l| l as u64) {
        if len > limit {
            if len <= DRAIN_CAP {
                drain(req.as_reader(), len);
            }
            return too_large(req, st, Some(len));
        }
    }
    let mut body = Vec::new();
    if let Err(e) = req.as_reader().take(limit + 1).read_to_end(&mut body) {
        let msg = json!({"error": format!("cannot read the request body: {e}")});
        return respond_json(req, 400, &msg, st);
    }
    if body.len() as u64 > limit {
        drain(req.as_reader(), DRAIN_CAP);
        return too_large(req, st, None);
    }
    let m = &st.metrics;
    inc(&m.hash_requests_total);
    let faults = &st.config.faults;
    if faults.hash_latency_ms > 0 {
        thread::sleep(Duration::from_millis(faults.hash_latency_ms));
    }
    let n = st.failure_seq.fetch_add(1, Ordering::Relaxed) + 1;
    if fraction_hits(n, faults.failure_fraction) {
        inc(&m.extraction_failures_total);
        m.observe_ms(ms_since(t0));
        let msg = format!(
            "injected extraction failure (fault failure_fraction={})",
            faults.failure_fraction
        );
        return respond_json(
            req,
            422,
            &json!({"error": msg, "fault": "failure_fraction"}),
            st,
        );
    }
    let n = st.error_seq.fetch_add(1, Ordering::Relaxed) + 1;
    if fraction_hits(n, faults.error_fraction) {
        inc(&m.errors_total);
        let msg = format!(
            "injected internal error (fault error_fraction={})",
            faults.error_fraction
        );
        return respond_json(
            req,
            500,
            &json!({"error": msg, "fault": "error_fraction"}),
            st,
        );
    }
    let result = match dhash::hash_bytes(&body) {
        Ok(r) => r,
        Err(e) => {
            inc(&m.extraction_failures_total);
            m.observe_ms(ms_since(t0));
            return respond_json(req, 422, &json!({"error": e.to_string()}), st);
        }
    };
    let low = result.confidence < st.config.low_confidence_threshold;
    let hex = result.hex();
    let stored = db::open(&st.db_path).and_then(|mut conn| {
        let state = st.db_state.lock().map(|s| *s).unwrap_or(DbState {
            schema_version: 0,
            has_source: false,
        });
        let new = NewHash {
            dhash: &hex,
            confidence: result.confidence,
            width: result.width,
            height: result.height,
            bytes: body.len() as u64,
            source: "api",
            low_confidence: low,
        };
        db::insert_hash(&mut conn, &st.db_path, state, &new)
    });
    let id = match stored {
        Ok(id) => id,
        Err(e) => {
            inc(&m.errors_total);
            return respond_json(
                req,
                500,
                &json!({"error": format!("cannot store the hash: {e}")}),
                st,
            );
        }
    };
    if low {
        inc(&m.low_confidence_total);
    }
    let elapsed = ms_since(t0);
    m.observe_ms(elapsed);
    let body = json!({
        "dhash": hex,
        "confidence": result.confidence,
        "elapsed_ms": elapsed,
        "id": id,
        "low_confidence": low,
        "width": result.width,
        "height": result.height,
        "format": result.format,
    });
    respond_json(req, 200, &body, st)
}

#[cfg(test)]
mod tests {
    use super::fraction_hits;

    #[test]
    fn fractions_are_exact_and_evenly_spread() {
        let hits = |f: f64| {
            (1..=100)
                .filter(|&n| fraction_hits(n, f))
                .collect::<Vec<_>>()
        };
        assert!(hits(0.0).is_empty());
        assert_eq!(hits(1.0).len(), 100);
        assert_eq!(hits(0.25), (1..=25).map(|k| 4 * k).collect::<Vec<_>>());
        assert_eq!(hits(0.05).len(), 5);
    }
}
