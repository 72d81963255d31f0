//! The HTTP service (`dhash-service serve`).
//!
//! Shape: one tokio thread runs hyper's HTTP/1 connections (parsing heads,
//! receiving bodies, writing answers); blocking work runs elsewhere. The
//! light endpoints (`/health`, `/metrics`, queue status) touch SQLite and
//! the file system on tokio's blocking pool. `POST /api/dhash/hash` first
//! receives the whole body on the async side, under a deadline, and only
//! then hands it to a bounded queue served by the *hash workers* (threads).
//! So a slow sender holds a cheap task, never a worker, and slow hashing
//! (or the latency fault) never delays `/health`. A full hash queue
//! answers 503 at once.
//!
//! Limits against abusive clients ([`Limits`]): the request head is capped
//! in bytes and lines (431) and in time (closed), the request target in
//! length (414), a body in size (413) and time (408), bodies received at
//! once and open connections in number (503). When every hash worker has
//! been busy for `hash_stall_ms` without one hash finishing, `/health`
//! answers 503 `{"status":"degraded"}` so the health gate sees a service
//! that cannot hash.
//!
//! SIGTERM / SIGINT / SIGHUP: stop accepting connections, finish the
//! requests already received (bounded by [`DRAIN_TIMEOUT`]), let the hash
//! workers finish their queue, exit 0.

use std::convert::Infallible;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use gates_core::{Emitter, Exit, Level, ToolError};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, ACCEPT, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{json, Value};
use tokio::sync::{oneshot, watch, OwnedSemaphorePermit, Semaphore};

use crate::config::ServiceConfig;
use crate::db::{self, DbState, NewHash};
use crate::dhash;
use crate::metrics::{self, inc, Gauges, Load, Metrics};
use crate::procstat::{self, CpuMeter};
use gates_core::release::ReleaseManifest;

/// Default number of hash workers.
pub const DEFAULT_WORKERS: usize = 8;
/// Hash requests waiting for a worker before new ones get 503.
pub const HASH_QUEUE: usize = 256;
/// A body over the limit is read and discarded up to this size (so the
/// client sees the 413 instead of a reset connection); beyond it the
/// connection is closed.
const DRAIN_CAP: u64 = 512 * 1024 * 1024;
/// How long a stopping service waits for the requests already received.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Threads of the blocking pool for the light endpoints.
const BLOCKING_THREADS: usize = 8;

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub bind: String,
    pub database: PathBuf,
    pub data_dir: PathBuf,
    pub release_dir: PathBuf,
    /// `key=value` fault overrides applied over config.json.
    pub faults: Vec<(String, String)>,
    /// `key=value` limit overrides applied over config.json.
    pub limits: Vec<(String, String)>,
    pub workers: usize,
    pub verbose: bool,
}

/// What the hash workers are doing, for `/health` and `/metrics`.
struct Workload {
    busy: u64,
    /// Since when every worker has been busy with no hash finishing.
    saturated_since: Option<Instant>,
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
    workers: u64,
    workload: Mutex<Workload>,
    queued: AtomicU64,
    /// Taken (closed) at shutdown so the workers finish the queue and exit.
    jobs: Mutex<Option<SyncSender<Job>>>,
    bodies: Arc<Semaphore>,
    /// Body bytes in memory, in KiB permits, held from receipt to hashed.
    memory: Arc<Semaphore>,
    connections: Arc<Semaphore>,
}

/// A received hash request on its way to a worker.
struct Job {
    body: Vec<u8>,
    reply: oneshot::Sender<(u16, Value)>,
    /// The body's share of `body_memory_bytes`, released once hashed.
    memory: Option<OwnedSemaphorePermit>,
}

type Reply = Response<Full<Bytes>>;

