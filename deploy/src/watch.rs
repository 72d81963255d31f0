//! The T+60 watch a deploy starts once its release is live: `monitor_dhash
//! --detach` in the background, registered in `<install_root>/watch.json`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use gates_core::config::EnvConfig;
use gates_core::project::Project;
use gates_core::{Emitter, Exit, Level, ToolError};
use serde_json::{json, Value};

use crate::DeployReport;

/// `DHASH_MONITOR_BIN`: the monitor to start after a deploy (default:
/// `monitor_dhash` beside this executable).
pub const MONITOR_BIN_VAR: &str = "DHASH_MONITOR_BIN";
/// How long a started watch has to register in `<install_root>/watch.json`.
pub const WATCH_REGISTER_TIMEOUT: Duration = Duration::from_secs(10);

/// The monitor binary a deploy starts.
fn monitor_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os(MONITOR_BIN_VAR).filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("cannot find this executable")?;
    Ok(exe
        .parent()
        .map(|d| d.join("monitor_dhash"))
        .unwrap_or_else(|| PathBuf::from("monitor_dhash")))
}

/// Starts the T+60 watch of the release just deployed, in the background
/// (`monitor_dhash --env E --release ID [--backup B] --detach`, its own
/// process group, no terminal), and waits up to 10 s for it to register in
/// `<install_root>/watch.json`. Emits `monitor.detached`. When it does not
/// register, says so at level critical and returns exit 5: the release is
/// live but nobody watches it.
pub fn start_watch(
    project: &Project,
    env: &EnvConfig,
    report: &DeployReport,
    em: &Emitter,
) -> anyhow::Result<Exit> {
    if already_watched(env, report, em) {
        return Ok(Exit::Ok);
    }
    let bin = monitor_bin()?;
    let child = match monitor_command(project, env, report, &bin).spawn() {
        Ok(c) => c,
        Err(e) => {
            return unwatched(
                env,
                report,
                format!("{} could not be started: {e}", bin.display()),
                em,
            )
        }
    };
    match wait_registered(env, child, &bin) {
        Ok((pid, w)) => {
            announce(env, report, pid, &w, em);
            Ok(Exit::Ok)
        }
        Err(why) => unwatched(env, report, why, em),
    }
}

/// A watch of this very release already runs (a redeploy of it): it keeps
/// its window; a second watcher would only attach to it.
fn already_watched(env: &EnvConfig, report: &DeployReport, em: &Emitter) -> bool {
    let Ok(Some(w)) = gates_core::watch::active(env) else {
        return false;
    };
    if w.release.as_deref() != Some(report.release.as_str()) {
        return false;
    }
    em.emit(
        "monitor.detached",
        Level::Info,
        format!(
            "the T+60 watch of {} already runs (pid {}, until {}): it keeps its window",
            report.release, w.pid, w.window_end
        ),
        json!({"pid": w.pid, "release": report.release, "log": w.log, "events": w.events,
               "started_at": w.started_at, "window_end": w.window_end, "existing": true}),
    );
    em.human(&format!(
        "follow it with `monitor_dhash --env {}` (attaches) or `tail -f {}`; stop it with `kill {}`",
        env.name,
        w.log.display(),
        w.pid
    ));
    true
}

fn monitor_command(
    project: &Project,
    env: &EnvConfig,
    report: &DeployReport,
    bin: &Path,
) -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(bin);
    cmd.args(["--env", &env.name, "--release", &report.release]);
    if let Some(b) = &report.backup {
        cmd.arg("--backup").arg(b);
    }
    cmd.arg("--detach")
        .env(gates_core::project::ROOT_VAR, &project.root)
        .current_dir(&project.root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    cmd
}

/// Waits for the started watch to register: its pid and watch.json, or why not.
fn wait_registered(env: &EnvConfig, mut child: Child, bin: &Path) -> Result<(u32, Value), String> {
    let watch_file = watch_file(env);
    let pid = child.id();
    let deadline = Instant::now() + WATCH_REGISTER_TIMEOUT;
    loop {
        if let Some(w) =
            read_watch(&watch_file).filter(|w| w["pid"].as_u64() == Some(u64::from(pid)))
        {
            return Ok((pid, w));
        }
        match child.try_wait() {
            Ok(Some(status)) => {
                return Err(format!(
                    "{} --detach exited ({status}) before registering in {}",
                    bin.display(),
                    watch_file.display()
                ))
            }
            Ok(None) => {}
            Err(e) => return Err(format!("waiting for the watch: {e}")),
        }
        if Instant::now() >= deadline {
            // Not registered: stop it, so that "unwatched" is the truth and a
            // monitor started by hand is the only actor.
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
            return Err(format!(
                "pid {pid} did not register in {} within {} (it was stopped)",
                watch_file.display(),
                gates_core::duration::human(WATCH_REGISTER_TIMEOUT)
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn announce(env: &EnvConfig, report: &DeployReport, pid: u32, w: &Value, em: &Emitter) {
    let log = w["log"].as_str().unwrap_or("").to_string();
    let events = w["events"].as_str().unwrap_or("").to_string();
    em.emit(
        "monitor.detached",
        Level::Info,
        format!(
            "T+60 watch of {} started in the background (pid {pid}, until {})",
            report.release,
            w["window_end"].as_str().unwrap_or("the window ends")
        ),
        json!({"pid": pid, "release": report.release, "log": log, "events": events,
               "started_at": w["started_at"], "window_end": w["window_end"],
               "watch_file": watch_file(env)}),
    );
    em.human(&format!(
        "the watch runs on its own: follow it with `monitor_dhash --env {}` (attaches) or `tail -f {log}`; stop it with `kill {pid}`",
        env.name
    ));
}

fn watch_file(env: &EnvConfig) -> PathBuf {
    env.install_root.join("watch.json")
}

/// Ends a running watch of another release than the one just made current
/// (its result is `superseded`), so no watcher acts on a replaced release.
pub fn supersede_watch(env: &EnvConfig, release: &str, em: &Emitter) {
    let reason = format!("deploy_dhash made {release} current on {}", env.name);
    match gates_core::watch::supersede(env, Some(release), &reason) {
        Ok(Some(w)) => em.human(&format!(
            "ended the watch of {} (pid {}): superseded by {release}",
            w.release.as_deref().unwrap_or("nothing"),
            w.pid
        )),
        Ok(None) => {}
        Err(e) => em.human(&format!(
            "warning: could not end the running watch of {}: {e:#}",
            env.name
        )),
    }
}

fn read_watch(path: &Path) -> Option<Value> {
    let text = fs::read_to_string(path).ok()?;
    serde_json::from_str::<Value>(&text)
        .ok()
        .filter(Value::is_object)
}

/// The release is live but its watch did not start: loud, recorded, exit 5.
fn unwatched(
    env: &EnvConfig,
    report: &DeployReport,
    why: String,
    em: &Emitter,
) -> anyhow::Result<Exit> {
    let msg = format!(
        "{} IS LIVE BUT UNWATCHED on {}: the T+60 watch did not start ({why}); no gate will roll it back. Start it now: monitor_dhash --env {}",
        report.release, env.name, env.name
    );
    em.emit(
        "monitor.failed",
        Level::Critical,
        msg.clone(),
        json!({"release": report.release, "reason": why, "unwatched": true}),
    );
    let _ = env.ledger().append(
        "deploy",
        json!({"release": report.release, "tag": report.tag, "result": "unwatched", "reason": why,
               "started_at": report.started_at}),
    );
    Err(ToolError::new(Exit::Inconclusive, anyhow!(msg)).into())
}
