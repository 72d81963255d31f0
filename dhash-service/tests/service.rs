//! Integration tests: the real `dhash-service` binary, real bundles, a real
//! SQLite database migrated with the shipped migration SQL, real HTTP.
//!
//! Independent dHash derivation (see `src/dhash.rs` for the convention,
//! Python's `imagehash.dhash`; `imagehash.rs` compares with that library):
//! - 9×8 images are not resampled (Pillow copies when the size does not
//!   change), so the expected bits come straight from the pixel grid the
//!   test builds: bit `63 - (8 r + c)` is 1 when `p[r][c] < p[r][c+1]`.
//!   One grid is also checked against a hex literal worked out by hand.
//! - 18×16 images made of 2×2 blocks: the test resizes them to 9×8 itself
//!   with the textbook Lanczos-3 in floating point ([`lanczos_resize_f64`]:
//!   support stretched by the downscale factor, weights renormalised where
//!   the window is cut at the edges, no rounding between the passes). The
//!   service rounds to 8 bits after each pass as Pillow does, so only the
//!   bits whose pair differs by at least 3 levels are compared (rounding
//!   cannot flip those).
//! - RGB: gray = 0.299 R + 0.587 G + 0.114 B (ITU-R 601-2, Pillow's
//!   `convert("L")`), checked on a 9×8 image of saturated colours whose
//!   grays are far apart.
//! - Large horizontal gradients (PNG and JPEG) must hash to all ones or all
//!   zeros, whatever the filter details.

#![allow(clippy::unwrap_used, clippy::needless_range_loop)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use dhash_service::images;
use serde_json::Value;
use sha2::{Digest, Sha256};

const BIN: &str = env!("CARGO_BIN_EXE_dhash-service");
const MIGRATIONS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");

// ---------------------------------------------------------------- helpers

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

struct Reply {
    status: u16,
    content_type: String,
    text: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }
}

fn get(url: &str) -> Reply {
    get_with(url, None)
}

fn get_with(url: &str, accept: Option<&str>) -> Reply {
    let mut req = agent().get(url);
    if let Some(a) = accept {
        req = req.header("Accept", a);
    }
    let mut resp = req.call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
    reply(&mut resp)
}

fn reply(resp: &mut ureq::http::Response<ureq::Body>) -> Reply {
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let text = resp.body_mut().read_to_string().expect("reading body");
    Reply {
        status,
        content_type,
        text,
    }
}

fn post(url: &str, body: &[u8]) -> Reply {
    let mut resp = agent()
        .post(url)
        .header("Content-Type", "application/octet-stream")
        .send(body)
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    reply(&mut resp)
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Builds a bundle with the real `dhash-service bundle`; returns its folder.
fn bundle(out: &Path, tag: &str, faults: &[&str]) -> PathBuf {
    let mut cmd = Command::new(BIN);
    cmd.args(["bundle", "--tag", tag, "--out"]).arg(out);
    for f in faults {
        cmd.args(["--fault", f]);
    }
    let o = cmd.output().expect("running bundle");
    assert!(
        o.status.success(),
        "bundle failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let ev = events(&o.stdout)
        .into_iter()
        .find(|e| e["event"] == "bundle.created")
        .expect("bundle.created");
    PathBuf::from(ev["path"].as_str().unwrap())
}

fn events(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l)
                .unwrap_or_else(|e| panic!("stdout line not JSON ({e}): {l}"))
        })
        .collect()
}

/// Creates the database and applies the shipped migrations up to `upto`,
/// recording them in schema_migrations as migrate_dhash does.
fn migrate(db: &Path, upto: i64) {
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT, checksum TEXT, applied_at TEXT)",
    )
    .unwrap();
    for (v, name) in [(1, "create_hashes"), (2, "add_source")] {
        if v > upto {
            break;
        }
        let sql = std::fs::read_to_string(format!("{MIGRATIONS}/{v:04}_{name}.up.sql")).unwrap();
        conn.execute_batch(&sql).unwrap();
        conn.execute(
            "INSERT INTO schema_migrations (version, name, checksum, applied_at) VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![v, name, sha256_hex(sql.as_bytes()), "2026-01-01T00:00:00Z"],
        )
        .unwrap();
    }
}

/// A scratch area: a bundle and a migrated database.
struct Fixture {
    dir: tempfile::TempDir,
    release: PathBuf,
}

/// One fault-free bundle shared by the tests (a bundle carries a copy of
/// the ~90 MB debug binary and hashes it: worth building once). It lives in
/// Cargo's per-target test scratch folder; folders of earlier runs whose
/// process is gone are removed.
fn shared_bundle() -> PathBuf {
    static SHARED: OnceLock<PathBuf> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
            if let Ok(entries) = std::fs::read_dir(&tmp) {
                for e in entries.flatten() {
                    let name = e.file_name().to_string_lossy().to_string();
                    if let Some(pid) = name.strip_prefix("dhash-service-tests-") {
                        if !Path::new("/proc").join(pid).exists() {
                            let _ = std::fs::remove_dir_all(e.path());
                        }
                    }
                }
            }
            let root = tmp.join(format!("dhash-service-tests-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            bundle(&root, "shared", &[])
        })
        .clone()
}

