//! Fleet rollouts end to end: four real reference-service instances on
//! loopback behind a small balancer (round robin over the instances that do
//! not carry the `draining` marker, as an nginx/HAProxy health check would
//! skip a drained server), the real `dhash-service load` driver sending
//! through the balancer the whole time, and the real deploy_dhash binary.
//! Bakes last seconds.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use gates_core::config::EnvConfig;
use gates_core::Emitter;
use serde_json::{json, Value};
use testkit::TestProject;

const BIN: &str = env!("CARGO_BIN_EXE_deploy_dhash");
const NAMES: [&str; 4] = ["a", "b", "c", "d"];

/// A stripped copy of dhash-service, so a bundle (which ships the binary)
/// is small to hash and copy four times.
fn service_bin() -> PathBuf {
    static BIN_PATH: OnceLock<PathBuf> = OnceLock::new();
    BIN_PATH
        .get_or_init(|| {
            let original = testkit::bin_path("dhash-service");
            let dir = testkit::target_dir().join("deploy-fleet-tests");
            fs::create_dir_all(&dir).expect("mkdir");
            let out = dir.join("dhash-service");
            let mtime = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
            if out.is_file() && mtime(&out) >= mtime(&original) {
                return out;
            }
            let tmp = dir.join(format!(".dhash-service.{}.partial", std::process::id()));
            let ok = Command::new("strip")
                .arg("-o")
                .arg(&tmp)
                .arg(&original)
                .status()
                .is_ok_and(|s| s.success())
                && fs::rename(&tmp, &out).is_ok();
            if ok {
                out
            } else {
                original
            }
        })
        .clone()
}

fn bundle(tp: &TestProject, tag: &str, faults: &[(&str, &str)]) -> PathBuf {
    bundle_with(
        tp,
        tag,
        faults,
        &testkit::workspace_root().join("dhash-service/migrations"),
    )
}

