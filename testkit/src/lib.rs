//! Test support shared by the crates' integration tests.
//!
//! - [`TestProject`]: a throw-away project root (temp folder) with an
//!   `environments.json` for `staging` and `production` on free loopback
//!   ports with short timeouts, and a copy of the repository's
//!   `quality-gates-config.json`. It builds release bundles with the real
//!   `dhash-service bundle`, runs the workspace binaries against itself
//!   ([`TestProject::cmd`]), can install + migrate + start a bundle directly
//!   ([`TestProject::install_and_start`]), and on drop stops every service
//!   its environments' pidfiles name.
//! - [`bin_path`]: the path of a workspace binary (built if missing).
//! - [`receiver`]: loopback HTTP receivers that record requests.
//!
//! Helpers panic with a clear message when setup fails (they are for tests);
//! operations a test may want to see fail return `Result`.
//! Set `TESTKIT_KEEP=1` to keep the temp folder for a post-mortem.

pub mod receiver;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;

use anyhow::Context;
use gates_core::config::EnvConfig;
use gates_core::project::Project;
use gates_core::Emitter;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The environments every [`TestProject`] has.
pub const ENVIRONMENTS: &[&str] = &["staging", "production"];

/// The workspace root (holds the root `Cargo.toml` and `quality-gates-config.json`).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// The folder holding the workspace binaries (`target/debug`): the parent
/// of the running test executable's `deps/` folder.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    dir
}

/// Cargo's target folder (`target`, what `CARGO_TARGET_DIR` names): the
/// parent of [`bin_dir`].
pub fn target_dir() -> PathBuf {
    let bins = bin_dir();
    bins.parent().map(Path::to_path_buf).unwrap_or(bins)
}

/// The package (name, folder) that owns each workspace binary.
fn package_of(bin: &str) -> Option<(&'static str, &'static str)> {
    Some(match bin {
        "dhash-service" => ("dhash-service", "dhash-service"),
        "backup_dhash" => ("dhash-backup", "backup"),
        "rollback_dhash" => ("dhash-rollback", "rollback"),
        "deploy_dhash" => ("dhash-deploy", "deploy"),
        "migrate_dhash" => ("dhash-migrate", "migrate"),
        "monitor_dhash" => ("dhash-monitor", "monitor"),
        "notify" | "deploy-notify" => ("dhash-notify", "notify"),
        "smoke_tests" | "validate_logging" => ("dhash-smoke", "smoke"),
        _ => return None,
    })
}

/// The newest modification time of the files under `dir`.
fn newest_mtime(dir: &Path) -> Option<std::time::SystemTime> {
    let mut newest = None;
    for entry in fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let t = if path.is_dir() {
            newest_mtime(&path)
        } else {
            entry.metadata().and_then(|m| m.modified()).ok()
        };
        newest = newest.max(t);
    }
    newest
}

/// Whether a built binary is older than its package's or gates-core's sources.
fn is_stale(path: &Path, folder: &str) -> bool {
    let Ok(built) = fs::metadata(path).and_then(|m| m.modified()) else {
        return true;
    };
    let root = workspace_root();
    [folder, "gates-core"].iter().any(|f| {
        newest_mtime(&root.join(f).join("src")).is_some_and(|t| t > built)
            || fs::metadata(root.join(f).join("Cargo.toml"))
                .and_then(|m| m.modified())
                .is_ok_and(|t| t > built)
    })
}