fn fail(msg: impl std::fmt::Display) -> anyhow::Error {
    ToolError::new(Exit::Failed, anyhow::anyhow!("{msg}")).into()
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// Loads the release, checks the database, binds, and serves until a
/// termination signal. Start-up problems are errors (exit 1).
pub fn serve(opts: &ServeOptions, em: &Emitter) -> anyhow::Result<Exit> {
    let (release, config) = load_release(opts, em)?;
    let (conn, db_state) = db::check(&opts.database, release.schema_version, &release.id)
        .map_err(|e| fail(format!("refusing to start: {e}")))?;
    let (listener, addr) = bind(&opts.bind)?;
    start_up_faults(opts, &release, &config, conn, db_state, &addr, em)?;
    let stop_rx = stop_on_signal()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .max_blocking_threads(BLOCKING_THREADS)
        .build()
        .map_err(|e| fail(format!("cannot start the async runtime: {e}")))?;
    let workers = opts.workers.max(1);
    let (state, rx) = new_state(opts, release, config, db_state, workers);
    let worker_threads = start_hash_workers(&state, rx, workers)?;
    emit_started(&state, &addr, db_state, em);
    let max_connections = state.config.limits.max_connections;
    let drained = runtime.block_on(async {
        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(|e| fail(format!("cannot listen on {addr}: {e}")))?;
        accept_loop(listener, &state, stop_rx).await;
        // Every connection holds a permit: all back means all answered.
        let all = max_connections as u32;
        Ok::<bool, anyhow::Error>(
            tokio::time::timeout(DRAIN_TIMEOUT, state.connections.acquire_many(all))
                .await
                .is_ok(),
        )
    })?;
    runtime.shutdown_timeout(Duration::from_secs(1));
    stop(&state, worker_threads, drained, em);
    Ok(Exit::Ok)
}

/// The release manifest and its config.json (defaults when there is none),
/// with the command line's fault and limit overrides applied and checked.
fn load_release(
    opts: &ServeOptions,
    em: &Emitter,
) -> anyhow::Result<(ReleaseManifest, ServiceConfig)> {
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
    config.limits.apply(&opts.limits).map_err(fail)?;
    config.validate().map_err(gates_core::exit::usage_error)?;
    // Reads DHASH_DECODE_BUDGET_BYTES now, so a bad value is said at start-up.
    let _ = crate::dhash::decodes();
    Ok((release, config))
}

/// Binds synchronously, so a busy port is a start-up error (exit 1).
fn bind(bind: &str) -> anyhow::Result<(std::net::TcpListener, String)> {
    let listener = std::net::TcpListener::bind(bind)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| fail(format!("cannot listen on {bind}: {e}")))?;
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| bind.to_string());
    Ok((listener, addr))
}

/// The faults that act before serving: `crash_at_start` and
/// `low_confidence_flood`.
fn start_up_faults(
    opts: &ServeOptions,
    release: &ReleaseManifest,
    config: &ServiceConfig,
    mut conn: rusqlite::Connection,
    db_state: DbState,
    addr: &str,
    em: &Emitter,
) -> anyhow::Result<()> {
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
    Ok(())
}

/// SIGTERM / SIGINT / SIGHUP set the returned flag.
fn stop_on_signal() -> anyhow::Result<watch::Receiver<bool>> {
    let (stop_tx, stop_rx) = watch::channel(false);
    ctrlc::set_handler(move || {
        stop_tx.send_replace(true);
    })
    .context("cannot install the signal handler")
    .map_err(|e| fail(format!("{e:#}")))?;
    Ok(stop_rx)
}

fn new_state(
    opts: &ServeOptions,
    release: ReleaseManifest,
    config: ServiceConfig,
    db_state: DbState,
    workers: usize,
) -> (Arc<State>, Receiver<Job>) {
    let limits = config.limits.clone();
    let (tx, rx) = mpsc::sync_channel::<Job>(HASH_QUEUE);
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
        workers: workers as u64,
        workload: Mutex::new(Workload {
            busy: 0,
            saturated_since: None,
        }),
        queued: AtomicU64::new(0),
        jobs: Mutex::new(Some(tx)),
        bodies: Arc::new(Semaphore::new(limits.body_readers as usize)),
        memory: Arc::new(Semaphore::new(kib(limits.body_memory_bytes) as usize)),
        connections: Arc::new(Semaphore::new(limits.max_connections as usize)),
    });
    (state, rx)
}

fn start_hash_workers(
    state: &Arc<State>,
    rx: Receiver<Job>,
    workers: usize,
) -> anyhow::Result<Vec<thread::JoinHandle<()>>> {
    let rx = Arc::new(Mutex::new(rx));
    let threads = (0..workers)
        .map(|i| {
            let (state, rx) = (state.clone(), rx.clone());
            thread::Builder::new()
                .name(format!("hash-{i}"))
                .spawn(move || hash_worker(&state, &rx))
        })
        .collect::<Result<_, _>>()
        .context("cannot start worker threads")?;
    Ok(threads)
}