fn bundle_with(tp: &TestProject, tag: &str, faults: &[(&str, &str)], migrations: &Path) -> PathBuf {
    let mut cmd = tp.cmd_path(&service_bin());
    cmd.args(["bundle", "--tag", tag, "--out"])
        .arg(tp.root().join("dist"))
        .arg("--migrations")
        .arg(migrations);
    for (k, v) in faults {
        cmd.arg("--fault").arg(format!("{k}={v}"));
    }
    let out = cmd.output().expect("dhash-service bundle");
    assert!(
        out.status.success(),
        "bundle {tag}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    tp.root().join("dist").join(format!("dhash-{tag}"))
}

fn release_id(bundle: &Path) -> String {
    let v: Value =
        serde_json::from_str(&fs::read_to_string(bundle.join("release.json")).unwrap()).unwrap();
    v["id"].as_str().unwrap().to_string()
}

/// One fleet test at a time: each runs four services, a balancer and the
/// load driver, which on two shared cores is faster in a row than side by side.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The test project with a `fleet` environment of four local instances.
struct Fleet {
    tp: TestProject,
    envs: Vec<EnvConfig>,
}

impl Fleet {
    fn new() -> Fleet {
        let tp = TestProject::new();
        let ports: Vec<u16> = loop {
            let p: Vec<u16> = (0..4).map(|_| testkit::free_port()).collect();
            let mut q = p.clone();
            q.sort();
            q.dedup();
            if q.len() == 4 {
                break p;
            }
        };
        let url = |p: u16, path: &str| format!("http://127.0.0.1:{p}{path}");
        let instances: Vec<Value> = NAMES
            .iter()
            .zip(&ports)
            .map(|(n, p)| {
                json!({"name": n, "install_root": format!(".dhash/fleet/{n}"),
                       "service": {"kind": "local", "bind": format!("127.0.0.1:{p}"),
                                   "start_timeout": "10s", "stop_timeout": "3s"},
                       "health_url": url(*p, "/health"), "metrics_url": url(*p, "/metrics"),
                       "queue_url": url(*p, "/api/dhash/queue/status")})
            })
            .collect();
        tp.edit_topology(|t| {
            let mut env = t["environments"]["staging"].clone();
            env["install_root"] = json!(".dhash/fleet");
            env["data_dir"] = json!(".dhash/fleet/data");
            env["database"] = json!(".dhash/fleet/data/dhash.sqlite3");
            env["service"] = instances[0]["service"].clone();
            for k in ["health_url", "metrics_url", "queue_url"] {
                env[k] = instances[0][k].clone();
            }
            env["health"] = json!({"checks_required": 2, "interval": 0.2, "timeout": "10s"});
            env["instances"] = json!(instances);
            env["rollout"] = json!({
                "waves": [{"instances": 1, "bake": "2s"}, {"percent": 50, "bake": "1s"},
                          {"percent": 100, "bake": "0.5s"}],
                "canary": {"min_requests": 10, "max_increase": 5, "latency_min_samples": 10},
                "drain": "0.3s"
            });
            t["environments"]["fleet"] = env;
        });
        let project = tp.project();
        let env = project.env("fleet").unwrap().clone();
        let envs = env
            .fleet
            .as_ref()
            .unwrap()
            .instances
            .iter()
            .map(|i| env.instance_env(i))
            .collect();
        Fleet { tp, envs }
    }

    /// The old release installed on every instance and started.
    fn start_on(&self, bundle: &Path) {
        for env in &self.envs {
            testkit::install_bundle(env, bundle).unwrap();
            gates_core::service::start(env, &Emitter::sink("test", "fleet")).unwrap();
        }
    }

    fn deploy(&self, tag: &str, crash_at: Option<&str>) -> Run {
        let mut c = self.tp.cmd_path(Path::new(BIN));
        c.args(["--env", "fleet", "--tag", tag, "--no-backup"]);
        if let Some(p) = crash_at {
            c.env("DHASH_TEST_CRASH_AT", p);
        }
        let run: Run = c.output().expect("run deploy_dhash").into();
        // FLEET_TEST_SHOW=1: the run's stderr and fleet events (for the docs).
        if std::env::var_os("FLEET_TEST_SHOW").is_some() {
            eprintln!("{}", run.stderr);
            for e in run
                .events
                .iter()
                .filter(|e| e["event"].as_str().is_some_and(|n| n.starts_with("fleet.")))
            {
                eprintln!("{e}");
            }
        }
        run
    }

    /// The release each instance serves, by asking it.
    fn serving(&self) -> Vec<String> {
        self.envs
            .iter()
            .map(|e| {
                let a = gates_core::probe::get(&e.health_url, Duration::from_secs(2)).unwrap();
                a.json().unwrap()["release"]
                    .as_str()
                    .unwrap_or("?")
                    .to_string()
            })
            .collect()
    }

    fn pids(&self) -> Vec<Option<u32>> {
        self.envs
            .iter()
            .map(gates_core::service::running_pid)
            .collect()
    }

    /// Gives the fleet environment these quality gates in the project's
    /// gates file (the copy of the repository's, which has none for it).
    fn set_gates(&self, gates: Value) {
        let path = self.tp.root().join(gates_core::project::GATES_FILE);
        let mut doc: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        doc["environments"]["fleet"] = json!({ "quality_gates": gates });
        fs::write(&path, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    }

    fn balancer(&self) -> Balancer {
        Balancer::start(
            self.envs
                .iter()
                .map(|e| (e.health_url.replace("/health", ""), e.install_root.clone()))
                .collect(),
        )
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for env in &self.envs {
            let _ = gates_core::service::stop(env, &Emitter::sink("test", "fleet"));
        }
    }
}

struct Run {
    code: i32,
    signal: Option<i32>,
    events: Vec<Value>,
    stdout: String,
    stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            signal: o.status.signal(),
            events: testkit::events(&o.stdout),
            stdout: String::from_utf8_lossy(&o.stdout).to_string(),
            stderr: String::from_utf8_lossy(&o.stderr).to_string(),
        }
    }
}

