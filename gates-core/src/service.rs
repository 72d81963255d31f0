//! Start, stop and restart of an environment's service.
//!
//! - [`ServiceControl::Local`]: the reference `dhash-service` of
//!   `<install_root>/current`, spawned in its own process group with stdin
//!   closed, stdout and stderr appended to `service.log`, its pid written
//!   atomically to `service.pid`. Start returns when `/health` answers OK
//!   (within `start_timeout`) and fails with the last lines of the log when the
//!   service exits or never gets healthy. Stop sends SIGTERM, waits
//!   `stop_timeout`, then SIGKILL, but only to a pid whose command line still
//!   names `dhash-service`: a recycled pid is never signalled.
//! - [`ServiceControl::Commands`]: the configured shell commands (`sh -c`),
//!   with `DHASH_ENV`, `DHASH_INSTALL_ROOT`, `DHASH_RELEASE_DIR`,
//!   `DHASH_DATA_DIR` and `DHASH_DATABASE` set; a non-zero exit is an error
//!   carrying the command's stderr. Start and restart then wait for `/health`.
//!
//! - Fleets: [`drain`] / [`undrain`] take an instance out of its balancer and
//!   put it back (the `drain`/`undrain` commands, or the local `draining`
//!   marker file).
//!
//! Events: `service.started`, `service.stopped` (through the caller's Emitter).

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use serde::Serialize;
use serde_json::json;

use crate::config::{EnvConfig, ServiceControl};
use crate::event::{Emitter, Level};
use crate::probe::probe_health;
use crate::sample::Health;

/// The name a local service's command line must contain before it is signalled.
pub const SERVICE_BINARY: &str = "dhash-service";

/// How many lines of `service.log` an error quotes.
const LOG_TAIL_LINES: usize = 20;

/// What [`status`] found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceStatus {
    /// Local: the pidfile names a live dhash-service. Commands: `/health` answered.
    pub running: bool,
    /// Local only: the pid of the running service.
    pub pid: Option<u32>,
    /// The release `current` points at (its `release.json` id, else the folder name).
    pub release: Option<String>,
    /// One health probe.
    pub health: Health,
    /// A sentence for humans (e.g. "stale pidfile: pid 123 is not running").
    pub detail: String,
}

/// Starts the service and returns when `/health` answers OK.
pub fn start(env: &EnvConfig, em: &Emitter) -> anyhow::Result<()> {
    match &env.service {
        ServiceControl::Local { bind, .. } => start_local(env, bind, em),
        ServiceControl::Commands { start, .. } => {
            let t0 = Instant::now();
            run_command(env, ServiceAction::Start, start)?;
            wait_ready_commands(env, t0)?;
            em.emit(
                "service.started",
                Level::Info,
                format!("{} service started ({})", env.name, short(start)),
                json!({"command": start, "release": current_release(env),
                       "seconds": secs(t0.elapsed())}),
            );
            Ok(())
        }
    }
}

/// Stops the service. Stopping a service that is not running is not an error.
pub fn stop(env: &EnvConfig, em: &Emitter) -> anyhow::Result<()> {
    match &env.service {
        ServiceControl::Local { .. } => stop_local(env, em),
        ServiceControl::Commands { stop, .. } => {
            let t0 = Instant::now();
            run_command(env, ServiceAction::Stop, stop)?;
            em.emit(
                "service.stopped",
                Level::Info,
                format!("{} service stopped ({})", env.name, short(stop)),
                json!({"command": stop, "seconds": secs(t0.elapsed())}),
            );
            Ok(())
        }
    }
}

/// Stop then start (Local, or Commands without a `restart` command), or the
/// configured `restart` command followed by the wait for `/health`.
pub fn restart(env: &EnvConfig, em: &Emitter) -> anyhow::Result<()> {
    match &env.service {
        ServiceControl::Commands {
            restart: Some(cmd), ..
        } => {
            let t0 = Instant::now();
            run_command(env, ServiceAction::Restart, cmd)?;
            wait_ready_commands(env, t0)?;
            em.emit(
                "service.started",
                Level::Info,
                format!("{} service restarted ({})", env.name, short(cmd)),
                json!({"command": cmd, "restart": true, "release": current_release(env),
                       "seconds": secs(t0.elapsed())}),
            );
            Ok(())
        }
        _ => {
            stop(env, em)?;
            start(env, em)
        }
    }
}