/// Path of a workspace binary (`target/debug/<name>`, see [`bin_dir`]).
/// When it is missing, or older than its package's (or gates-core's)
/// sources, it is (re)built once per test process with
/// `cargo build -p <pkg> --bin <name>`; a failed rebuild of an existing
/// binary keeps the old one (with a warning). A test of the crate that owns
/// the binary can use `env!("CARGO_BIN_EXE_<name>")` instead.
/// `TESTKIT_NO_BUILD=1` never builds.
pub fn bin_path(name: &str) -> PathBuf {
    static CHECKED: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let path = bin_dir().join(name);
    let Ok(mut checked) = CHECKED.lock() else {
        return path;
    };
    if checked.iter().any(|c| c == name) {
        return path;
    }
    checked.push(name.to_string());
    let no_build = std::env::var_os("TESTKIT_NO_BUILD").is_some_and(|v| v == "1");
    let pkg = package_of(name);
    let wanted = !path.is_file() || pkg.is_some_and(|(_, folder)| is_stale(&path, folder));
    if no_build || !wanted {
        return path;
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root()).arg("build");
    if let Some((pkg, _)) = pkg {
        cmd.args(["-p", pkg]);
    }
    let status = cmd.args(["--bin", name]).stdin(Stdio::null()).status();
    let built = matches!(status, Ok(s) if s.success());
    if !built && path.is_file() {
        eprintln!("testkit: rebuilding {name} failed ({status:?}); using the existing binary");
    }
    assert!(
        path.is_file(),
        "could not build {name} ({status:?}); run `cargo build --bin {name}`"
    );
    path
}

/// A free loopback port (asked from the OS).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

/// A temporary project root with `staging` and `production` environments.
pub struct TestProject {
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    ports: BTreeMap<String, u16>,
}

impl Default for TestProject {
    fn default() -> Self {
        Self::new()
    }
}

impl TestProject {
    /// A fresh project: `environments.json` (both environments on free
    /// loopback ports; start timeout 20 s, stop 5 s; health 3 checks 0.2 s
    /// apart within 20 s; monitor every 1 s for 20 s, probe timeout 2 s;
    /// notification quiet period 2 s, timeout 5 s) and a copy of the
    /// repository's `quality-gates-config.json`.
    pub fn new() -> TestProject {
        let dir = tempfile::Builder::new()
            .prefix("dhash-test-")
            .tempdir()
            .expect("creating a temp project folder");
        let root = fs::canonicalize(dir.path()).unwrap_or_else(|_| dir.path().to_path_buf());
        let mut ports = BTreeMap::new();
        let mut envs = serde_json::Map::new();
        for name in ENVIRONMENTS {
            let port = loop {
                let p = free_port();
                if !ports.values().any(|q| *q == p) {
                    break p;
                }
            };
            ports.insert(name.to_string(), port);
            envs.insert(name.to_string(), env_json(name, port));
        }
        let topology = json!({
            "description": "testkit project",
            "dist_dir": "dist",
            "environments": envs,
        });
        let tp = TestProject {
            dir: Some(dir),
            root,
            ports,
        };
        tp.write_topology(&topology);
        let gates = workspace_root().join(gates_core::project::GATES_FILE);
        fs::copy(&gates, tp.root.join(gates_core::project::GATES_FILE))
            .unwrap_or_else(|e| panic!("copying {}: {e}", gates.display()));
        tp
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The environment tests use by default.
    pub fn env_name(&self) -> &'static str {
        "staging"
    }

    /// The loopback port an environment's service binds.
    pub fn port(&self, env: &str) -> u16 {
        *self
            .ports
            .get(env)
            .unwrap_or_else(|| panic!("no environment {env:?}"))
    }

    /// `http://127.0.0.1:<port>` of an environment.
    pub fn base_url(&self, env: &str) -> String {
        format!("http://127.0.0.1:{}", self.port(env))
    }

    pub fn topology_path(&self) -> PathBuf {
        self.root.join(gates_core::project::TOPOLOGY_FILE)
    }

    /// The topology as JSON.
    pub fn topology(&self) -> Value {
        let text = fs::read_to_string(self.topology_path()).expect("reading environments.json");
        serde_json::from_str(&text).expect("environments.json is JSON")
    }

    /// Rewrites `environments.json` through `edit`, e.g.
    /// `tp.edit_topology(|t| t["environments"]["staging"]["monitor"]["duration"] = json!("5s"))`.
    pub fn edit_topology(&self, edit: impl FnOnce(&mut Value)) {
        let mut t = self.topology();
        edit(&mut t);
        self.write_topology(&t);
    }