impl Run {
    fn of(&self, name: &str) -> Vec<&Value> {
        self.events.iter().filter(|e| e["event"] == name).collect()
    }
    fn expect(&self, code: i32) -> &Self {
        assert_eq!(
            self.code, code,
            "exit code\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

// ------------------------------------------------------------ balancer

/// A random pick among the backends without a `draining` marker (round
/// robin would alias with the load driver's fixed kind cycle); a backend
/// that refuses the connection is skipped (like `proxy_next_upstream
/// error`), a request that reached one is never sent twice.
struct Balancer {
    port: u16,
    stop: Arc<AtomicBool>,
    no_backend: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Balancer {
    fn start(backends: Vec<(String, PathBuf)>) -> Balancer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let no_backend = Arc::new(AtomicU64::new(0));
        let (s, nb) = (stop.clone(), no_backend.clone());
        let backends = Arc::new(backends);
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as usize)
            .unwrap_or(7);
        let next = Arc::new(AtomicUsize::new(seed));
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (b, n, nb) = (backends.clone(), next.clone(), nb.clone());
                std::thread::spawn(move || proxy(conn, &b, &n, &nb));
            }
        });
        Balancer {
            port,
            stop,
            no_backend,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One request (headers and a Content-Length body), sent with
/// `Connection: close`, or None when the client closed.
fn read_request(conn: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let mut out: Vec<u8> = head
        .trim_end()
        .lines()
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .flat_map(|l| format!("{l}\r\n").into_bytes())
        .collect();
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    out.extend_from_slice(&buf[head_end..head_end + len]);
    Some(out)
}

/// A xorshift step on the shared state: a cheap, good-enough random index.
fn pick(state: &AtomicUsize, n: usize) -> usize {
    let mut x = state.load(Ordering::Relaxed) | 1;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    state.store(x, Ordering::Relaxed);
    x % n
}

fn proxy(mut conn: TcpStream, backends: &[(String, PathBuf)], next: &AtomicUsize, nb: &AtomicU64) {
    let Some(request) = read_request(&mut conn) else {
        return;
    };
    let first = pick(next, backends.len());
    for k in 0..backends.len() {
        let (base, root) = &backends[(first + k) % backends.len()];
        if root.join(gates_core::service::DRAIN_MARKER).exists() {
            continue;
        }
        let addr = base.trim_start_matches("http://");
        let Ok(mut up) = TcpStream::connect(addr) else {
            continue;
        };
        let mut response = Vec::new();
        if up.write_all(&request).is_ok() {
            let _ = up.read_to_end(&mut response);
        }
        if response.is_empty() {
            response =
                b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_vec();
        }
        let _ = conn.write_all(&response);
        let _ = conn.shutdown(Shutdown::Both);
        return;
    }
    nb.fetch_add(1, Ordering::Relaxed);
    let _ = conn.write_all(
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
}

// ------------------------------------------------------------ load

/// The load driver run in 2-second rounds through the balancer until
/// stopped; the rounds' `load.completed` reports summed.
struct Load {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    totals: Arc<Mutex<Totals>>,
}

/// The load driver's rounds summed.
#[derive(Debug, Clone, Default)]
struct Totals {
    sent: u64,
    transport_errors: u64,
    status: BTreeMap<String, u64>,
}

impl Load {
    fn start(tp: &TestProject, url: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let totals = Arc::new(Mutex::new(Totals::default()));
        let (s, t) = (stop.clone(), totals.clone());
        let mut cmd = tp.cmd("dhash-service");
        // No undecodable images: a good release then fails nothing on
        // either side, so the comparison cannot flake on a small sample.
        cmd.args(["load", "--url", url, "--rate", "40", "--duration", "2s"])
            .args(["--mix", "valid=90,low=10,bad=0", "--timeout", "5s"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let out = cmd.output().expect("dhash-service load");
                let ev = testkit::events(&out.stdout);
                let done = ev
                    .iter()
                    .find(|e| e["event"] == "load.completed")
                    .unwrap_or_else(|| {
                        panic!(
                            "no load.completed: {}",
                            String::from_utf8_lossy(&out.stdout)
                        )
                    });
                let mut t = t.lock().unwrap();
                t.sent += done["sent"].as_u64().unwrap_or(0);
                t.transport_errors += done["transport_errors"].as_u64().unwrap_or(0);
                for (k, v) in done["status"].as_object().into_iter().flatten() {
                    *t.status.entry(k.clone()).or_default() += v.as_u64().unwrap_or(0);
                }
            }
        });
        Load {
            stop,
            thread: Some(thread),
            totals,
        }
    }

    /// Every round's figures, summed.
    fn finish(mut self) -> Totals {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("load thread");
        }
        self.totals.lock().unwrap().clone()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// No request failed because of a switch: every one was answered, none
/// with a 5xx (a 422 is the bad release's injected extraction failure,
/// which the canary comparison is about, not a switch).
fn assert_no_failed_request(load: Totals, bal: &Balancer) {
    let Totals {
        sent,
        transport_errors: transport,
        status,
    } = load;
    assert!(sent > 80, "the load driver sent too little: {sent}");
    assert_eq!(
        transport, 0,
        "transport errors during the rollout: {status:?}"
    );
    let server_errors: u64 = status
        .iter()
        .filter(|(k, _)| k.starts_with('5'))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(
        server_errors, 0,
        "5xx answers during the rollout: {status:?}"
    );
    assert_eq!(bal.no_backend.load(Ordering::Relaxed), 0);
}

// ------------------------------------------------------------ tests

#[test]
fn a_good_release_goes_through_every_wave_with_no_failed_request() {
    let _serial = serial();
    let f = Fleet::new();
    let v1 = bundle(&f.tp, "v1", &[]);
    let v2 = bundle(&f.tp, "v2", &[]);
    f.start_on(&v1);
    let bal = f.balancer();
    let load = Load::start(&f.tp, &bal.url());
    std::thread::sleep(Duration::from_millis(500));
    let t0 = std::time::Instant::now();
    let run = f.deploy("v2", None);
    eprintln!("deploy took {:?}", t0.elapsed());
    let load = load.finish();
    run.expect(0);
    let id = release_id(&v2);
    assert_eq!(f.serving(), vec![id.clone(); 4]);
    let passed: Vec<i64> = run
        .of("fleet.wave.passed")
        .iter()
        .map(|e| e["wave"].as_i64().unwrap())
        .collect();
    assert_eq!(passed, vec![1, 2, 3]);
    // The single-instance events carry the instance.
    let healthy: Vec<&str> = run
        .of("deploy.healthy")
        .iter()
        .map(|e| e["instance"].as_str().unwrap())
        .collect();
    assert_eq!(healthy, NAMES.to_vec());
    // The canary wave compared real traffic on both sides and passed.
    let judged = run.of("fleet.wave.judged");
    assert_eq!(judged[0]["judgment"]["verdict"], "pass");
    assert!(
        judged[0]["judgment"]["baseline"]["requests"]
            .as_f64()
            .unwrap()
            >= 10.0
    );
    assert_eq!(run.of("fleet.completed").len(), 1);
    assert!(!f.tp.root().join(".dhash/fleet/fleet.journal.json").exists());
    // The repository's gates file has no section for the fleet: said once,
    // and the judgments carry no gates.
    assert_eq!(run.of("fleet.gates.missing").len(), 1);
    assert!(judged[0]["judgment"].get("gates").is_none());
    assert_no_failed_request(load, &bal);
}

#[test]
fn a_bad_canary_is_rolled_back_alone_and_the_rest_never_change() {
    let _serial = serial();
    let f = Fleet::new();
    let v1 = bundle(&f.tp, "v1", &[]);
    let bad = bundle(&f.tp, "v3bad", &[("failure_fraction", "0.5")]);
    f.start_on(&v1);
    let before = f.pids();
    let bal = f.balancer();
    let load = Load::start(&f.tp, &bal.url());
    std::thread::sleep(Duration::from_millis(500));
    let run = f.deploy("v3bad", None);
    let load = load.finish();
    run.expect(3);
    let judged = run.of("fleet.wave.judged");
    assert_eq!(judged.len(), 1, "only the canary wave ran");
    assert_eq!(judged[0]["judgment"]["verdict"], "violation");
    let back: Vec<&str> = run
        .of("fleet.instance.rolled_back")
        .iter()
        .map(|e| e["instance"].as_str().unwrap())
        .collect();
    assert_eq!(back, vec!["a"], "only the canary is rolled back");
    let v1id = release_id(&v1);
    assert_eq!(f.serving(), vec![v1id; 4]);
    let after = f.pids();
    let bad_id = release_id(&bad);
    for (i, env) in f.envs.iter().enumerate().skip(1) {
        assert_eq!(after[i], before[i], "instance {} was restarted", NAMES[i]);
        assert!(
            !env.releases_dir().join(&bad_id).exists(),
            "instance {} received the bad release",
            NAMES[i]
        );
    }
    let st = gates_core::release::ReleasesState::load(&f.envs[0]).unwrap();
    assert!(
        st.is_failed(&bad_id),
        "the canary records the release as rolled back"
    );
    assert_no_failed_request(load, &bal);
}

#[test]
fn a_slow_canary_is_caught_by_the_latency_comparison_and_rolled_back_alone() {
    let _serial = serial();
    let f = Fleet::new();
    let v1 = bundle(&f.tp, "v1", &[]);
    bundle(&f.tp, "v5slow", &[("hash_latency_ms", "150")]);
    f.start_on(&v1);
    let bal = f.balancer();
    let load = Load::start(&f.tp, &bal.url());
    std::thread::sleep(Duration::from_millis(500));
    let run = f.deploy("v5slow", None);
    let load = load.finish();
    run.expect(3);
    let judged = run.of("fleet.wave.judged");
    assert_eq!(judged.len(), 1, "only the canary wave ran");
    let j = &judged[0]["judgment"];
    assert_eq!(j["verdict"], "violation", "{j}");
    assert_eq!(j["canary_rate"], 0.0, "the slow release fails nothing: {j}");
    let lat = &j["latency"];
    assert_eq!(lat["verdict"], "violation", "{lat}");
    assert!(
        lat["cliffs_delta"].as_f64().unwrap() >= lat["limit"].as_f64().unwrap(),
        "{lat}"
    );
    assert!(
        lat["p_value"].as_f64().unwrap() < lat["alpha"].as_f64().unwrap(),
        "{lat}"
    );
    assert!(lat["canary_samples"].as_f64().unwrap() >= 10.0, "{lat}");
    assert!(lat["canary_median_ms"].as_f64().unwrap() >= 150.0, "{lat}");
    if std::env::var_os("FLEET_TEST_SHOW").is_some() {
        eprintln!("{}", serde_json::to_string_pretty(&judged[0]).unwrap());
    }
    let back: Vec<&str> = run
        .of("fleet.instance.rolled_back")
        .iter()
        .map(|e| e["instance"].as_str().unwrap())
        .collect();
    assert_eq!(back, vec!["a"], "only the canary is rolled back");
    assert_eq!(f.serving(), vec![release_id(&v1); 4]);
    assert_no_failed_request(load, &bal);
}

#[test]
fn a_rollout_killed_between_waves_finishes_on_rerun() {
    let _serial = serial();
    let f = Fleet::new();
    let v1 = bundle(&f.tp, "v1", &[]);
    let v2 = bundle(&f.tp, "v2", &[]);
    f.start_on(&v1);
    let bal = f.balancer();
    let load = Load::start(&f.tp, &bal.url());
    std::thread::sleep(Duration::from_millis(500));
    let killed = f.deploy("v2", Some("fleet-wave-1-passed"));
    assert_eq!(killed.signal, Some(9), "{}", killed.stderr);
    let journal = f.tp.root().join(".dhash/fleet/fleet.journal.json");
    let j: Value = serde_json::from_str(&fs::read_to_string(&journal).unwrap()).unwrap();
    assert_eq!(j["wave"], 1);
    assert_eq!(j["moved"], json!(["a"]));
    let (v1id, v2id) = (release_id(&v1), release_id(&v2));
    let mixed = vec![v2id.clone(), v1id.clone(), v1id.clone(), v1id];
    assert_eq!(f.serving(), mixed);
    let run = f.deploy("v2", None);
    let load = load.finish();
    run.expect(0);
    assert_eq!(run.of("fleet.interrupted").len(), 1);
    // The canary is not moved twice; waves 2 and 3 run.
    let moved: Vec<&str> = run
        .of("fleet.instance.moved")
        .iter()
        .filter(|e| e["unchanged"] == false)
        .map(|e| e["instance"].as_str().unwrap())
        .collect();
    assert_eq!(moved, vec!["b", "c", "d"]);
    assert_eq!(f.serving(), vec![v2id; 4]);
    assert!(!journal.exists());
    assert_no_failed_request(load, &bal);
}

#[test]
fn a_plan_with_unmarked_migrations_is_refused_before_anything_changes() {
    let _serial = serial();
    let f = Fleet::new();
    let v1 = bundle(&f.tp, "v1", &[]);
    for env in &f.envs {
        testkit::install_bundle(env, &v1).unwrap();
    }
    // The built-in migrations plus one the old release may not survive.
    let mdir = f.tp.root().join("migrations-v4");
    testkit::copy_dir(
        &testkit::workspace_root().join("dhash-service/migrations"),
        &mdir,
    )
    .unwrap();
    fs::write(
        mdir.join("0003_drop_source.up.sql"),
        "ALTER TABLE hashes DROP COLUMN source;",
    )
    .unwrap();
    bundle_with(&f.tp, "v4", &[], &mdir);
    let run = f.deploy("v4", None);
    run.expect(2);
    assert!(
        run.stderr.contains("0003_drop_source") && run.stderr.contains("mixed-fleet-compatible"),
        "{}",
        run.stderr
    );
    assert!(run.of("fleet.started").is_empty());
    let v1id = release_id(&v1);
    for env in &f.envs {
        assert_eq!(
            gates_core::install::current_release_id(env).as_deref(),
            Some(v1id.as_str())
        );
    }
    assert!(!f.tp.root().join(".dhash/fleet/fleet.journal.json").exists());
}

#[test]
fn the_shipped_fleet_is_four_loopback_instances_beside_production_and_staging() {
    let t =
        gates_core::config::Topology::load(&testkit::workspace_root().join("environments.json"))
            .expect("shipped environments.json");
    let fleet = t
        .env("fleet")
        .unwrap()
        .fleet
        .clone()
        .expect("fleet has instances");
    let ports: Vec<&str> = fleet
        .instances
        .iter()
        .map(|i| {
            i.health_url
                .trim_start_matches("http://127.0.0.1:")
                .trim_end_matches("/health")
        })
        .collect();
    assert_eq!(ports, vec!["3010", "3011", "3012", "3013"]);
    assert_eq!(fleet.targets(), vec![1, 2, 4]);
    for single in ["production", "staging"] {
        assert!(
            t.env(single).unwrap().fleet.is_none(),
            "{single} stays one instance"
        );
    }
}

#[test]
fn a_rollout_killed_while_rolling_back_finishes_the_rollback_on_rerun() {
    let _serial = serial();
    let f = Fleet::new();
    let v1 = bundle(&f.tp, "v1", &[]);
    bundle(&f.tp, "v3bad", &[("failure_fraction", "0.5")]);
    f.start_on(&v1);
    let bal = f.balancer();
    let load = Load::start(&f.tp, &bal.url());
    std::thread::sleep(Duration::from_millis(500));
    let killed = f.deploy("v3bad", Some("fleet-rolling-back"));
    assert_eq!(killed.signal, Some(9), "{}", killed.stderr);
    let journal = f.tp.root().join(".dhash/fleet/fleet.journal.json");
    let j: Value = serde_json::from_str(&fs::read_to_string(&journal).unwrap()).unwrap();
    assert_eq!(j["step"], "rolling-back");
    let run = f.deploy("v3bad", None);
    let load = load.finish();
    run.expect(1);
    assert_eq!(run.of("fleet.interrupted").len(), 1);
    assert!(run.of("fleet.started").is_empty(), "no wave runs again");
    assert_eq!(run.of("fleet.instance.rolled_back").len(), 1);
    assert_eq!(f.serving(), vec![release_id(&v1); 4]);
    assert!(!journal.exists());
    assert_no_failed_request(load, &bal);
}

// ------------------------------------------------------------ quality gates

/// The seed's auto-rollback gates with windows every test bake covers,
/// and an alert gate.
fn short_gates() -> Value {
    json!({
        "health_failures": {"threshold": 2, "window_minutes": "5m", "action": "auto-rollback"},
        "extraction_failure_rate": {"threshold": 5, "window_minutes": "500ms", "action": "auto-rollback"},
        "p95_hash_time": {"threshold": 2000, "window_minutes": "500ms", "action": "auto-rollback"},
        "low_confidence_queue": {"threshold": 1000, "window_minutes": 0, "action": "auto-rollback"},
        "error_rate": {"threshold": 3, "window_minutes": "500ms", "action": "alert"}
    })
}

/// v1 on every instance, then `tag` rolled out under load through the balancer.
fn rollout_under_load(f: &Fleet, tag: &str, faults: &[(&str, &str)]) -> (PathBuf, PathBuf, Run) {
    let v1 = bundle(&f.tp, "v1", &[]);
    let new = bundle(&f.tp, tag, faults);
    f.start_on(&v1);
    let bal = f.balancer();
    let load = Load::start(&f.tp, &bal.url());
    std::thread::sleep(Duration::from_millis(500));
    let run = f.deploy(tag, None);
    let load = load.finish();
    assert_no_failed_request(load, &bal);
    (v1, new, run)
}

/// `(gate, instance)` of a wave judgment's `judged` or `not_judged` list.
fn gate_list<'a>(judged: &'a Value, list: &str) -> Vec<(&'a str, &'a str, &'a str)> {
    judged["judgment"]["gates"][list]
        .as_array()
        .unwrap_or_else(|| panic!("no judgment.gates.{list}: {judged}"))
        .iter()
        .map(|r| {
            (
                r["gate"].as_str().unwrap(),
                r["instance"].as_str().unwrap(),
                r["status"].as_str().unwrap(),
            )
        })
        .collect()
}

#[test]
fn every_wave_judges_the_quality_gates_on_each_moved_instance() {
    let _serial = serial();
    let f = Fleet::new();
    f.set_gates(short_gates());
    // A last bake of 1 s rather than 0.5 s: each instance then serves ~10
    // requests inside the rate windows, so none is left with no data.
    f.tp.edit_topology(|t| {
        t["environments"]["fleet"]["rollout"]["waves"][2]["bake"] = json!("1s");
    });
    let (_, v2, run) = rollout_under_load(&f, "v2", &[]);
    run.expect(0);
    assert!(
        run.of("fleet.gate.outlasts_bake").is_empty(),
        "{}",
        run.stdout
    );
    assert!(run.of("fleet.gates.missing").is_empty());
    assert!(run.of("fleet.gate.violated").is_empty(), "{}", run.stdout);
    let judged = run.of("fleet.wave.judged");
    assert_eq!(judged.len(), 3);
    let gates = [
        "error_rate",
        "extraction_failure_rate",
        "health_failures",
        "low_confidence_queue",
        "p95_hash_time",
    ];
    for (w, moved) in [(0, 1), (1, 2), (2, 4)] {
        let j = judged[w];
        assert_eq!(j["judgment"]["verdict"], "pass", "{j}");
        assert!(gate_list(j, "not_judged").is_empty(), "wave {}: {j}", w + 1);
        let mut ok = gate_list(j, "judged");
        ok.sort();
        let mut want: Vec<(&str, &str, &str)> = gates
            .iter()
            .flat_map(|g| NAMES[..moved].iter().map(move |n| (*g, *n, "ok")))
            .collect();
        want.sort();
        assert_eq!(
            ok,
            want,
            "wave {}: every gate judged ok on every moved instance",
            w + 1
        );
        assert!(
            j["msg"].as_str().unwrap().contains("quality gates:"),
            "{}",
            j["msg"]
        );
    }
    // The canary's extraction-failure figure was measured over real traffic.
    let efr = judged[0]["judgment"]["gates"]["judged"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["gate"] == "extraction_failure_rate")
        .unwrap();
    assert_eq!(efr["value"], 0.0, "{efr}");
    assert_eq!(efr["threshold"], 5.0, "{efr}");
    assert_eq!(f.serving(), vec![release_id(&v2); 4]);
    if std::env::var_os("FLEET_TEST_SHOW").is_some() {
        eprintln!("{}", serde_json::to_string_pretty(judged[0]).unwrap());
    }
}

#[test]
fn an_auto_rollback_gate_violated_on_the_canary_fails_its_wave_and_rolls_back_only_it() {
    let _serial = serial();
    let f = Fleet::new();
    f.set_gates(short_gates());
    // 1500 items in the low-confidence queue at start: no request fails
    // and none is slower, so only the queue gate can see it.
    let v1 = bundle(&f.tp, "v1", &[]);
    let bad = bundle(&f.tp, "v6flood", &[("low_confidence_flood", "1500")]);
    f.start_on(&v1);
    let before = f.pids();
    let bal = f.balancer();
    let load = Load::start(&f.tp, &bal.url());
    std::thread::sleep(Duration::from_millis(500));
    let run = f.deploy("v6flood", None);
    // The gate ends the bake at its first poll: keep the load on a little
    // longer, so the fleet is seen serving after the rollback too.
    std::thread::sleep(Duration::from_millis(1500));
    let load = load.finish();
    run.expect(3);
    let judged = run.of("fleet.wave.judged");
    assert_eq!(judged.len(), 1, "only the canary wave ran");
    let j = &judged[0]["judgment"];
    assert_eq!(j["verdict"], "violation", "{j}");
    let reason = j["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("quality gate low_confidence_queue (auto-rollback) violated on instance a: low_confidence_queue ")
            && reason.contains("above the threshold 1000 items"),
        "{reason}"
    );
    let hit = j["gates"]["judged"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["gate"] == "low_confidence_queue")
        .unwrap();
    assert_eq!(
        (&hit["instance"], &hit["status"]),
        (&json!("a"), &json!("violated"))
    );
    assert!(hit["value"].as_f64().unwrap() >= 1500.0, "{hit}");
    let violated = run.of("fleet.gate.violated");
    assert_eq!(violated.len(), 1, "{}", run.stdout);
    assert_eq!(violated[0]["level"], "critical");
    assert_eq!(
        (
            &violated[0]["gate"],
            &violated[0]["instance"],
            &violated[0]["threshold"]
        ),
        (&json!("low_confidence_queue"), &json!("a"), &json!(1000.0))
    );
    let failed = run.of("fleet.wave.failed");
    assert!(failed[0]["reason"]
        .as_str()
        .unwrap()
        .contains("low_confidence_queue"));
    let back: Vec<&str> = run
        .of("fleet.instance.rolled_back")
        .iter()
        .map(|e| e["instance"].as_str().unwrap())
        .collect();
    assert_eq!(back, vec!["a"], "only the canary is rolled back");
    assert_eq!(f.serving(), vec![release_id(&v1); 4]);
    let after = f.pids();
    let bad_id = release_id(&bad);
    for (i, env) in f.envs.iter().enumerate().skip(1) {
        assert_eq!(after[i], before[i], "instance {} was restarted", NAMES[i]);
        assert!(
            !env.releases_dir().join(&bad_id).exists(),
            "instance {} received the bad release",
            NAMES[i]
        );
    }
    assert_no_failed_request(load, &bal);
    if std::env::var_os("FLEET_TEST_SHOW").is_some() {
        eprintln!("{}", serde_json::to_string_pretty(judged[0]).unwrap());
    }
}

#[test]
fn a_gate_longer_than_the_bake_is_warned_before_anything_changes_and_never_passed() {
    let _serial = serial();
    let f = Fleet::new();
    // The seed's production windows: 10 and 15 minutes, against bakes of
    // seconds. Two waves keep the test short.
    f.set_gates(json!({
        "health_failures": {"threshold": 2, "window_minutes": 5, "action": "auto-rollback"},
        "extraction_failure_rate": {"threshold": 5, "window_minutes": 10, "action": "auto-rollback"},
        "p95_hash_time": {"threshold": 2000, "window_minutes": 15, "action": "auto-rollback"},
        "low_confidence_queue": {"threshold": 1000, "window_minutes": 0, "action": "auto-rollback"},
        "error_rate": {"threshold": 3, "window_minutes": 5, "action": "alert"}
    }));
    f.tp.edit_topology(|t| {
        t["environments"]["fleet"]["rollout"]["waves"] =
            json!([{"instances": 1, "bake": "2s"}, {"percent": 100, "bake": "500ms"}]);
    });
    let (_, v2, run) = rollout_under_load(&f, "v2", &[]);
    run.expect(0);
    let warned = run.of("fleet.gate.outlasts_bake");
    let mut names: Vec<&str> = warned.iter().map(|e| e["gate"].as_str().unwrap()).collect();
    names.sort();
    // Auto-rollback gates only; the health and instant gates need no window.
    assert_eq!(
        names,
        vec!["extraction_failure_rate", "p95_hash_time"],
        "{}",
        run.stdout
    );
    for e in &warned {
        assert_eq!(e["level"], "warning");
        assert_eq!(e["waves"], json!([1, 2]), "{e}");
        assert_eq!(e["bakes_secs"], json!([2.0, 0.5]), "{e}");
    }
    // Warned before anything changed: ahead of the first drain.
    let pos = |name: &str| run.events.iter().position(|e| e["event"] == name).unwrap();
    assert!(pos("fleet.gate.outlasts_bake") < pos("fleet.instance.drained"));
    let judged = run.of("fleet.wave.judged");
    assert_eq!(judged.len(), 2);
    for (j, moved) in judged.iter().zip([1usize, 4]) {
        let not = gate_list(j, "not_judged");
        let ok = gate_list(j, "judged");
        for gate in ["extraction_failure_rate", "p95_hash_time", "error_rate"] {
            let on: Vec<_> = not.iter().filter(|r| r.0 == gate).collect();
            assert_eq!(
                on.len(),
                moved,
                "{gate} not judged on each moved instance: {j}"
            );
            assert!(on.iter().all(|r| r.2 == "pending"), "{j}");
            assert!(
                !ok.iter().any(|r| r.0 == gate),
                "{gate} counted as judged: {j}"
            );
        }
        for gate in ["health_failures", "low_confidence_queue"] {
            assert_eq!(
                ok.iter().filter(|r| r.0 == gate && r.2 == "ok").count(),
                moved,
                "{j}"
            );
        }
        let why = j["judgment"]["gates"]["not_judged"][0]["reason"]
            .as_str()
            .unwrap();
        assert!(why.contains("window is longer than this wave's"), "{why}");
        let msg = j["msg"].as_str().unwrap();
        assert!(
            msg.contains("not judged: error_rate, extraction_failure_rate, p95_hash_time"),
            "{msg}"
        );
    }
    assert_eq!(f.serving(), vec![release_id(&v2); 4]);
}

#[test]
fn a_gates_file_that_does_not_load_refuses_the_rollout_before_anything_changes() {
    let _serial = serial();
    let f = Fleet::new();
    // A rate is a percent: 500 is a typing mistake the bakes cannot judge by.
    f.set_gates(json!({
        "extraction_failure_rate": {"threshold": 500, "window_minutes": "500ms", "action": "auto-rollback"}
    }));
    let v1 = bundle(&f.tp, "v1", &[]);
    for env in &f.envs {
        testkit::install_bundle(env, &v1).unwrap();
    }
    bundle(&f.tp, "v2", &[]);
    let run = f.deploy("v2", None);
    run.expect(2);
    assert!(
        run.stderr
            .contains("environments.fleet.quality_gates.extraction_failure_rate.threshold")
            && run.stderr.contains("nothing was changed"),
        "{}",
        run.stderr
    );
    assert!(run.of("fleet.started").is_empty());
    let v1id = release_id(&v1);
    for env in &f.envs {
        assert_eq!(
            gates_core::install::current_release_id(env).as_deref(),
            Some(v1id.as_str())
        );
    }
    assert!(!f.tp.root().join(".dhash/fleet/fleet.journal.json").exists());
}