/// The marker a local fleet instance carries while it is out of the
/// balancer (`<install_root>/draining`); a balancer in front of local
/// instances skips an instance that has it.
pub const DRAIN_MARKER: &str = "draining";

/// Takes a fleet instance out of its balancer before it is changed: the
/// `drain` command of a `commands` kind (none: nothing to do), or the
/// [`DRAIN_MARKER`] file of a local instance. The caller then waits the
/// fleet's drain time so in-flight requests finish elsewhere.
pub fn drain(env: &EnvConfig) -> anyhow::Result<()> {
    match &env.service {
        ServiceControl::Local { .. } => {
            fs::create_dir_all(&env.install_root)
                .with_context(|| format!("creating {}", env.install_root.display()))?;
            crate::fsutil::write_atomic(
                &env.install_root.join(DRAIN_MARKER),
                format!("{}\n", crate::event::now_rfc3339()).as_bytes(),
            )
        }
        ServiceControl::Commands { drain: Some(c), .. } => {
            run_command(env, ServiceAction::Drain, c)
        }
        ServiceControl::Commands { .. } => Ok(()),
    }
}

/// Puts a drained instance back (the `undrain` command, or removes the marker).
pub fn undrain(env: &EnvConfig) -> anyhow::Result<()> {
    match &env.service {
        ServiceControl::Local { .. } => {
            match fs::remove_file(env.install_root.join(DRAIN_MARKER)) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(anyhow::anyhow!(
                    "removing {}: {e}",
                    env.install_root.join(DRAIN_MARKER).display()
                )),
            }
        }
        ServiceControl::Commands {
            undrain: Some(c), ..
        } => run_command(env, ServiceAction::Undrain, c),
        ServiceControl::Commands { .. } => Ok(()),
    }
}

/// The service's state: pidfile (Local) and one health probe.
pub fn status(env: &EnvConfig) -> ServiceStatus {
    let health = probe_health(&env.health_url, env.monitor.probe_timeout);
    let release = current_release(env);
    match &env.service {
        ServiceControl::Local { .. } => {
            let (pid, detail) = match read_pidfile(&env.pid_file()) {
                Ok(None) => (None, "not running (no pidfile)".to_string()),
                Err(e) => (None, format!("{e:#}")),
                Ok(Some(pid)) => match process_cmdline(pid) {
                    None => (None, format!("stale pidfile: pid {pid} is not running")),
                    Some(cmd) if !cmd.contains(SERVICE_BINARY) => (
                        None,
                        format!(
                            "stale pidfile: pid {pid} is now {:?}, not {SERVICE_BINARY}",
                            short(&cmd)
                        ),
                    ),
                    Some(_) => (Some(pid), format!("running as pid {pid}")),
                },
            };
            ServiceStatus {
                running: pid.is_some(),
                pid,
                release,
                health,
                detail,
            }
        }
        ServiceControl::Commands { .. } => {
            let running = !matches!(health, Health::Error { .. });
            let detail = format!("health: {}", health.label());
            ServiceStatus {
                running,
                pid: None,
                release,
                health,
                detail,
            }
        }
    }
}

/// The pid of this environment's running local service, if any.
pub fn running_pid(env: &EnvConfig) -> Option<u32> {
    let pid = read_pidfile(&env.pid_file()).ok()??;
    process_cmdline(pid)
        .filter(|c| c.contains(SERVICE_BINARY))
        .map(|_| pid)
}

/// The id of the release `current` points at (see [`crate::install`]).
pub fn current_release(env: &EnvConfig) -> Option<String> {
    crate::install::current_release_id(env)
}