fn emit_started(state: &State, addr: &str, db_state: DbState, em: &Emitter) {
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
}

/// After the accept loop: the hash workers finish their queue, then
/// `service.stopped`.
fn stop(state: &State, worker_threads: Vec<thread::JoinHandle<()>>, drained: bool, em: &Emitter) {
    if !drained {
        em.human(&format!(
            "stopping: connections still open after {DRAIN_TIMEOUT:?} were closed"
        ));
    }
    em.human("stopping: the hash workers finish their queue");
    if let Ok(mut jobs) = state.jobs.lock() {
        jobs.take();
    }
    for w in worker_threads {
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
}

/// Accepts connections until the stop signal; each gets a task.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    st: &Arc<State>,
    mut stop: watch::Receiver<bool>,
) {
    let lim = &st.config.limits;
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(ms(lim.header_timeout_ms))
        .max_headers(lim.header_lines as usize)
        .max_header_size(lim.header_bytes as usize);
    let builder = Arc::new(builder);
    loop {
        if *stop.borrow() {
            return;
        }
        let accepted = tokio::select! {
            _ = stop.changed() => return,
            r = listener.accept() => r,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: pause, do not spin.
                eprintln!("dhash-service: accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = st.connections.clone().try_acquire_owned() else {
            inc(&st.metrics.connections_refused_total);
            refuse_connection(&stream, lim.max_connections);
            continue;
        };
        let (st, stop, builder) = (st.clone(), stop.clone(), builder.clone());
        tokio::spawn(async move {
            serve_connection(stream, &st, stop, &builder).await;
            drop(permit);
        });
    }
}

/// Best effort 503 to a connection over the limit, then close it.
fn refuse_connection(stream: &tokio::net::TcpStream, max: u64) {
    let body = json!({"error": format!("busy: {max} connections open, the limit")}).to_string();
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    // A fresh socket's send buffer takes this at once; never wait on it.
    let _ = stream.try_write(format!("{head}{body}").as_bytes());
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    st: &Arc<State>,
    mut stop: watch::Receiver<bool>,
    builder: &http1::Builder,
) {
    let stats = Arc::new(ConnStats::default());
    let (svc_state, svc_stats) = (st.clone(), stats.clone());
    let svc = service_fn(move |req| {
        let (st, stats) = (svc_state.clone(), svc_stats.clone());
        async move {
            stats.served.fetch_add(1, Ordering::Relaxed);
            let r = handle(req, &st).await;
            let read = stats.read.load(Ordering::Relaxed);
            stats.mark.store(read, Ordering::Relaxed);
            Ok::<_, Infallible>(r)
        }
    });
    let io = Guarded {
        io: TokioIo::new(stream),
        first_line: Some(0),
        limit: st.config.limits.request_line_bytes as usize + REQUEST_LINE_SLACK,
        st: st.clone(),
        stats: stats.clone(),
        tmp: vec![0u8; READ_CHUNK].into_boxed_slice(),
    };
    let conn = builder.serve_connection(io, svc);
    let mut conn = std::pin::pin!(conn);
    let result = if *stop.borrow() {
        conn.as_mut().graceful_shutdown();
        conn.as_mut().await
    } else {
        tokio::select! {
            r = conn.as_mut() => r,
            _ = stop.changed() => {
                // Finish the request in progress, take no further one.
                conn.as_mut().graceful_shutdown();
                conn.as_mut().await
            }
        }
    };
    if let Err(e) = result {
        let m = &st.metrics;
        if e.is_parse() {
            // hyper answered 431 or 400 itself.
            inc(&m.head_rejected_total);
        } else if e.is_timeout() {
            // A kept-alive connection that sent nothing more is idle, not
            // slow: only a started head, or no request at all, counts.
            let (served, read) = (
                stats.served.load(Ordering::Relaxed),
                stats.read.load(Ordering::Relaxed),
            );
            if served == 0 || read > stats.mark.load(Ordering::Relaxed) {
                inc(&m.client_timeouts_total);
            }
        }
        if st.verbose {
            eprintln!("dhash-service: connection ended: {e}");
        }
    }
}

/// Room for the method and the version around the target in a request line.
const REQUEST_LINE_SLACK: usize = 64;
/// Bytes read from a socket at a time.
const READ_CHUNK: usize = 16 * 1024;

/// A connection's IO that refuses a first request line running past its
/// limit with 414 and closes. Without it hyper would read on to the head
/// cap and answer 431, the wrong word for an endless target. Later requests
/// on a kept-alive connection are checked by [`handle`] (414) and the head
/// cap (431).
struct Guarded {
    io: TokioIo<tokio::net::TcpStream>,
    /// Bytes of the connection's first line seen so far; None once it ended.
    first_line: Option<usize>,
    limit: usize,
    st: Arc<State>,
    stats: Arc<ConnStats>,
    tmp: Box<[u8]>,
}

/// What a connection has done, to tell a slow client from an idle one.
#[derive(Default)]
struct ConnStats {
    /// Bytes read from the client.
    read: AtomicU64,
    /// `read` when the last request was answered.
    mark: AtomicU64,
    /// Requests that reached the service.
    served: AtomicU64,
}

/// Answers 414 on a connection whose first line ran past `line_limit`.
fn refuse_line(
    io: &TokioIo<tokio::net::TcpStream>,
    st: &State,
    line_limit: usize,
) -> std::io::Error {
    inc(&st.metrics.head_rejected_total);
    let limit = st.config.limits.request_line_bytes;
    let body = json!({
        "error": format!("request line of over {line_limit} bytes: its target exceeds the limit of {limit} bytes"),
        "limit_bytes": limit,
    })
    .to_string();
    let text = format!(
        "HTTP/1.1 414 URI Too Long\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    // Nothing else was written on this connection yet; never wait.
    let _ = io.inner().try_write(text.as_bytes());
    std::io::Error::new(std::io::ErrorKind::InvalidData, "request line too long")
}

impl hyper::rt::Read for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        // Read through a buffer of our own to see the bytes (hyper's cursor
        // only advances by unsafe code, which this workspace denies).
        let want = buf.remaining().min(this.tmp.len());
        let mut rb = hyper::rt::ReadBuf::new(&mut this.tmp[..want]);
        ready!(Pin::new(&mut this.io).poll_read(cx, rb.unfilled()))?;
        let got = rb.filled();
        this.stats
            .read
            .fetch_add(got.len() as u64, Ordering::Relaxed);
        if let Some(seen) = this.first_line {
            let line = match got.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    this.first_line = None;
                    seen + i
                }
                None => {
                    this.first_line = Some(seen + got.len());
                    seen + got.len()
                }
            };
            if line > this.limit {
                this.first_line = None;
                return Poll::Ready(Err(refuse_line(&this.io, &this.st, this.limit)));
            }
        }
        buf.put_slice(got);
        Poll::Ready(Ok(()))
    }
}