    fn write_topology(&self, t: &Value) {
        let text = serde_json::to_string_pretty(t).expect("encoding the topology");
        fs::write(self.topology_path(), text).expect("writing environments.json");
    }

    /// The project as the tools load it.
    pub fn project(&self) -> Project {
        Project::open(&self.root).expect("loading the test project")
    }

    /// One environment, resolved.
    pub fn env(&self, name: &str) -> EnvConfig {
        self.project().env(name).expect("known environment").clone()
    }

    /// A workspace binary run against this project: `DHASH_ROOT` set, cwd =
    /// root, stdin closed, secret variables of the test process removed.
    pub fn cmd(&self, bin: &str) -> Command {
        self.cmd_path(&bin_path(bin))
    }

    /// Like [`TestProject::cmd`] for a binary given by path (e.g.
    /// `env!("CARGO_BIN_EXE_smoke_tests")`).
    pub fn cmd_path(&self, bin: &Path) -> Command {
        let mut cmd = Command::new(bin);
        cmd.current_dir(&self.root)
            .env(gates_core::project::ROOT_VAR, &self.root)
            .stdin(Stdio::null());
        for (name, value) in std::env::vars() {
            if !gates_core::redact::Redactor::from_vars([(name.clone(), value)]).is_empty() {
                cmd.env_remove(name);
            }
        }
        cmd
    }

    /// Builds `dist/dhash-<tag>/` with the real `dhash-service bundle`,
    /// e.g. `tp.bundle("v2", &[("hash_latency_ms", "2500")])`; returns its
    /// folder. A bundle of the debug binary takes seconds to hash, so each
    /// (tag, faults, binary) is built once into `target/testkit-bundles/` and
    /// copied from there (`TESTKIT_NO_BUNDLE_CACHE=1` builds every time).
    /// An existing `dist/dhash-<tag>` of this project is replaced.
    pub fn bundle(&self, tag: &str, faults: &[(&str, &str)]) -> PathBuf {
        let dest = self.root.join("dist").join(format!("dhash-{tag}"));
        let _ = fs::remove_dir_all(&dest);
        let no_cache = std::env::var_os("TESTKIT_NO_BUNDLE_CACHE").is_some_and(|v| v == "1");
        if no_cache {
            return self.run_bundle(tag, faults, &self.root.join("dist"));
        }
        let bin = bin_path("dhash-service");
        let stamp = fs::metadata(&bin)
            .map(|m| format!("{:?} {}", m.modified().ok(), m.len()))
            .unwrap_or_default();
        let key_text = format!("{tag}\n{faults:?}\n{stamp}");
        let key = hex::encode(&Sha256::digest(key_text.as_bytes())[..8]);
        let cache_root = target_dir().join("testkit-bundles");
        let entry = cache_root.join(&key);
        let cached = entry.join(format!("dhash-{tag}"));
        // One build at a time in this process: the others then find it cached.
        static BUILDING: Mutex<()> = Mutex::new(());
        let _building = BUILDING.lock();
        if !cached.join("release.json").is_file() {
            let tmp = cache_root.join(format!(".{key}.{}.partial", std::process::id()));
            let _ = fs::remove_dir_all(&tmp);
            self.run_bundle(tag, faults, &tmp);
            fs::write(tmp.join("binary-stamp"), &stamp).expect("writing the cache stamp");
            if fs::rename(&tmp, &entry).is_err() {
                // Another test process cached it first.
                let _ = fs::remove_dir_all(&tmp);
            }
            prune_bundle_cache(&cache_root, &stamp);
        }
        drop(_building);
        copy_dir(&cached, &dest).unwrap_or_else(|e| panic!("copying {}: {e:#}", cached.display()));
        dest
    }