/// The last `n` lines of a log file (empty when unreadable), redacted.
pub fn log_tail(path: &Path, n: usize) -> String {
    let Ok(bytes) = fs::read(path) else {
        return String::new();
    };
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(n)..].join("\n");
    crate::redact::global().redact(&tail)
}

// ---------------------------------------------------------------- local

/// Order matters: an already running service is judged first; orphans are
/// stopped before the port check (one may hold the port); the pidfile is
/// written right after the spawn, and the crash point between the two is
/// where a kill leaves an orphan.
fn start_local(env: &EnvConfig, bind: &str, em: &Emitter) -> anyhow::Result<()> {
    let (start_timeout, _) = env.service.timeouts();
    let t0 = Instant::now();
    let pid_file = env.pid_file();
    let log_path = env.service_log();

    if let Some(pid) = running_pid(env) {
        return accept_running(env, bind, pid, em);
    }
    // Whatever the pidfile says is stale now (dead or recycled pid).
    let _ = fs::remove_file(&pid_file);

    let (release_dir, bin) = current_service_binary(env)?;
    stop_orphans(env, None, em)?;
    check_port_free(bind, &pid_file)?;
    fs::create_dir_all(&env.data_dir)
        .with_context(|| format!("creating {}", env.data_dir.display()))?;
    fs::create_dir_all(&env.install_root)
        .with_context(|| format!("creating {}", env.install_root.display()))?;

    let release = current_release(env);
    let mut child = spawn_service(env, bind, &bin, &release_dir, release.as_deref())?;
    let pid = child.id();
    // A kill here leaves a service no pidfile names: `stop` and the next
    // `start` find it by its command line (see `service_processes`).
    crate::crash::crash_point("service-spawned");
    if let Err(e) = crate::fsutil::write_atomic(&pid_file, format!("{pid}\n").as_bytes()) {
        terminate(&mut child);
        return Err(e.context("writing the pidfile"));
    }
    wait_spawned_healthy(env, &mut child, t0 + start_timeout)?;
    // Reap the child when it exits, so a long-lived caller (the monitor, a
    // test) never keeps a zombie that still looks alive to `stop`.
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    em.emit(
        "service.started",
        Level::Info,
        format!("{} service started as pid {pid} on {bind}", env.name),
        json!({"pid": pid, "bind": bind, "release": release, "log": log_path,
               "seconds": secs(t0.elapsed())}),
    );
    Ok(())
}

/// A service already running as `pid` is fine when it is healthy and serves
/// the release `current` names; otherwise the caller must stop or restart it.
fn accept_running(env: &EnvConfig, bind: &str, pid: u32, em: &Emitter) -> anyhow::Result<()> {
    let answer = crate::probe::get(&env.health_url, env.monitor.probe_timeout);
    let serving = answer
        .as_ref()
        .ok()
        .and_then(|a| a.json().ok())
        .and_then(|v| {
            v.get("release")
                .and_then(|r| r.as_str())
                .map(str::to_string)
        });
    if let (Some(serving), Some(current)) = (serving, current_release(env)) {
        if serving != current {
            bail!(
                "{} service is already running as pid {pid} with release {serving}, but current is {current}; restart it",
                env.name
            );
        }
    }
    let health = match answer {
        Ok(a) => crate::probe::classify_health(&a),
        Err(detail) => Health::Error { detail },
    };
    match health {
        Health::Ok => {
            em.emit(
                "service.started",
                Level::Info,
                format!("{} service already running as pid {pid}", env.name),
                json!({"pid": pid, "bind": bind, "release": current_release(env),
                       "already_running": true, "seconds": 0.0}),
            );
            Ok(())
        }
        h => bail!(
            "{} service is already running as pid {pid} but is not healthy ({}); stop or restart it",
            env.name,
            health_text(&h)
        ),
    }
}