impl hyper::rt::Write for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, data)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
}

fn reply(status: u16, content_type: &'static str, body: String) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json_reply(status: u16, body: &Value) -> Reply {
    reply(status, "application/json", body.to_string())
}

/// The same answer, and the connection closes after it (its request body
/// was not, or not fully, read).
fn closing(mut r: Reply) -> Reply {
    r.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    r
}

fn log(st: &State, method: &Method, url: &str, status: u16) {
    if st.verbose || status >= 500 && url.starts_with("/api/") {
        eprintln!("dhash-service: {method} {url} {status}");
    }
}

async fn handle(req: Request<Incoming>, st: &Arc<State>) -> Reply {
    let method = req.method().clone();
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| req.uri().to_string());
    let limit = st.config.limits.request_line_bytes;
    let r = if target.len() as u64 > limit {
        inc(&st.metrics.head_rejected_total);
        let body = json!({
            "error": format!("request target of {} bytes exceeds the limit of {limit} bytes", target.len()),
            "limit_bytes": limit,
        });
        closing(json_reply(414, &body))
    } else {
        route(req, st).await
    };
    let shown: String = target.chars().take(200).collect();
    log(st, &method, &shown, r.status().as_u16());
    r
}

/// Runs a light endpoint on the blocking pool (it opens SQLite, walks the
/// data dir).
async fn blocking(st: &Arc<State>, f: impl FnOnce(&State) -> Reply + Send + 'static) -> Reply {
    let st = st.clone();
    match tokio::task::spawn_blocking(move || f(&st)).await {
        Ok(r) => r,
        Err(e) => json_reply(500, &json!({"error": format!("internal error: {e}")})),
    }
}

/// The endpoints, each served on one method (GET also answers HEAD).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Health,
    Metrics,
    QueueStatus,
    Hash,
}