impl Fixture {
    /// A migrated database and the shared bundle, or a bundle of its own
    /// built with `faults`.
    fn new(faults: &[&str]) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let release = if faults.is_empty() {
            shared_bundle()
        } else {
            bundle(&dir.path().join("dist"), "t1", faults)
        };
        migrate(&dir.path().join("data/dhash.sqlite3"), 2);
        Fixture { dir, release }
    }
    fn db(&self) -> PathBuf {
        self.dir.path().join("data/dhash.sqlite3")
    }
    fn stored_hashes(&self) -> i64 {
        let conn = rusqlite::Connection::open(self.db()).unwrap();
        conn.query_row("SELECT COUNT(*) FROM hashes", [], |r| r.get(0))
            .unwrap()
    }
    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }
    fn serve_cmd(&self, bind: &str, extra: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .args(["--bind", bind, "--database"])
            .arg(self.db())
            .arg("--data-dir")
            .arg(self.data())
            .arg("--release-dir")
            .arg(&self.release)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }
    fn start(&self, extra: &[&str]) -> Service {
        Service::start(self.serve_cmd("127.0.0.1:0", extra))
    }
}

/// A running service; killed when dropped.
struct Service {
    child: Child,
    url: String,
    started: Value,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
}

impl Service {
    fn start(mut cmd: Command) -> Service {
        let mut child = cmd.spawn().expect("spawning serve");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        let lines = stdout.clone();
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line.clone());
                lines.lock().unwrap().push(line);
            }
        });
        let mut err = child.stderr.take().unwrap();
        let buf = stderr.clone();
        thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = err.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buf.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
        });
        let mut svc = Service {
            child,
            url: String::new(),
            started: Value::Null,
            stdout,
            stderr,
        };
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| {
                panic!(
                    "no service.started event; stderr:\n{}",
                    svc.stderr.lock().unwrap()
                )
            });
        let ev: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(ev["event"], "service.started", "{ev}");
        svc.url = ev["url"].as_str().unwrap().to_string();
        svc.started = ev;
        svc
    }
    fn u(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }
    fn metrics(&self) -> Value {
        let r = get(&self.u("/metrics"));
        assert_eq!(r.status, 200, "{}", r.text);
        r.json()
    }
    fn hash(&self, body: &[u8]) -> Reply {
        post(&self.u("/api/dhash/hash"), body)
    }
    fn pid(&self) -> i32 {
        self.child.id() as i32
    }
    fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                t0.elapsed() < within,
                "service did not exit within {within:?}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `serve` expecting it to refuse; returns (exit code, stderr).