/// The release directory `current` resolves to and its service binary.
fn current_service_binary(env: &EnvConfig) -> anyhow::Result<(PathBuf, PathBuf)> {
    let current = env.current_link();
    let release_dir = fs::canonicalize(&current).with_context(|| {
        format!(
            "no release to start: {} does not exist (deploy a release first)",
            current.display()
        )
    })?;
    let bin = release_dir.join("bin").join(SERVICE_BINARY);
    if !bin.is_file() {
        bail!(
            "no service binary in the current release: {} does not exist",
            bin.display()
        );
    }
    Ok((release_dir, bin))
}

/// Spawns `bin serve` in its own process group, stdin closed, stdout and
/// stderr appended to `service.log` after a banner line.
fn spawn_service(
    env: &EnvConfig,
    bind: &str,
    bin: &Path,
    release_dir: &Path,
    release: Option<&str>,
) -> anyhow::Result<Child> {
    let log_path = env.service_log();
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let _ = writeln!(
        log,
        "--- {} starting {} on {bind} (release {}) ---",
        crate::event::now_rfc3339(),
        SERVICE_BINARY,
        release.unwrap_or("?")
    );
    let log_err = log
        .try_clone()
        .with_context(|| format!("opening {}", log_path.display()))?;

    let mut cmd = Command::new(bin);
    cmd.arg("serve")
        .arg("--bind")
        .arg(bind)
        .arg("--database")
        .arg(&env.database)
        .arg("--data-dir")
        .arg(&env.data_dir)
        .arg("--release-dir")
        .arg(release_dir)
        .current_dir(&env.install_root)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err))
        .process_group(0);
    strip_secrets(&mut cmd);
    cmd.spawn()
        .with_context(|| format!("starting {}", bin.display()))
}