impl Endpoint {
    fn of(path: &str) -> Option<Endpoint> {
        match path {
            "/health" => Some(Endpoint::Health),
            "/metrics" => Some(Endpoint::Metrics),
            "/api/dhash/queue/status" => Some(Endpoint::QueueStatus),
            "/api/dhash/hash" => Some(Endpoint::Hash),
            _ => None,
        }
    }

    fn method(self) -> Method {
        match self {
            Endpoint::Hash => Method::POST,
            Endpoint::Health | Endpoint::Metrics | Endpoint::QueueStatus => Method::GET,
        }
    }

    fn accepts(self, method: &Method) -> bool {
        *method == self.method() || (self.method() == Method::GET && *method == Method::HEAD)
    }
}

async fn route(req: Request<Incoming>, st: &Arc<State>) -> Reply {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let method = req.method().clone();
    if path.starts_with("/api/") {
        inc(&st.metrics.requests_total);
    }
    let Some(endpoint) = Endpoint::of(&path) else {
        let body = json!({
            "error": format!("no such endpoint: {path}"),
            "endpoints": ["GET /health", "GET /metrics", "GET /api/dhash/queue/status", "POST /api/dhash/hash"],
        });
        return json_reply(404, &body);
    };
    if !endpoint.accepts(&method) {
        let allow = endpoint.method();
        let body = json!({"error": format!("method {method} not allowed on {path}; use {allow}")});
        return json_reply(405, &body);
    }
    match endpoint {
        Endpoint::Health => blocking(st, health).await,
        Endpoint::Metrics => {
            let prom = wants_prometheus(req.headers(), &query);
            blocking(st, move |st| metrics_endpoint(prom, st)).await
        }
        Endpoint::QueueStatus => blocking(st, queue_status).await,
        Endpoint::Hash => hash_post(req, st).await,
    }
}