    fn run_bundle(&self, tag: &str, faults: &[(&str, &str)], out_dir: &Path) -> PathBuf {
        let mut cmd = self.cmd("dhash-service");
        cmd.args(["bundle", "--tag", tag, "--out"]).arg(out_dir);
        for (k, v) in faults {
            cmd.arg("--fault").arg(format!("{k}={v}"));
        }
        let out = cmd.output().expect("running dhash-service bundle");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "dhash-service bundle --tag {tag} failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let from_event = stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["event"] == "bundle.created")
            .and_then(|v| v["path"].as_str().map(PathBuf::from));
        let dir = from_event.unwrap_or_else(|| out_dir.join(format!("dhash-{tag}")));
        let dir = if dir.is_absolute() {
            dir
        } else {
            self.root.join(dir)
        };
        assert!(
            dir.join("release.json").is_file(),
            "bundle {} has no release.json",
            dir.display()
        );
        dir
    }

    /// Installs a bundle into an environment without deploy_dhash: copies it
    /// to `releases/<id>`, switches `current`, applies the bundle's
    /// `migrations/*.up.sql` not yet applied (recording `schema_migrations`
    /// rows). Returns the release id.
    pub fn install(&self, env: &str, bundle: &Path) -> String {
        let env = self.env(env);
        install_bundle(&env, bundle)
            .unwrap_or_else(|e| panic!("installing {} into {}: {e:#}", bundle.display(), env.name))
    }

    /// Starts an environment's service (`gates_core::service::start`).
    pub fn start(&self, env: &str) -> anyhow::Result<()> {
        gates_core::service::start(&self.env(env), &Emitter::sink("testkit", env))
    }

    /// Stops an environment's service (`gates_core::service::stop`).
    pub fn stop(&self, env: &str) -> anyhow::Result<()> {
        gates_core::service::stop(&self.env(env), &Emitter::sink("testkit", env))
    }

    /// [`TestProject::install`] then [`TestProject::start`]; returns the release id.
    pub fn install_and_start(&self, env: &str, bundle: &Path) -> String {
        let id = self.install(env, bundle);
        if let Err(e) = self.start(env) {
            panic!("starting {env} with release {id}: {e:#}");
        }
        id
    }

    /// Keeps the temp folder after the test (prints where).
    pub fn keep(&mut self) {
        if let Some(dir) = self.dir.take() {
            let path = dir.keep();
            eprintln!("testkit: kept {}", path.display());
        }
    }
}

impl Drop for TestProject {
    fn drop(&mut self) {
        // Stop every service a pidfile of this project names (started by the
        // test itself or by a tool under test). `stop` signals only a pid
        // whose command line is dhash-service.
        if let Ok(project) = Project::open(&self.root) {
            for env in project.topology.environments.values() {
                if env.pid_file().exists() {
                    let _ = gates_core::service::stop(env, &Emitter::sink("testkit", &env.name));
                }
            }
        }
        if std::env::var_os("TESTKIT_KEEP").is_some_and(|v| v == "1") {
            self.keep();
        }
    }
}

/// Removes cached bundles built from another dhash-service binary.
fn prune_bundle_cache(cache_root: &Path, stamp: &str) {
    let Ok(entries) = fs::read_dir(cache_root) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with('.') {
            // A build in progress, or one a killed test left behind.
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > std::time::Duration::from_secs(3600));
            if old {
                let _ = fs::remove_dir_all(&path);
            }
            continue;
        }
        let same = fs::read_to_string(path.join("binary-stamp")).is_ok_and(|s| s == stamp);
        if !same {
            let _ = fs::remove_dir_all(&path);
        }
    }
}

fn env_json(name: &str, port: u16) -> Value {
    let base = format!("http://127.0.0.1:{port}");
    json!({
        "install_root": format!(".dhash/{name}"),
        "data_dir": format!(".dhash/{name}/data"),
        "database": format!(".dhash/{name}/data/dhash.sqlite3"),
        "service": {"kind": "local", "bind": format!("127.0.0.1:{port}"),
                    "start_timeout": "20s", "stop_timeout": "5s"},
        "health_url": format!("{base}/health"),
        "metrics_url": format!("{base}/metrics"),
        "queue_url": format!("{base}/api/dhash/queue/status"),
        "backup_dir": "backups",
        "log_dir": "monitor_logs",
        "notifications": {
            "fallback_file": "monitor_logs/notification_fallback.jsonl",
            "out_dir": "notifications_out",
            "quiet_period": "2s",
            "timeout": "5s"
        },
        "monitor": {"duration": "20s", "cadence": [{"every": "1s"}], "probe_timeout": "2s"},
        "health": {"checks_required": 3, "interval": 0.2, "timeout": "20s"},
        "retention": {"backups": 10, "releases": 5}
    })
}