/// Waits until `/health` answers OK. When the service exits first, or the
/// deadline passes (then it is stopped), removes the pidfile and fails with
/// the last lines of `service.log`.
fn wait_spawned_healthy(
    env: &EnvConfig,
    child: &mut Child,
    deadline: Instant,
) -> anyhow::Result<()> {
    let (start_timeout, _) = env.service.timeouts();
    let pid_file = env.pid_file();
    let log_path = env.service_log();
    loop {
        if let Some(status) = child.try_wait().context("watching the service process")? {
            let _ = fs::remove_file(&pid_file);
            bail!(
                "{SERVICE_BINARY} exited during start-up ({status}); last lines of {}:\n{}",
                log_path.display(),
                log_tail(&log_path, LOG_TAIL_LINES)
            );
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let last = probe_health(
            &env.health_url,
            left.clamp(Duration::from_millis(200), Duration::from_secs(2)),
        );
        if last.is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            terminate(child);
            let _ = fs::remove_file(&pid_file);
            bail!(
                "{SERVICE_BINARY} did not become healthy within {} (last check: {}); stopped it; last lines of {}:\n{}",
                crate::duration::human(start_timeout),
                health_text(&last),
                log_path.display(),
                log_tail(&log_path, LOG_TAIL_LINES)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stop_local(env: &EnvConfig, em: &Emitter) -> anyhow::Result<()> {
    let stopped = stop_pidfile_service(env, em)?;
    stop_orphans(env, stopped, em)
}

/// Stops the service `service.pid` names; returns its pid when it was running.
fn stop_pidfile_service(env: &EnvConfig, em: &Emitter) -> anyhow::Result<Option<u32>> {
    let (_, stop_timeout) = env.service.timeouts();
    let t0 = Instant::now();
    let pid_file = env.pid_file();
    let pid = match read_pidfile(&pid_file) {
        Ok(Some(pid)) => pid,
        Ok(None) => {
            em.emit(
                "service.stopped",
                Level::Info,
                format!("{} service was not running (no pidfile)", env.name),
                json!({"was_running": false}),
            );
            return Ok(None);
        }
        Err(e) => {
            let _ = fs::remove_file(&pid_file);
            em.emit(
                "service.stopped",
                Level::Warning,
                format!("{} service: unreadable pidfile removed ({e:#})", env.name),
                json!({"was_running": false, "stale_pidfile": true}),
            );
            return Ok(None);
        }
    };
    match process_cmdline(pid) {
        None => {
            let _ = fs::remove_file(&pid_file);
            em.emit(
                "service.stopped",
                Level::Info,
                format!(
                    "{} service was not running (stale pidfile: pid {pid} is gone)",
                    env.name
                ),
                json!({"pid": pid, "was_running": false, "stale_pidfile": true}),
            );
            return Ok(None);
        }
        Some(cmd) if !cmd.contains(SERVICE_BINARY) => {
            let _ = fs::remove_file(&pid_file);
            em.emit(
                "service.stopped",
                Level::Warning,
                format!(
                    "{} service was not running: pid {pid} from the pidfile is now {:?}, not {SERVICE_BINARY}; left it alone and removed the stale pidfile",
                    env.name,
                    short(&cmd)
                ),
                json!({"pid": pid, "was_running": false, "stale_pidfile": true, "recycled_pid": true}),
            );
            return Ok(None);
        }
        Some(_) => {}
    }

    let signal = terminate_pid(env, pid, stop_timeout, em)?;
    let _ = fs::remove_file(&pid_file);
    em.emit(
        "service.stopped",
        Level::Info,
        format!("{} service pid {pid} stopped ({signal})", env.name),
        json!({"pid": pid, "was_running": true, "signal": signal, "seconds": secs(t0.elapsed())}),
    );
    Ok(Some(pid))
}

/// SIGTERM, then after `stop_timeout` SIGKILL; returns the signal that ended it.
fn terminate_pid(
    env: &EnvConfig,
    pid: u32,
    stop_timeout: Duration,
    em: &Emitter,
) -> anyhow::Result<&'static str> {
    let npid = pid_of(pid)?;
    if let Err(e) = kill(npid, Signal::SIGTERM) {
        if e != nix::errno::Errno::ESRCH {
            bail!("cannot signal pid {pid}: {e}");
        }
    }
    if wait_gone(pid, stop_timeout) {
        return Ok("SIGTERM");
    }
    em.emit(
        "service.stop-escalated",
        Level::Warning,
        format!(
            "{} service pid {pid} ignored SIGTERM for {}; sending SIGKILL",
            env.name,
            crate::duration::human(stop_timeout)
        ),
        json!({"pid": pid}),
    );
    let _ = killpg(npid, Signal::SIGKILL);
    let _ = kill(npid, Signal::SIGKILL);
    if !wait_gone(pid, Duration::from_secs(5)) {
        bail!("pid {pid} is still running after SIGKILL");
    }
    Ok("SIGKILL")
}

/// Stops this environment's services that no pidfile names (`except`: the
/// one the pidfile named). A tool killed between spawning the service and
/// writing `service.pid` leaves one behind, holding the port; nothing else
/// would ever stop it.
fn stop_orphans(env: &EnvConfig, except: Option<u32>, em: &Emitter) -> anyhow::Result<()> {
    let (_, stop_timeout) = env.service.timeouts();
    for pid in service_processes(env)
        .into_iter()
        .filter(|p| Some(*p) != except)
    {
        let t0 = Instant::now();
        let signal = terminate_pid(env, pid, stop_timeout, em)?;
        em.emit(
            "service.stopped",
            Level::Warning,
            format!(
                "{} service pid {pid} was running without a pidfile (left by an interrupted run); stopped it ({signal})",
                env.name
            ),
            json!({"pid": pid, "was_running": true, "orphan": true, "signal": signal,
                   "seconds": secs(t0.elapsed())}),
        );
    }
    Ok(())
}

/// Live `dhash-service serve` processes started for this environment: their
/// `--data-dir` argument is the environment's data dir. Read from `/proc`;
/// empty where there is none (the pidfile is then the only record).
pub fn service_processes(env: &EnvConfig) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let want = env.data_dir.as_os_str().as_encoded_bytes();
    let mut found = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(raw) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
        let is_service = args.first().is_some_and(|a0| {
            Path::new(std::ffi::OsStr::from_bytes(a0))
                .file_name()
                .is_some_and(|n| n == SERVICE_BINARY)
        }) && args.get(1) == Some(&&b"serve"[..]);
        let ours = args
            .windows(2)
            .any(|w| w[0] == b"--data-dir" && w[1] == want);
        // A zombie keeps no cmdline, so it never matches; check liveness anyway.
        if is_service && ours && pid > 1 && process_cmdline(pid).is_some() {
            found.push(pid);
        }
    }
    found.sort_unstable();
    found
}

fn check_port_free(bind: &str, pid_file: &Path) -> anyhow::Result<()> {
    match std::net::TcpListener::bind(bind) {
        Ok(l) => {
            drop(l);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => bail!(
            "cannot start: {bind} is already in use by another process (not this environment's service: {} names no running {SERVICE_BINARY}); stop that process or change service.bind in environments.json",
            pid_file.display()
        ),
        Err(e) => bail!("cannot start: cannot bind {bind}: {e}"),
    }
}

/// SIGTERM the child's group, then SIGKILL, and reap it.
fn terminate(child: &mut Child) {
    let Ok(pid) = pid_of(child.id()) else { return };
    let _ = killpg(pid, Signal::SIGTERM);
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = killpg(pid, Signal::SIGKILL);
    let _ = child.kill();
    let _ = child.wait();
}

fn pid_of(pid: u32) -> anyhow::Result<Pid> {
    let raw = i32::try_from(pid).ok().filter(|p| *p > 1);
    match raw {
        Some(p) => Ok(Pid::from_raw(p)),
        None => bail!("refusing to signal pid {pid}"),
    }
}

fn read_pidfile(path: &Path) -> anyhow::Result<Option<u32>> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(anyhow::anyhow!("reading {}: {e}", path.display())),
    };
    match text.trim().parse::<u32>() {
        Ok(pid) if pid > 1 => Ok(Some(pid)),
        _ => bail!(
            "{} does not hold a pid: {:?}",
            path.display(),
            short(text.trim())
        ),
    }
}