fn uptime(st: &State) -> f64 {
    (st.started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0
}

/// How long every worker has been busy without a hash finishing.
fn stalled_for(st: &State) -> Duration {
    st.workload
        .lock()
        .ok()
        .and_then(|w| w.saturated_since)
        .map(|t| t.elapsed())
        .unwrap_or_default()
}

fn health(st: &State) -> Reply {
    if st.config.faults.health_fail {
        let body = json!({
            "status": "error",
            "reason": "fault injected: health_fail",
            "release": st.release.id,
        });
        return json_reply(503, &body);
    }
    let stalled = stalled_for(st);
    let stall_limit = ms(st.config.limits.hash_stall_ms);
    if stalled >= stall_limit {
        let body = json!({
            "status": "degraded",
            "reason": format!(
                "cannot hash: all {} hash workers busy and no hash finished for {:.1} s (limit {:.1} s), {} requests waiting",
                st.workers,
                stalled.as_secs_f64(),
                stall_limit.as_secs_f64(),
                st.queued.load(Ordering::Relaxed),
            ),
            "release": st.release.id,
            "stalled_seconds": (stalled.as_secs_f64() * 1000.0).round() / 1000.0,
        });
        return json_reply(503, &body);
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
            json_reply(200, &body)
        }
        Err(e) => {
            let body =
                json!({"status": "error", "reason": e.to_string(), "release": st.release.id});
            json_reply(503, &body)
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

fn queue_status(st: &State) -> Reply {
    match queue_figures(st) {
        Ok((len, age)) => json_reply(200, &json!({"length": len, "oldest_age_seconds": age})),
        Err(e) => {
            inc(&st.metrics.errors_total);
            json_reply(503, &json!({"error": e.to_string()}))
        }
    }
}

fn wants_prometheus(headers: &HeaderMap, query: &str) -> bool {
    for pair in query.split('&') {
        if let Some(v) = pair.strip_prefix("format=") {
            return matches!(v, "prometheus" | "text");
        }
    }
    headers.get_all(ACCEPT).iter().any(|h| {
        let v = String::from_utf8_lossy(h.as_bytes()).to_ascii_lowercase();
        (v.contains("text/plain") || v.contains("openmetrics")) && !v.contains("application/json")
    })
}

fn load(st: &State) -> Load {
    let busy = st.workload.lock().map(|w| w.busy).unwrap_or(0);
    let available = |s: &Semaphore, max: u64| max.saturating_sub(s.available_permits() as u64);
    let lim = &st.config.limits;
    Load {
        hash_workers: st.workers,
        hash_workers_busy: busy,
        hash_queue_length: st.queued.load(Ordering::Relaxed),
        hash_stalled_seconds: stalled_for(st).as_secs_f64(),
        connections_open: available(&st.connections, lim.max_connections),
        bodies_receiving: available(&st.bodies, lim.body_readers),
        bodies_bytes: available(&st.memory, u64::from(kib(lim.body_memory_bytes))) * 1024,
    }
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
        load: load(st),
    }
}

fn metrics_endpoint(prometheus: bool, st: &State) -> Reply {
    let snap = st.metrics.snapshot();
    let g = gauges(st);
    if prometheus {
        let text = metrics::render_prometheus(&snap, &g);
        reply(200, "text/plain; version=0.0.4; charset=utf-8", text)
    } else {
        json_reply(200, &metrics::render_json(&snap, &g))
    }
}

/// Whether request `n` (1-based) is one of the fraction `f` that fails:
/// spreads failures evenly and exactly (`f = 0.25` → requests 4, 8, 12, ...).
pub fn fraction_hits(n: u64, f: f64) -> bool {
    f > 0.0 && ((n as f64) * f).floor() > (((n - 1) as f64) * f).floor()
}

fn too_large(st: &State, len: Option<u64>) -> Reply {
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
    json_reply(413, &body)
}

/// Bytes in the KiB units of the body memory budget, rounded up.
fn kib(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX)
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// The answer that ends a hash request early (boxed: a response is large,
/// and the happy path should not carry its size).
type Refused = Box<Reply>;

/// Receives the body (deadline, size limit, a bounded number at once),
/// then queues it for a hash worker and waits for the answer.
async fn hash_post(req: Request<Incoming>, st: &Arc<State>) -> Reply {
    let declared = content_length(req.headers());
    if let Some(refusal) = refuse_before_reading(req.headers(), declared, st) {
        return refusal;
    }
    let Ok(permit) = st.bodies.clone().try_acquire_owned() else {
        inc(&st.metrics.errors_total);
        let n = st.config.limits.body_readers;
        let body = json!({"error": format!("busy: {n} request bodies being received, the limit")});
        return closing(json_reply(503, &body));
    };
    let received = match receive_body(req.into_body(), declared, st).await {
        Ok(r) => r,
        Err(reply) => return *reply,
    };
    drop(permit);
    if received.over {
        return too_large(st, declared);
    }
    let answer = match enqueue(st, received.body, received.memory) {
        Ok(rx) => rx,
        Err(reply) => return *reply,
    };
    match answer.await {
        Ok((status, body)) => json_reply(status, &body),
        // The worker panicked on this request.
        Err(_) => json_reply(
            500,
            &json!({"error": "internal error: the hash worker failed on this request"}),
        ),
    }
}

/// A declared body over the limit is refused without reading it when the
/// client waits for 100 Continue, or when it is too large even to discard.
fn refuse_before_reading(headers: &HeaderMap, declared: Option<u64>, st: &State) -> Option<Reply> {
    let n = declared?;
    let expects_continue = headers
        .get(hyper::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    (n > st.config.max_body_bytes && (expects_continue || n > DRAIN_CAP))
        .then(|| closing(too_large(st, Some(n))))
}

/// A hash request body as it arrives: the bytes under the size limit and
/// their share of the body memory budget; past the limit, only counted.
struct Receiving<'a> {
    st: &'a State,
    declared: Option<u64>,
    body: Vec<u8>,
    received: u64,
    /// Past the size limit: the rest is read and discarded (413 follows).
    over: bool,
    memory: Option<OwnedSemaphorePermit>,
    held_kib: u32,
}

impl Receiving<'_> {
    /// Takes one chunk; `Err` is the answer that ends the request.
    fn take(&mut self, data: &[u8]) -> Result<(), Refused> {
        let limit = self.st.config.max_body_bytes;
        self.received += data.len() as u64;
        if self.over || self.received > limit {
            // Discard, so the client gets to read the 413.
            if !self.over {
                self.over = true;
                self.body = Vec::new();
            }
            if self.received > DRAIN_CAP {
                return Err(Box::new(closing(too_large(self.st, self.declared))));
            }
            return Ok(());
        }
        // Take this chunk's share of the memory budget first.
        self.reserve_memory()?;
        self.body.extend_from_slice(data);
        Ok(())
    }

    /// Holds the memory budget for every KiB received so far (503 when full).
    fn reserve_memory(&mut self) -> Result<(), Refused> {
        let need = kib(self.received).saturating_sub(self.held_kib);
        if need == 0 {
            return Ok(());
        }
        match self.st.memory.clone().try_acquire_many_owned(need) {
            Ok(p) => match self.memory.as_mut() {
                Some(m) => m.merge(p),
                None => self.memory = Some(p),
            },
            Err(_) => {
                inc(&self.st.metrics.errors_total);
                let n = self.st.config.limits.body_memory_bytes;
                let msg = json!({"error": format!(
                    "busy: request bodies fill the {n} bytes they may hold in memory"
                )});
                return Err(Box::new(closing(json_reply(503, &msg))));
            }
        }
        self.held_kib += need;
        Ok(())
    }
}

/// Reads the whole body within `body_timeout_ms` (408 after it).
async fn receive_body<'a>(
    mut incoming: Incoming,
    declared: Option<u64>,
    st: &'a State,
) -> Result<Receiving<'a>, Refused> {
    let limit = st.config.max_body_bytes;
    let timeout = st.config.limits.body_timeout_ms;
    let deadline = tokio::time::Instant::now() + ms(timeout);
    let mut r = Receiving {
        st,
        declared,
        // Grown as bytes arrive: a declared size costs nothing until sent.
        body: Vec::with_capacity(declared.unwrap_or(0).min(limit).min(1 << 20) as usize),
        received: 0,
        over: declared.is_some_and(|n| n > limit),
        memory: None,
        held_kib: 0,
    };
    loop {
        match tokio::time::timeout_at(deadline, incoming.frame()).await {
            Err(_) => {
                inc(&st.metrics.client_timeouts_total);
                let received = r.received;
                let of = declared.map(|n| format!(" of {n}")).unwrap_or_default();
                let msg = json!({
                    "error": format!("request body not received within {timeout} ms ({received}{of} bytes arrived)"),
                    "timeout_ms": timeout,
                });
                return Err(Box::new(closing(json_reply(408, &msg))));
            }
            Ok(None) => return Ok(r),
            Ok(Some(Err(e))) => {
                let msg = json!({"error": format!("cannot read the request body: {e}")});
                return Err(Box::new(closing(json_reply(400, &msg))));
            }
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    r.take(&data)?;
                }
            }
        }
    }
}