/// See [`TestProject::install`].
pub fn install_bundle(env: &EnvConfig, bundle: &Path) -> anyhow::Result<String> {
    let release_json = bundle.join("release.json");
    let meta: Value = serde_json::from_str(
        &fs::read_to_string(&release_json)
            .with_context(|| format!("reading {}", release_json.display()))?,
    )?;
    let id = meta["id"]
        .as_str()
        .with_context(|| format!("{}: no id", release_json.display()))?
        .to_string();
    let releases = env.releases_dir();
    let dest = releases.join(&id);
    if !dest.exists() {
        let tmp = releases.join(format!(".{id}.testkit.partial"));
        let _ = fs::remove_dir_all(&tmp);
        copy_dir(bundle, &tmp)?;
        fs::rename(&tmp, &dest)?;
    }
    gates_core::fsutil::switch_symlink(&Path::new("releases").join(&id), &env.current_link())?;
    apply_migrations(&env.database, &dest.join("migrations"))?;
    Ok(id)
}

/// Copies a folder tree (files keep their permissions).
pub fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            fs::copy(entry.path(), &target)
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// Applies `NNNN_name.up.sql` files of `dir` in version order that
/// `schema_migrations` does not list yet; returns the versions applied.
pub fn apply_migrations(database: &Path, dir: &Path) -> anyhow::Result<Vec<i64>> {
    if let Some(parent) = database.parent() {
        fs::create_dir_all(parent)?;
    }
    let mut conn = rusqlite::Connection::open(database)?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT, checksum TEXT, applied_at TEXT)",
    )?;
    let mut ups: Vec<(i64, String, PathBuf)> = Vec::new();
    if dir.is_dir() {
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            let file = path
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            let Some(stem) = file.strip_suffix(".up.sql") else {
                continue;
            };
            let Some((num, name)) = stem.split_once('_') else {
                continue;
            };
            let Ok(version) = num.parse::<i64>() else {
                continue;
            };
            ups.push((version, name.to_string(), path));
        }
    }
    ups.sort();
    let mut applied = Vec::new();
    for (version, name, path) in ups {
        let done: i64 = conn.query_row(
            "SELECT COUNT(*) FROM schema_migrations WHERE version = ?1",
            [version],
            |r| r.get(0),
        )?;
        if done > 0 {
            continue;
        }
        let sql = fs::read_to_string(&path)?;
        let checksum = hex::encode(Sha256::digest(sql.as_bytes()));
        let tx = conn.transaction()?;
        tx.execute_batch(&sql)
            .with_context(|| format!("applying {}", path.display()))?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, checksum, applied_at) VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![version, name, checksum, gates_core::event::now_rfc3339()],
        )?;
        tx.commit()?;
        applied.push(version);
    }
    Ok(applied)
}

/// Parses a tool's stdout into its JSON events (non-JSON lines are skipped).
pub fn events(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(Value::is_object)
        .collect()
}

/// A finished tool's exit code, stdout and stderr, for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Whether a process is alive (not a zombie).
pub fn pid_alive(pid: u32) -> bool {
    gates_core::service::process_cmdline(pid).is_some()
}

/// POSTs an image to the service the way an operator would (`curl
/// --data-binary @-`) and returns the JSON answer.
pub fn post_image(url: &str, body: &[u8]) -> Value {
    use std::io::Write;
    let mut child = Command::new("curl")
        .args(["-s", "-X", "POST", "--data-binary", "@-"])
        .args(["-H", "Content-Type: image/png", url])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("running curl");
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(body).expect("writing to curl");
    }
    let out = child.wait_with_output().expect("waiting for curl");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "POST {url}: not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}