/// The command line of a live process (`None` when it is gone or a zombie).
pub fn process_cmdline(pid: u32) -> Option<String> {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    if Path::new("/proc/self").exists() {
        let stat = fs::read_to_string(proc_dir.join("stat")).ok()?;
        // State is the first field after the parenthesised command name.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next());
        if matches!(state, Some("Z") | Some("X") | None) {
            return None;
        }
        let raw = fs::read(proc_dir.join("cmdline")).ok()?;
        let parts: Vec<String> = raw
            .split(|b| *b == 0)
            .filter(|p| !p.is_empty())
            .map(|p| String::from_utf8_lossy(p).to_string())
            .collect();
        return Some(parts.join(" "));
    }
    // No /proc (macOS, BSD): ask ps.
    let out = Command::new("ps")
        .args(["-o", "stat=,command=", "-p", &pid.to_string()])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let (stat, cmd) = text.split_once(char::is_whitespace)?;
    if !out.status.success() || stat.starts_with('Z') {
        return None;
    }
    Some(cmd.trim().to_string())
}

fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let until = Instant::now() + timeout;
    loop {
        if process_cmdline(pid).is_none() {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The service needs no webhook or password: keep them out of its environment
/// (and so out of anything it might log).
fn strip_secrets(cmd: &mut Command) {
    for (name, value) in std::env::vars() {
        if !crate::redact::Redactor::from_vars([(name.clone(), value)]).is_empty() {
            cmd.env_remove(name);
        }
    }
}

// ---------------------------------------------------------------- commands

/// Which configured command of a `commands` service runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceAction {
    Start,
    Stop,
    Restart,
    /// A fleet instance leaves the balancer before it is changed.
    Drain,
    /// And comes back once it is healthy.
    Undrain,
}

impl ServiceAction {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceAction::Start => "start",
            ServiceAction::Stop => "stop",
            ServiceAction::Restart => "restart",
            ServiceAction::Drain => "drain",
            ServiceAction::Undrain => "undrain",
        }
    }

    /// How long its command may run: a restart starts the service, so it
    /// gets the start timeout.
    pub fn timeout(self, start_timeout: Duration, stop_timeout: Duration) -> Duration {
        match self {
            ServiceAction::Start | ServiceAction::Restart => start_timeout,
            ServiceAction::Stop | ServiceAction::Drain | ServiceAction::Undrain => stop_timeout,
        }
    }
}