/// Hands a received body to the hash workers; 503 when their queue is full
/// or the service is stopping.
fn enqueue(
    st: &State,
    body: Vec<u8>,
    memory: Option<OwnedSemaphorePermit>,
) -> Result<oneshot::Receiver<(u16, Value)>, Refused> {
    let (tx, rx) = oneshot::channel();
    let sent = match st.jobs.lock() {
        Ok(jobs) => match jobs.as_ref() {
            Some(jobs) => {
                st.queued.fetch_add(1, Ordering::Relaxed);
                let r = jobs.try_send(Job {
                    body,
                    reply: tx,
                    memory,
                });
                if r.is_err() {
                    st.queued.fetch_sub(1, Ordering::Relaxed);
                }
                r.map_err(|e| matches!(e, TrySendError::Full(_)))
            }
            None => Err(false),
        },
        Err(_) => Err(false),
    };
    match sent {
        Ok(()) => Ok(rx),
        Err(full) => {
            inc(&st.metrics.errors_total);
            let msg = if full {
                "busy: too many hash requests waiting"
            } else {
                "the service is stopping"
            };
            Err(Box::new(json_reply(503, &json!({ "error": msg }))))
        }
    }
}

fn hash_worker(st: &State, rx: &Mutex<Receiver<Job>>) {
    loop {
        let next = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(job) = next else { return };
        st.queued.fetch_sub(1, Ordering::Relaxed);
        if let Ok(mut w) = st.workload.lock() {
            w.busy += 1;
            if w.busy >= st.workers {
                w.saturated_since = Some(Instant::now());
            }
        }
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hash_answer(&job.body, st)));
        if let Ok(mut w) = st.workload.lock() {
            w.busy = w.busy.saturating_sub(1);
            w.saturated_since = None;
        }
        // The body's memory is free again before the answer goes out.
        drop(job.memory);
        drop(job.body);
        match outcome {
            // The client may have gone: nobody to answer.
            Ok(answer) => {
                let _ = job.reply.send(answer);
            }
            Err(_) => {
                inc(&st.metrics.errors_total);
                eprintln!("dhash-service: a hash request panicked");
            }
        }
    }
}