fn refuse(mut cmd: Command) -> (i32, String) {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    let o = child.wait_with_output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

fn png_from_grid(grid: &[[u8; 9]; 8]) -> Vec<u8> {
    images::png_gray(9, 8, |x, y| grid[y as usize][x as usize])
}

/// The test's own bit packing (row-major, first pair = most significant bit).
fn expected_hex(grid: &[[f64; 9]; 8]) -> String {
    let mut bits = String::new();
    for row in grid {
        for c in 0..8 {
            bits.push(if row[c] < row[c + 1] { '1' } else { '0' });
        }
    }
    format!("{:016x}", u64::from_str_radix(&bits, 2).unwrap())
}

fn to_f64(grid: &[[u8; 9]; 8]) -> [[f64; 9]; 8] {
    let mut g = [[0.0; 9]; 8];
    for r in 0..8 {
        for c in 0..9 {
            g[r][c] = f64::from(grid[r][c]);
        }
    }
    g
}

fn lcg(seed: u64) -> impl FnMut() -> u8 {
    let mut s = seed
        .wrapping_mul(2_862_933_555_777_941_757)
        .wrapping_add(3_037_000_493);
    move || {
        s = s
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (s >> 56) as u8
    }
}

/// Lanczos-3 resize of a gray plane (`plane[y][x]`) to 9×8 in floating
/// point, written from the textbook definition: output pixel `k` of a side
/// shrunk by `s = in / out` is centred on input coordinate `(k + 0.5) s`; an
/// input pixel `i` (centre `i + 0.5`) at distance `d` weighs
/// `sinc(d / s) sinc(d / 3s)` when `|d / s| < 3`, and the weights are
/// normalised over the pixels that exist.
fn lanczos_resize_f64(plane: &[Vec<f64>]) -> [[f64; 9]; 8] {
    fn weights(n_in: usize, n_out: usize, k: usize) -> Vec<(usize, f64)> {
        let s = (n_in as f64 / n_out as f64).max(1.0);
        let centre = (k as f64 + 0.5) * n_in as f64 / n_out as f64;
        let sinc = |x: f64| {
            if x == 0.0 {
                1.0
            } else {
                (std::f64::consts::PI * x).sin() / (std::f64::consts::PI * x)
            }
        };
        let mut w: Vec<(usize, f64)> = (0..n_in)
            .map(|i| (i, (i as f64 + 0.5 - centre) / s))
            .filter(|(_, x)| x.abs() < 3.0)
            .map(|(i, x)| (i, sinc(x) * sinc(x / 3.0)))
            .collect();
        let total: f64 = w.iter().map(|(_, v)| v).sum();
        for (_, v) in w.iter_mut() {
            *v /= total;
        }
        w
    }
    let (h, w) = (plane.len(), plane[0].len());
    let rows: Vec<[f64; 9]> = plane
        .iter()
        .map(|row| std::array::from_fn(|k| weights(w, 9, k).iter().map(|&(i, v)| v * row[i]).sum()))
        .collect();
    std::array::from_fn(|r| {
        std::array::from_fn(|c| weights(h, 8, r).iter().map(|&(i, v)| v * rows[i][c]).sum())
    })
}

fn hex_bits(h: &str) -> u64 {
    u64::from_str_radix(h, 16).unwrap()
}

// ---------------------------------------------------------------- tests

#[test]
fn help_ends_with_exit_codes_and_bad_arguments_exit_2() {
    for args in [
        &["--help"][..],
        &["serve", "--help"],
        &["bundle", "--help"],
        &["load", "--help"],
    ] {
        let o = Command::new(BIN).args(args).output().unwrap();
        assert!(o.status.success());
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(
            text.trim_end()
                .ends_with(gates_core::exit::EXIT_CODES_HELP.trim_end()),
            "{args:?} help does not end with the exit codes:\n{text}"
        );
    }
    let o = Command::new(BIN)
        .args(["serve", "--no-such-flag"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let o = Command::new(BIN)
        .args(["bundle", "--tag", "x", "--fault", "nope=1"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("known faults"));
    let o = Command::new(BIN)
        .args(["load", "--url", "http://127.0.0.1:9", "--mix", "valid=x"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn bundle_layout_hashes_id_and_overwrite_rules() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("dist");
    let b = bundle(&out, "v1.0", &[]);
    assert_eq!(b, out.canonicalize().unwrap().join("dhash-v1.0"));
    let release: Value =
        serde_json::from_slice(&std::fs::read(b.join("release.json")).unwrap()).unwrap();
    assert_eq!(release["tag"], "v1.0");
    assert_eq!(release["schema_version"], 2);
    assert!(chrono::DateTime::parse_from_rfc3339(release["created_at"].as_str().unwrap()).is_ok());

    // Every file but release.json is listed with its sha256, and nothing else.
    let files: BTreeMap<String, String> = serde_json::from_value(release["files"].clone()).unwrap();
    let mut on_disk = BTreeSet::new();
    let mut stack = vec![b.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                on_disk.insert(p.strip_prefix(&b).unwrap().to_string_lossy().to_string());
            }
        }
    }
    on_disk.remove("release.json");
    assert_eq!(on_disk, files.keys().cloned().collect::<BTreeSet<_>>());
    for f in [
        "bin/dhash-service",
        "config.json",
        "migrations/0001_create_hashes.up.sql",
        "migrations/0001_create_hashes.down.sql",
        "migrations/0002_add_source.up.sql",
        "migrations/0002_add_source.down.sql",
        "golden/manifest.json",
    ] {
        assert!(files.contains_key(f), "{f} missing from release.json");
    }
    // The system's sha256sum agrees with release.json.
    let mut listing = String::new();
    for (f, sha) in &files {
        listing.push_str(&format!("{sha}  {f}\n"));
    }
    std::fs::write(dir.path().join("SHA256SUMS"), &listing).unwrap();
    let o = Command::new("sha256sum")
        .arg("-c")
        .arg(dir.path().join("SHA256SUMS"))
        .current_dir(&b)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "sha256sum -c: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    // The id is derived from the sorted "path sha" lines.
    let mut lines = String::new();
    for (f, sha) in &files {
        lines.push_str(&format!("{f} {sha}\n"));
    }
    assert_eq!(
        release["id"],
        format!("v1.0-{}", &sha256_hex(lines.as_bytes())[..8])
    );
    // The binary is this binary, executable.
    assert_eq!(
        std::fs::read(b.join("bin/dhash-service")).unwrap(),
        std::fs::read(BIN).unwrap()
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(b.join("bin/dhash-service"))
            .unwrap()
            .permissions()
            .mode()
            & 0o111,
        0o111
    );
    // Faults are all off.
    let cfg: Value =
        serde_json::from_slice(&std::fs::read(b.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["faults"]["hash_latency_ms"], 0);
    assert_eq!(cfg["faults"]["failure_fraction"], 0.0);
    assert_eq!(cfg["faults"]["low_confidence_flood"], 0);
    assert_eq!(cfg["faults"]["health_fail"], false);
    assert_eq!(cfg["faults"]["crash_at_start"], false);
    // Golden images: the manifest's hashes are what the library computes.
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(b.join("golden/manifest.json")).unwrap()).unwrap();
    let imgs = manifest["images"].as_array().unwrap();
    assert!(imgs.len() >= 5);
    for img in imgs {
        let bytes = std::fs::read(b.join(img["file"].as_str().unwrap())).unwrap();
        assert_eq!(
            dhash_service::dhash::hash_bytes(&bytes).unwrap().hex(),
            img["dhash"].as_str().unwrap()
        );
    }
    // No temporary folder left behind.
    let names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(names, vec!["dhash-v1.0".to_string()]);

    // Same tag again: refused (exit 1), untouched; --force replaces it.
    let o = Command::new(BIN)
        .args(["bundle", "--tag", "v1.0", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("already exists"));
    let o = Command::new(BIN)
        .args([
            "bundle",
            "--tag",
            "v1.0",
            "--force",
            "--fault",
            "hash_latency_ms=250",
            "--schema-version",
            "9",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ev = &events(&o.stdout)[0];
    assert_eq!(ev["event"], "bundle.created");
    assert_eq!(ev["replaced"], true);
    assert_eq!(ev["schema_version"], 9, "--schema-version overrides");
    let r: Value = serde_json::from_slice(&std::fs::read(b.join("release.json")).unwrap()).unwrap();
    assert_eq!(r["schema_version"], 9);
    let cfg: Value =
        serde_json::from_slice(&std::fs::read(b.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["faults"]["hash_latency_ms"], 250);
    assert_ne!(ev["id"], release["id"], "another config, another id");
    let names = std::fs::read_dir(&out).unwrap().count();
    assert_eq!(names, 1, "no temporary folder left behind after --force");
    std::fs::remove_dir_all(&b).unwrap();

    // --dry-run checks and writes nothing.
    let o = Command::new(BIN)
        .args([
            "bundle",
            "--tag",
            "v2",
            "--dry-run",
            "--fault",
            "health_fail=true",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ev = &events(&o.stdout)[0];
    assert_eq!(ev["event"], "bundle.planned");
    assert_eq!(ev["schema_version"], 2);
    assert!(!out.join("dhash-v2").exists());

    // Custom migrations and schema version.
    let migs = dir.path().join("migs");
    std::fs::create_dir(&migs).unwrap();
    for f in std::fs::read_dir(MIGRATIONS).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), migs.join(f.file_name())).unwrap();
    }
    std::fs::write(
        migs.join("0003_add_note.up.sql"),
        "ALTER TABLE hashes ADD COLUMN note TEXT;\n",
    )
    .unwrap();
    std::fs::write(
        migs.join("0003_add_note.down.sql"),
        "ALTER TABLE hashes DROP COLUMN note;\n",
    )
    .unwrap();
    let o = Command::new(BIN)
        .args(["bundle", "--tag", "v3", "--migrations"])
        .arg(&migs)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(events(&o.stdout)[0]["schema_version"], 3);
    std::fs::write(migs.join("bad-name.sql"), "SELECT 1;").unwrap();
    let o = Command::new(BIN)
        .args(["bundle", "--tag", "v4", "--migrations"])
        .arg(&migs)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(2),
        "a misnamed migration is a usage error"
    );
    let o = Command::new(BIN)
        .args(["bundle", "--tag", "../x", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn endpoints_answer_as_documented() {
    let fx = Fixture::new(&[]);
    // A port found free by binding 127.0.0.1:0 first.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let svc = Service::start(fx.serve_cmd(&format!("127.0.0.1:{port}"), &[]));
    assert_eq!(svc.url, format!("http://127.0.0.1:{port}"));
    let release: Value =
        serde_json::from_slice(&std::fs::read(fx.release.join("release.json")).unwrap()).unwrap();

    let h = get(&svc.u("/health"));
    assert_eq!(h.status, 200);
    assert!(h.content_type.starts_with("application/json"));
    let hj = h.json();
    assert_eq!(hj["status"], "ok");
    assert_eq!(hj["release"], release["id"]);
    assert_eq!(hj["schema_version"], 2);
    assert!(hj["uptime_seconds"].as_f64().unwrap() >= 0.0);

    let q = get(&svc.u("/api/dhash/queue/status")).json();
    assert_eq!(q["length"], 0);
    assert!(q["oldest_age_seconds"].is_null());

    let r = svc.hash(&images::blocks_png(3).unwrap());
    assert_eq!(r.status, 200, "{}", r.text);
    let j = r.json();
    assert_eq!(j["dhash"].as_str().unwrap().len(), 16);
    assert!(j["dhash"]
        .as_str()
        .unwrap()
        .chars()
        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    let conf = j["confidence"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&conf) && conf >= 0.2, "{conf}");
    assert!(j["elapsed_ms"].as_f64().unwrap() >= 0.0);
    let id = j["id"].as_i64().unwrap();
    // Persisted in SQLite.
    let conn = rusqlite::Connection::open(fx.db()).unwrap();
    let (stored, source): (String, String) = conn
        .query_row(
            "SELECT dhash, source FROM hashes WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(stored, j["dhash"].as_str().unwrap());
    assert_eq!(source, "api");

    // A uniform image: low confidence, joins the queue.
    let r = svc.hash(&images::uniform_png(128).unwrap());
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["confidence"], 0.0);
    assert_eq!(j["low_confidence"], true);
    assert_eq!(j["dhash"], "0000000000000000");
    thread::sleep(Duration::from_millis(20));
    let q = get(&svc.u("/api/dhash/queue/status")).json();
    assert_eq!(q["length"], 1);
    assert!(q["oldest_age_seconds"].as_f64().unwrap() >= 0.0);

    // /metrics JSON shape.
    let m = svc.metrics();
    assert_eq!(m["release"], release["id"]);
    assert_eq!(m["requests_total"], 4, "2 queue + 2 hash requests: {m}");
    assert_eq!(m["hash_requests_total"], 2);
    assert_eq!(m["extraction_failures_total"], 0);
    assert_eq!(m["errors_total"], 0);
    assert_eq!(m["low_confidence_queue"], 1);
    let buckets = m["hash_time_ms"]["buckets"].as_array().unwrap();
    let les: Vec<Value> = buckets.iter().map(|b| b["le"].clone()).collect();
    assert_eq!(
        les,
        serde_json::from_str::<Vec<Value>>(r#"[5,10,25,50,100,250,500,1000,2000,5000,"+Inf"]"#)
            .unwrap()
    );
    let counts: Vec<u64> = buckets
        .iter()
        .map(|b| b["count"].as_u64().unwrap())
        .collect();
    assert!(
        counts.windows(2).all(|w| w[0] <= w[1]),
        "cumulative: {counts:?}"
    );
    assert_eq!(counts[10], 2);
    assert_eq!(m["hash_time_ms"]["count"], 2);
    assert!(m["hash_time_ms"]["sum"].as_f64().unwrap() > 0.0);
    assert!(m["process"]["cpu_percent"].as_f64().unwrap() >= 0.0);
    assert!(m["process"]["memory_rss_bytes"].as_u64().unwrap() > 1_000_000);
    let mp = m["process"]["memory_percent"].as_f64().unwrap();
    assert!(mp > 0.0 && mp < 100.0);
    assert!(
        m["disk"]["data_dir_bytes"].as_u64().unwrap() >= std::fs::metadata(fx.db()).unwrap().len()
    );
    let dp = m["disk"]["disk_percent"].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&dp));
    assert!(m["uptime_seconds"].as_f64().unwrap() > 0.0);

    // Prometheus text, by Accept header and by query.
    for r in [
        get_with(&svc.u("/metrics"), Some("text/plain")),
        get(&svc.u("/metrics?format=prometheus")),
    ] {
        assert_eq!(r.status, 200);
        assert!(
            r.content_type.starts_with("text/plain"),
            "{}",
            r.content_type
        );
        assert!(
            r.text.contains(
                "# TYPE dhash_hash_requests_total counter\ndhash_hash_requests_total 2\n"
            ),
            "{}",
            r.text
        );
        assert!(r
            .text
            .contains("dhash_hash_time_ms_bucket{le=\"+Inf\"} 2\n"));
        assert!(r.text.contains("dhash_hash_time_ms_count 2\n"));
        assert!(r.text.contains("dhash_low_confidence_queue 1\n"));
    }
    // curl's default Accept gets JSON.
    assert!(get_with(&svc.u("/metrics"), Some("*/*"))
        .content_type
        .starts_with("application/json"));

    // Unknown endpoint and wrong method: JSON errors.
    let r = get(&svc.u("/nope"));
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].as_str().unwrap().contains("/nope"));
    let r = get(&svc.u("/api/dhash/hash"));
    assert_eq!(r.status, 405);
    assert!(r.json()["error"].as_str().unwrap().contains("POST"));
}

#[test]
fn dhash_values_match_an_independent_computation_and_are_stable() {
    let fx = Fixture::new(&[]);
    let svc = fx.start(&[]);

    let mut cases: Vec<(String, Vec<u8>, String)> = Vec::new();

    // Worked out by hand: (x + y) even → 200, odd → 50. Row 0 starts 200, 50:
    // pairs fall, rise, fall, ... → 0101 0101 = 0x55; row 1 the opposite: 0xaa.
    let mut grid = [[0u8; 9]; 8];
    for (y, row) in grid.iter_mut().enumerate() {
        for (x, v) in row.iter_mut().enumerate() {
            *v = if (x + y) % 2 == 0 { 200 } else { 50 };
        }
    }
    assert_eq!(expected_hex(&to_f64(&grid)), "55aa55aa55aa55aa");
    cases.push((
        "hand checker".into(),
        png_from_grid(&grid),
        "55aa55aa55aa55aa".into(),
    ));

    // 9×8 pseudo-random grids: every bit, ties included (equal → 0).
    for seed in 0..12u64 {
        let mut next = lcg(seed);
        let mut grid = [[0u8; 9]; 8];
        for row in grid.iter_mut() {
            for v in row.iter_mut() {
                // Few levels, so equal neighbours (bit 0) occur too.
                *v = if seed % 2 == 0 {
                    next()
                } else {
                    next() / 64 * 64
                };
            }
        }
        cases.push((
            format!("9x8 seed {seed}"),
            png_from_grid(&grid),
            expected_hex(&to_f64(&grid)),
        ));
    }

    // RGB 9×8: saturated colours, gray by ITU-R 601-2 (Pillow's convert("L")).
    let palette: [[u8; 3]; 6] = [
        [255, 0, 0],
        [0, 255, 0],
        [0, 0, 255],
        [255, 255, 255],
        [0, 0, 0],
        [255, 255, 0],
    ];
    let mut next = lcg(77);
    let mut rgb = [[[0u8; 3]; 9]; 8];
    let mut gray = [[0.0f64; 9]; 8];
    for y in 0..8 {
        for x in 0..9 {
            let c = palette[next() as usize % palette.len()];
            rgb[y][x] = c;
            gray[y][x] =
                0.299 * f64::from(c[0]) + 0.587 * f64::from(c[1]) + 0.114 * f64::from(c[2]);
        }
    }
    let png = images::png_rgb(9, 8, |x, y| rgb[y as usize][x as usize]);
    cases.push(("rgb 9x8".into(), png, expected_hex(&gray)));

    // Gradients: all ones / all zeros, PNG and JPEG.
    cases.push((
        "png ramp up".into(),
        images::png_gray(200, 100, |x, _| (x * 255 / 199) as u8),
        "ffffffffffffffff".into(),
    ));
    cases.push((
        "png ramp down".into(),
        images::png_gray(200, 100, |x, _| 255 - (x * 255 / 199) as u8),
        "0000000000000000".into(),
    ));
    cases.push((
        "jpeg ramp up".into(),
        images::jpeg_gray(90, 80, |x, _| (x * 255 / 89) as u8),
        "ffffffffffffffff".into(),
    ));
    cases.push((
        "jpeg ramp down".into(),
        images::jpeg_gray(90, 80, |x, _| 255 - (x * 255 / 89) as u8),
        "0000000000000000".into(),
    ));

    for (name, body, want) in &cases {
        let r = svc.hash(body);
        assert_eq!(r.status, 200, "{name}: {}", r.text);
        assert_eq!(r.json()["dhash"], want.as_str(), "{name}");
    }

    // 18×16 images of 2×2 blocks: the test's own floating-point Lanczos.
    for seed in 100..112u64 {
        let mut next = lcg(seed);
        let mut blocks = [[0.0f64; 9]; 8];
        for row in blocks.iter_mut() {
            for v in row.iter_mut() {
                *v = f64::from(next());
            }
        }
        let png = images::png_gray(18, 16, |x, y| {
            blocks[(y / 2) as usize][(x / 2) as usize] as u8
        });
        let plane: Vec<Vec<f64>> = (0..16)
            .map(|y| (0..18).map(|x| blocks[y / 2][x / 2]).collect())
            .collect();
        let grid = lanczos_resize_f64(&plane);
        let want = hex_bits(&expected_hex(&grid));
        let mut mask = 0u64;
        for r in 0..8 {
            for c in 0..8 {
                if (grid[r][c] - grid[r][c + 1]).abs() >= 3.0 {
                    mask |= 1 << (63 - (r * 8 + c));
                }
            }
        }
        assert!(
            mask.count_ones() > 48,
            "seed {seed}: too few decisive pairs"
        );
        let r = svc.hash(&png);
        assert_eq!(r.status, 200);
        let got = hex_bits(r.json()["dhash"].as_str().unwrap());
        assert_eq!(
            got & mask,
            want & mask,
            "seed {seed}: got {got:016x} want {want:016x} mask {mask:016x}"
        );
        cases.push((format!("blocks seed {seed}"), png, format!("{got:016x}")));
    }

    // Bit-for-bit stable: a second service process (fresh database) gives
    // the same hash and confidence for every image.
    let first: Vec<Value> = cases.iter().map(|(_, b, _)| svc.hash(b).json()).collect();
    drop(svc);
    let fx2 = Fixture::new(&[]);
    let svc2 = fx2.start(&[]);
    for ((name, body, _), a) in cases.iter().zip(first.iter()) {
        let b = svc2.hash(body).json();
        assert_eq!(a["dhash"], b["dhash"], "{name}");
        assert_eq!(a["confidence"], b["confidence"], "{name}");
    }
}

#[test]
fn bad_inputs_get_clear_errors_and_the_service_stays_up() {
    let fx = Fixture::new(&[]);
    let svc = fx.start(&[]);
    let good = images::blocks_png(1).unwrap();

    let r = svc.hash(&good[..good.len() / 2]);
    assert_eq!(r.status, 422, "truncated PNG: {}", r.text);
    assert!(
        r.json()["error"].as_str().unwrap().contains("PNG"),
        "{}",
        r.text
    );

    let r = svc.hash(b"");
    assert_eq!(r.status, 422);
    assert!(
        r.json()["error"].as_str().unwrap().contains("empty"),
        "{}",
        r.text
    );

    let r = svc.hash(b"GIF89a not supported");
    assert_eq!(r.status, 422);
    assert!(r.json()["error"].as_str().unwrap().contains("PNG or JPEG"));

    // 50 MB: rejected with a clear error; the service stays up.
    let big = vec![0x89u8; 50 * 1024 * 1024];
    let r = svc.hash(&big);
    assert_eq!(r.status, 413, "{}", r.text);
    let e = r.json();
    assert!(
        e["error"].as_str().unwrap().contains("exceeds the limit"),
        "{e}"
    );
    assert_eq!(e["limit_bytes"], 20 * 1024 * 1024);

    let h = get(&svc.u("/health"));
    assert_eq!(h.status, 200);
    assert_eq!(h.json()["status"], "ok");
    assert_eq!(svc.hash(&good).status, 200);

    let m = svc.metrics();
    assert_eq!(m["extraction_failures_total"], 3, "{m}");
    assert_eq!(m["rejected_total"], 1);
    assert_eq!(m["hash_requests_total"], 4);
    assert_eq!(m["requests_total"], 5);
    assert_eq!(m["errors_total"], 0);
    assert_eq!(m["hash_time_ms"]["count"], 4, "422s are timed too");
}

#[test]
fn concurrent_requests_and_health_during_slow_hashing() {
    let fx = Fixture::new(&[]);
    let svc = fx.start(&["--fault", "hash_latency_ms=1500"]);
    let url = svc.u("/api/dhash/hash");
    let t0 = Instant::now();
    let handles: Vec<_> = (0..20u64)
        .map(|i| {
            let url = url.clone();
            thread::spawn(move || {
                let body = if i % 5 == 4 {
                    images::uniform_png(10).unwrap()
                } else {
                    images::blocks_png(i).unwrap()
                };
                let r = post(&url, &body);
                (i, r.status, r.json())
            })
        })
        .collect();
    // While the workers are all asleep in hashing, /health answers at once.
    thread::sleep(Duration::from_millis(300));
    let th = Instant::now();
    let h = get(&svc.u("/health"));
    assert_eq!(h.status, 200);
    assert!(
        th.elapsed() < Duration::from_millis(1000),
        "health took {:?}",
        th.elapsed()
    );
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let mut ids = BTreeSet::new();
    for (i, status, j) in &results {
        assert_eq!(*status, 200, "request {i}: {j}");
        assert!(ids.insert(j["id"].as_i64().unwrap()), "duplicate id");
        assert!(j["elapsed_ms"].as_f64().unwrap() >= 1500.0);
        let want = if i % 5 == 4 {
            "0000000000000000".to_string()
        } else {
            dhash_service::dhash::hash_bytes(&images::blocks_png(*i).unwrap())
                .unwrap()
                .hex()
        };
        assert_eq!(j["dhash"], want.as_str());
    }
    // 8 workers: 20 requests of 1.5 s take 3 rounds (4.5 s), not 20 (30 s).
    assert!(t0.elapsed() < Duration::from_secs(12), "{:?}", t0.elapsed());
    let m = svc.metrics();
    assert_eq!(m["hash_requests_total"], 20);
    assert_eq!(m["low_confidence_queue"], 4);
    assert_eq!(m["low_confidence_total"], 4);
    let n = fx.stored_hashes();
    assert_eq!(n, 20);
}

#[test]
fn refuses_to_start_on_a_missing_or_old_schema() {
    let fx = Fixture::new(&[]);
    // Schema version 1 < the release's 2.
    std::fs::remove_file(fx.db()).unwrap();
    migrate(&fx.db(), 1);
    let (code, err) = refuse(fx.serve_cmd("127.0.0.1:0", &[]));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("schema version 1") && err.contains("needs 2"),
        "{err}"
    );
    assert!(err.contains("migrate_dhash"), "{err}");

    // No schema_migrations table.
    std::fs::remove_file(fx.db()).unwrap();
    rusqlite::Connection::open(fx.db())
        .unwrap()
        .execute_batch("CREATE TABLE t (x);")
        .unwrap();
    let (code, err) = refuse(fx.serve_cmd("127.0.0.1:0", &[]));
    assert_eq!(code, 1);
    assert!(err.contains("no schema_migrations table"), "{err}");

    // No database at all: refused, and not created.
    std::fs::remove_file(fx.db()).unwrap();
    let (code, err) = refuse(fx.serve_cmd("127.0.0.1:0", &[]));
    assert_eq!(code, 1);
    assert!(err.contains("does not exist"), "{err}");
    assert!(!fx.db().exists());

    // A missing release dir is refused too.
    migrate(&fx.db(), 2);
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--bind", "127.0.0.1:0", "--database"])
        .arg(fx.db())
        .arg("--release-dir")
        .arg(fx.dir.path());
    let (code, err) = refuse(cmd);
    assert_eq!(code, 1);
    assert!(err.contains("release.json"), "{err}");

    // Back at version 2 it starts.
    let svc = fx.start(&[]);
    assert_eq!(svc.started["schema_version"], 2);
}

#[test]
fn health_is_503_when_the_database_goes_away() {
    let fx = Fixture::new(&[]);
    let svc = fx.start(&[]);
    assert_eq!(get(&svc.u("/health")).status, 200);
    let aside = fx.dir.path().join("aside.sqlite3");
    std::fs::rename(fx.db(), &aside).unwrap();
    let h = get(&svc.u("/health"));
    assert_eq!(h.status, 503);
    let j = h.json();
    assert_eq!(j["status"], "error");
    assert!(
        j["reason"].as_str().unwrap().contains("does not exist"),
        "{j}"
    );
    // Hashing cannot store: 500, counted as an error.
    let r = svc.hash(&images::blocks_png(2).unwrap());
    assert_eq!(r.status, 500);
    assert_eq!(svc.metrics()["errors_total"], 1);
    // A schema rolled back below the release's needs is "cannot serve" too.
    std::fs::rename(&aside, fx.db()).unwrap();
    assert_eq!(get(&svc.u("/health")).status, 200);
    rusqlite::Connection::open(fx.db())
        .unwrap()
        .execute("DELETE FROM schema_migrations WHERE version = 2", [])
        .unwrap();
    let h = get(&svc.u("/health"));
    assert_eq!(h.status, 503);
    assert!(h.json()["reason"]
        .as_str()
        .unwrap()
        .contains("schema version 1"));
}

#[test]
fn bundle_faults_move_their_metrics() {
    // One bundle with every fault switched on in its config.json.
    let fx = Fixture::new(&[
        "hash_latency_ms=300",
        "failure_fraction=0.5",
        "error_fraction=0.25",
        "low_confidence_flood=1200",
        "health_fail=true",
        "crash_at_start=true",
    ]);
    let cfg: Value =
        serde_json::from_slice(&std::fs::read(fx.release.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["faults"]["crash_at_start"], true);

    // crash_at_start: exit 1 before serving, with a message; nothing flooded.
    let (code, err) = refuse(fx.serve_cmd("127.0.0.1:0", &[]));
    assert_eq!(code, 1);
    assert!(err.contains("crash_at_start"), "{err}");
    let conn = rusqlite::Connection::open(fx.db()).unwrap();
    let n: i64 = conn
        .query_row("SELECT COUNT(*) FROM low_confidence_queue", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(n, 0);

    // The same bundle with crash_at_start overridden on the command line:
    // every other fault of its config.json is live.
    let svc = fx.start(&["--fault", "crash_at_start=false"]);
    let mut active: Vec<String> = serde_json::from_value(svc.started["faults"].clone()).unwrap();
    active.sort();
    assert_eq!(
        active,
        [
            "error_fraction",
            "failure_fraction",
            "hash_latency_ms",
            "health_fail",
            "low_confidence_flood"
        ]
    );
    // health_fail: /health 503 with the reason; the API still serves.
    let h = get(&svc.u("/health"));
    assert_eq!(h.status, 503);
    assert_eq!(h.json()["status"], "error");
    assert!(h.json()["reason"].as_str().unwrap().contains("health_fail"));
    // low_confidence_flood: in the queue before any request.
    assert_eq!(
        get(&svc.u("/api/dhash/queue/status")).json()["length"],
        1200
    );
    let mut statuses = Vec::new();
    for i in 0..8 {
        statuses.push(svc.hash(&images::blocks_png(i).unwrap()).status);
    }
    // failure_fraction 0.5: hash requests 2, 4, 6, 8 fail with 422;
    // error_fraction 0.25 over the other 4: the 4th of them (request 7) → 500.
    assert_eq!(statuses, [200, 422, 200, 422, 200, 422, 500, 422]);
    let m = svc.metrics();
    assert_eq!(m["hash_requests_total"], 8);
    assert_eq!(m["extraction_failures_total"], 4);
    assert_eq!(m["errors_total"], 1);
    assert_eq!(m["low_confidence_queue"], 1200);
    // hash_latency_ms: every hash took ≥ 300 ms, nothing in the ≤ 250 bucket.
    let b = m["hash_time_ms"]["buckets"].as_array().unwrap();
    assert_eq!(b[5]["le"], 250);
    assert_eq!(b[5]["count"], 0, "every hash took ≥ 300 ms: {m}");
    assert_eq!(b[10]["count"], 7, "200s and 422s are timed");
    assert!(m["hash_time_ms"]["sum"].as_f64().unwrap() >= 7.0 * 300.0);
    let mut faults: Vec<String> = serde_json::from_value(m["faults"].clone()).unwrap();
    faults.sort();
    assert_eq!(faults, active);
    drop(svc);

    // The fault-free bundle: healthy, empty queue; a --fault override on
    // serve switches a fault on without a new bundle.
    let fx = Fixture::new(&[]);
    let svc = fx.start(&[]);
    assert_eq!(get(&svc.u("/health")).status, 200);
    assert_eq!(svc.metrics()["low_confidence_queue"], 0);
    drop(svc);
    let svc = fx.start(&["--fault", "health_fail=1"]);
    assert_eq!(get(&svc.u("/health")).status, 503);
}

#[test]
fn sigterm_finishes_in_flight_requests_and_exits_0() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let fx = Fixture::new(&[]);
    let mut svc = fx.start(&["--fault", "hash_latency_ms=1000"]);
    let url = svc.u("/api/dhash/hash");
    let inflight = thread::spawn(move || post(&url, &images::blocks_png(5).unwrap()));
    thread::sleep(Duration::from_millis(300));
    kill(Pid::from_raw(svc.pid()), Signal::SIGTERM).unwrap();
    let r = inflight.join().unwrap();
    assert_eq!(
        r.status, 200,
        "the in-flight request was answered: {}",
        r.text
    );
    let st = svc.wait_exit(Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "stderr: {}", svc.stderr.lock().unwrap());
    thread::sleep(Duration::from_millis(100));
    let out = svc.stdout.lock().unwrap().clone();
    let last: Value = serde_json::from_str(out.last().unwrap()).unwrap();
    assert_eq!(last["event"], "service.stopped");
    assert_eq!(last["hash_requests_total"], 1);
    // The hash was stored before exit.
    let n = fx.stored_hashes();
    assert_eq!(n, 1);
}

#[test]
fn load_driver_moves_the_counters() {
    let fx = Fixture::new(&[]);
    let svc = fx.start(&[]);
    let before = svc.metrics();
    assert_eq!(before["hash_requests_total"], 0);
    let o = Command::new(BIN)
        .args([
            "load",
            "--url",
            &svc.url,
            "--rate",
            "20",
            "--duration",
            "2s",
            "--mix",
            "valid=60,low=20,bad=20",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let evs = events(&o.stdout);
    assert_eq!(evs[0]["event"], "load.started");
    let done = evs
        .iter()
        .find(|e| e["event"] == "load.completed")
        .expect("load.completed");
    assert_eq!(done["scheduled"], 40, "{done}");
    assert_eq!(done["sent"], 40);
    assert_eq!(done["skipped"], 0);
    assert_eq!(done["transport_errors"], 0);
    assert_eq!(done["kinds"]["valid"]["sent"], 24);
    assert_eq!(done["kinds"]["low"]["sent"], 8);
    assert_eq!(done["kinds"]["bad"]["sent"], 8);
    assert_eq!(done["kinds"]["valid"]["status"]["200"], 24);
    assert_eq!(done["kinds"]["low"]["status"]["200"], 8);
    assert_eq!(done["kinds"]["bad"]["status"]["422"], 8);
    assert_eq!(done["status"]["200"], 32);
    let secs = done["elapsed_seconds"].as_f64().unwrap();
    assert!((1.8..5.0).contains(&secs), "steady rate over ~2 s: {secs}");
    let m = svc.metrics();
    assert_eq!(m["hash_requests_total"], 40);
    assert_eq!(m["extraction_failures_total"], 8);
    assert_eq!(m["low_confidence_queue"], 8);
    assert_eq!(m["hash_time_ms"]["count"], 40);

    // Nobody listening: exit 1 with a clear message.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let o = Command::new(BIN)
        .args([
            "load",
            "--url",
            &format!("http://127.0.0.1:{port}"),
            "--rate",
            "5",
            "--duration",
            "1s",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no request reached"));
}

/// The service under abusive clients: header and body limits, slow readers.
#[path = "hardening.rs"]
mod hardening;
/// dHash agreement with Python's `imagehash.dhash` on generated images.
#[path = "imagehash.rs"]
mod imagehash;