impl std::fmt::Display for ServiceAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn run_command(env: &EnvConfig, what: ServiceAction, command: &str) -> anyhow::Result<()> {
    let (start_timeout, stop_timeout) = env.service.timeouts();
    let timeout = what.timeout(start_timeout, stop_timeout);
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("DHASH_ENV", &env.name)
        .env("DHASH_INSTALL_ROOT", &env.install_root)
        .env("DHASH_RELEASE_DIR", env.current_link())
        .env("DHASH_DATA_DIR", &env.data_dir)
        .env("DHASH_DATABASE", &env.database)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .with_context(|| format!("running the {what} command `{command}`"))?;
    // Read the pipes in threads: a command that leaves a background process
    // holding them must not block us past its own exit.
    let out = collect(child.stdout.take());
    let err = collect(child.stderr.take());
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().context("waiting for the command")? {
            break s;
        }
        if t0.elapsed() >= timeout {
            terminate(&mut child);
            bail!(
                "the {what} command `{command}` did not finish within {}; stopped it; stderr: {}",
                crate::duration::human(timeout),
                captured(&err)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Give the readers a moment to drain what the command wrote.
    std::thread::sleep(Duration::from_millis(50));
    if !status.success() {
        let stderr = captured(&err);
        let stdout = captured(&out);
        bail!(
            "the {what} command `{command}` failed ({status}): {}",
            if stderr.is_empty() { stdout } else { stderr }
        );
    }
    Ok(())
}

fn collect<R: Read + Send + 'static>(pipe: Option<R>) -> Arc<Mutex<Vec<u8>>> {
    let buf = Arc::new(Mutex::new(Vec::new()));
    if let Some(mut pipe) = pipe {
        let sink = Arc::clone(&buf);
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                if let Ok(mut b) = sink.lock() {
                    b.extend_from_slice(&chunk[..n]);
                }
            }
        });
    }
    buf
}

fn captured(buf: &Arc<Mutex<Vec<u8>>>) -> String {
    let text = buf
        .lock()
        .map(|b| String::from_utf8_lossy(&b).to_string())
        .unwrap_or_default();
    let lines: Vec<&str> = text.trim().lines().collect();
    let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
    crate::redact::global().redact(&tail)
}

fn wait_ready_commands(env: &EnvConfig, t0: Instant) -> anyhow::Result<()> {
    let (start_timeout, _) = env.service.timeouts();
    let deadline = t0 + start_timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let h = probe_health(
            &env.health_url,
            left.clamp(Duration::from_millis(200), Duration::from_secs(2)),
        );
        if h.is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{} service did not become healthy within {} (last check: {})",
                env.name,
                crate::duration::human(start_timeout),
                health_text(&h)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

// ---------------------------------------------------------------- helpers

fn health_text(h: &Health) -> String {
    match h {
        Health::Ok => "ok".into(),
        Health::NotOk { detail } => format!("not ok: {detail}"),
        Health::Error { detail } => format!("no answer: {detail}"),
    }
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

fn short(s: &str) -> String {
    if s.chars().count() > 120 {
        format!("{}…", s.chars().take(120).collect::<String>())
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_action_runs_within_its_own_timeout() {
        let (start, stop) = (Duration::from_secs(30), Duration::from_secs(10));
        assert_eq!(ServiceAction::Start.timeout(start, stop), start);
        assert_eq!(ServiceAction::Restart.timeout(start, stop), start);
        assert_eq!(ServiceAction::Stop.timeout(start, stop), stop);
        assert_eq!(
            format!("the {} command", ServiceAction::Restart),
            "the restart command"
        );
    }
}