fn ms_since(t0: Instant) -> f64 {
    (t0.elapsed().as_secs_f64() * 1_000_000.0).round() / 1000.0
}

/// The hash faults: the latency, then an injected extraction failure (422)
/// or internal error (500) at their configured fractions.
fn injected_fault(st: &State, t0: Instant) -> Option<(u16, Value)> {
    let m = &st.metrics;
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
        return Some((422, json!({"error": msg, "fault": "failure_fraction"})));
    }
    let n = st.error_seq.fetch_add(1, Ordering::Relaxed) + 1;
    if fraction_hits(n, faults.error_fraction) {
        inc(&m.errors_total);
        let msg = format!(
            "injected internal error (fault error_fraction={})",
            faults.error_fraction
        );
        return Some((500, json!({"error": msg, "fault": "error_fraction"})));
    }
    None
}

/// Stores one hash; its row id.
fn store_hash(
    st: &State,
    body: &[u8],
    result: &dhash::HashResult,
    hex: &str,
    low: bool,
) -> Result<i64, db::DbError> {
    let mut conn = db::open(&st.db_path)?;
    let state = st.db_state.lock().map(|s| *s).unwrap_or(DbState {
        schema_version: 0,
        has_source: false,
    });
    let new = NewHash {
        dhash: hex,
        confidence: result.confidence,
        width: result.width,
        height: result.height,
        bytes: body.len() as u64,
        source: "api",
        low_confidence: low,
    };
    db::insert_hash(&mut conn, &st.db_path, state, &new)
}

/// Hashes and stores one received body; the status and JSON answer.
fn hash_answer(body: &[u8], st: &State) -> (u16, Value) {
    let t0 = Instant::now();
    let m = &st.metrics;
    inc(&m.hash_requests_total);
    if let Some(answer) = injected_fault(st, t0) {
        return answer;
    }
    let result = match dhash::hash_bytes(body) {
        Ok(r) => r,
        // Over the pixel limit is the client's doing, like an oversized body:
        // refused and counted apart, so hostile uploads cannot move the
        // extraction-failure gate into rolling back a healthy release.
        Err(e @ dhash::ExtractError::TooLarge { .. }) => {
            inc(&m.rejected_total);
            m.observe_ms(ms_since(t0));
            return (413, json!({"error": e.to_string()}));
        }
        Err(e) => {
            inc(&m.extraction_failures_total);
            m.observe_ms(ms_since(t0));
            return (422, json!({"error": e.to_string()}));
        }
    };
    let low = result.confidence < st.config.low_confidence_threshold;
    let hex = result.hex();
    let id = match store_hash(st, body, &result, &hex, low) {
        Ok(id) => id,
        Err(e) => {
            inc(&m.errors_total);
            return (500, json!({"error": format!("cannot store the hash: {e}")}));
        }
    };
    if low {
        inc(&m.low_confidence_total);
    }
    let elapsed = ms_since(t0);
    m.observe_ms(elapsed);
    (
        200,
        json!({
            "dhash": hex,
            "confidence": result.confidence,
            "elapsed_ms": elapsed,
            "id": id,
            "low_confidence": low,
            "width": result.width,
            "height": result.height,
            "format": result.format,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::{fraction_hits, Endpoint};
    use hyper::Method;

    #[test]
    fn each_endpoint_answers_its_method_and_get_endpoints_head() {
        for path in ["/health", "/metrics", "/api/dhash/queue/status"] {
            let e = Endpoint::of(path).expect(path);
            assert!(
                e.accepts(&Method::GET) && e.accepts(&Method::HEAD),
                "{path}"
            );
            assert!(!e.accepts(&Method::POST), "{path}");
            assert_eq!(e.method().to_string(), "GET");
        }
        let hash = Endpoint::of("/api/dhash/hash").expect("hash");
        assert!(hash.accepts(&Method::POST));
        assert!(!hash.accepts(&Method::GET) && !hash.accepts(&Method::HEAD));
        assert_eq!(hash.method().to_string(), "POST");
        assert_eq!(Endpoint::of("/api/dhash/hash/"), None);
        assert_eq!(Endpoint::of("/nope"), None);
    }

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
