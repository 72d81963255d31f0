//! deploy_dhash: install a release bundle, migrate, switch `current`
//! atomically, restart the service and wait for health; switch back when the
//! new release does not become healthy.
//!
//! Steps (each recorded in `deploy.journal.json` before it runs):
//! verify the bundle against its release.json → take the environment lock →
//! (backup) → install into `releases/<id>/` via `releases/.<id>.partial` and a
//! rename → apply pending migrations (the new release's) → switch `current` →
//! restart the service → wait for health. On failure after the switch: mark
//! the release failed, switch back to the previous release, bring the schema
//! back (the new release's down migrations, else the pre-deploy backup),
//! restart and verify health, exit 1 (`deploy.failed`); exit 4 when that
//! recovery fails.
//!
//! Events: `deploy.started`, `deploy.installed`, `deploy.switched`,
//! `deploy.healthy` | `deploy.failed`; also `deploy.interrupted` (a previous
//! run was killed mid-way), `deploy.planned` (`--dry-run`), `deploy.pruned`,
//! and the `migrate.*`, `backup.*`, `service.*` events of the steps.

pub mod bundle;
pub mod state;
pub mod tee;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, Context};
use dhash_migrate::release::{self, ReleaseManifest};
use dhash_migrate::source;
use dhash_migrate::MigrationStore;
use gates_core::config::EnvConfig;
use gates_core::lock::{EnvLock, LockBusy};
use gates_core::project::Project;
use gates_core::runlog::{RunKind, RunLog};
use gates_core::sample::Health;
use gates_core::{Emitter, Exit, Level, ToolError};
use serde_json::{json, Value};

use state::{Journal, ReleasesState};

pub const TOOL: &str = "deploy_dhash";

/// Room kept free on the install root's file system beyond the bundle's size.
const DISK_MARGIN: u64 = 16 * 1024 * 1024;

/// What the `deploy_dhash` binary was asked.
#[derive(Debug, Clone, Default)]
pub struct DeployOptions {
    pub env: String,
    /// `dist/dhash-<tag>/`; `None`: the newest bundle by created_at.
    pub tag: Option<String>,
    pub dry_run: bool,
    /// Accepted as before; a backup is taken by default now.
    pub backup_first: bool,
    /// Take no pre-deploy backup (a backup.verified event on stdin is still used).
    pub no_backup: bool,
    /// Start no background T+60 watch once the release is live.
    pub no_monitor: bool,
    /// Deploy a release recorded failed/rolled-back/quarantined, knowingly.
    pub retry_failed: bool,
    pub skip_health_check: bool,
    /// Refuse (before switching) when the release has pending migrations.
    pub no_migrate: bool,
    pub verbose: bool,
}

/// A successful deploy.
#[derive(Debug, Clone, PartialEq)]
pub struct DeployReport {
    pub release: String,
    pub tag: String,
    pub from: Option<String>,
    pub backup: Option<PathBuf>,
    pub migrations: Vec<i64>,
    pub health_checked: bool,
    /// The release was already serving, recorded healthy and answering:
    /// nothing was switched, restarted or backed up.
    pub unchanged: bool,
}

/// `DHASH_TEST_CRASH_AT=<point>` kills the process with SIGKILL at that
/// point (tests of crash safety). Points: `deploy-started`,
/// `deploy-installing` (copy done, not yet renamed), `deploy-installed`,
/// `deploy-migrated`, `deploy-switched`, `deploy-stopped`, `deploy-restarted`,
/// `deploy-healthy` (verified, not yet recorded), `deploy-unhealthy`
/// (recorded failed, switch-back journaled, nothing switched back yet),
/// `deploy-switched-back` (current back, schema not yet).
pub fn crash_point(em: &Emitter, point: &str) {
    if std::env::var("DHASH_TEST_CRASH_AT").is_ok_and(|v| v == point) {
        em.human(&format!(
            "DHASH_TEST_CRASH_AT={point}: killing this process (SIGKILL)"
        ));
        gates_core::crash::crash_point(point);
    }
}

/// The whole tool: reads stdin (forwarding it; a `backup.verified` event
/// becomes the rollback point), then deploys or dry-runs.
pub fn run_tool(opts: &DeployOptions) -> anyhow::Result<Exit> {
    let em = Emitter::stdout(TOOL, &opts.env, opts.verbose);
    let mut upstream: Option<String> = None;
    gates_core::event::pump_stdin(&em, |ev| {
        if ev.event == "backup.verified" {
            if !ev.env.is_empty() && ev.env != opts.env {
                em.human(&format!(
                    "ignoring backup.verified of environment {:?} (deploying {:?})",
                    ev.env, opts.env
                ));
            } else if let Some(p) = ev.str_field("path") {
                upstream = Some(p.to_string());
            }
        }
    });
    let project = Project::discover()?;
    let env = project.env(&opts.env)?;
    let upstream = upstream.map(|p| {
        let p = PathBuf::from(p);
        if p.is_absolute() {
            p
        } else {
            project.root.join(p)
        }
    });
    if opts.dry_run {
        return dry_run(&project, env, opts, upstream, &em);
    }
    // Preflight, before anything changes (the dry run checks the same).
    check_config(&project, env, &em)?;
    let resolved = resolve_bundle(&project, opts.tag.as_deref(), false, &em)?;

    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    let log = match RunLog::create(&project.root, env, RunKind::Deploy, &stamp) {
        Ok(l) => Some(l),
        Err(e) => {
            em.human(&format!("warning: no run log: {e:#}"));
            None
        }
    };
    let tee = log
        .as_ref()
        .and_then(|l| match tee::StderrTee::start(l.clone()) {
            Ok(t) => Some(t),
            Err(e) => {
                em.human(&format!("warning: stderr is not copied to the log: {e:#}"));
                None
            }
        });
    if let Some(l) = &log {
        em.human(&format!("log: {}", l.path().display()));
    }
    let result = deploy(&project, env, opts, upstream, &resolved.bundle, &em).and_then(|report| {
        if report.unchanged {
            // Nothing changed, so no new window: a watch of this release
            // that is still running keeps its own.
            em.human(&format!(
                "nothing was deployed, so no new T+60 watch; `monitor_dhash --env {}` attaches to one still running",
                env.name
            ));
            Ok(Exit::Ok)
        } else if opts.no_monitor {
            em.human(&format!(
                "--no-monitor: no T+60 watch was started; start one with `monitor_dhash --env {}`",
                env.name
            ));
            Ok(Exit::Ok)
        } else {
            start_watch(&project, env, &report, &em)
        }
    });
    if let (Err(e), Some(l)) = (&result, &log) {
        l.line(&format!("{TOOL}: error: {e:#}"));
    }
    if let Some(l) = &log {
        em.human(&format!("log: {}", l.path().display()));
    }
    drop(tee);
    result
}

/// `DHASH_MONITOR_BIN`: the monitor to start after a deploy (default:
/// `monitor_dhash` beside this executable).
pub const MONITOR_BIN_VAR: &str = "DHASH_MONITOR_BIN";
/// How long a started watch has to register in `<install_root>/watch.json`.
const WATCH_REGISTER_TIMEOUT: Duration = Duration::from_secs(10);

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
    use std::os::unix::process::CommandExt;
    // A watch of this very release already runs (a redeploy of it): it keeps
    // its window; a second watcher would only attach to it.
    if let Ok(Some(w)) = gates_core::watch::active(env) {
        if w.release.as_deref() == Some(report.release.as_str()) {
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
            return Ok(Exit::Ok);
        }
    }
    let bin = monitor_bin()?;
    let mut cmd = std::process::Command::new(&bin);
    cmd.args(["--env", &env.name, "--release", &report.release]);
    if let Some(b) = &report.backup {
        cmd.arg("--backup").arg(b);
    }
    cmd.arg("--detach")
        .env(gates_core::project::ROOT_VAR, &project.root)
        .current_dir(&project.root)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0);
    let watch_file = env.install_root.join("watch.json");
    let mut child = match cmd.spawn() {
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
    let pid = child.id();
    let deadline = Instant::now() + WATCH_REGISTER_TIMEOUT;
    loop {
        if let Some(w) =
            read_watch(&watch_file).filter(|w| w["pid"].as_u64() == Some(u64::from(pid)))
        {
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
                       "watch_file": watch_file}),
            );
            em.human(&format!(
                "the watch runs on its own: follow it with `monitor_dhash --env {}` (attaches) or `tail -f {log}`; stop it with `kill {pid}`",
                env.name
            ));
            return Ok(Exit::Ok);
        }
        match child.try_wait() {
            Ok(Some(status)) => {
                return unwatched(
                    env,
                    report,
                    format!(
                        "{} --detach exited ({status}) before registering in {}",
                        bin.display(),
                        watch_file.display()
                    ),
                    em,
                )
            }
            Ok(None) => {}
            Err(e) => return unwatched(env, report, format!("waiting for the watch: {e}"), em),
        }
        if Instant::now() >= deadline {
            // Not registered: stop it, so that "unwatched" is the truth and a
            // monitor started by hand is the only actor.
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
            return unwatched(
                env,
                report,
                format!(
                    "pid {pid} did not register in {} within {} (it was stopped)",
                    watch_file.display(),
                    gates_core::duration::human(WATCH_REGISTER_TIMEOUT)
                ),
                em,
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Ends a running watch of another release than the one just made current
/// (its result is `superseded`), so no watcher acts on a replaced release.
fn supersede_watch(env: &EnvConfig, release: &str, em: &Emitter) {
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
        json!({"release": report.release, "tag": report.tag, "result": "unwatched", "reason": why}),
    );
    Err(ToolError::new(Exit::Inconclusive, anyhow!(msg)).into())
}

/// Preflight of the configuration, shared by the dry run and the real run:
/// the gates file must load and have a section (with gates) for the
/// environment, or the T+60 watch could not start after the switch; the
/// refusal (exit 2) names the file and `environments.<env>`. Placeholders
/// are refused in production and returned as warnings elsewhere.
fn check_config(project: &Project, env: &EnvConfig, em: &Emitter) -> anyhow::Result<Vec<String>> {
    let mut warnings = Vec::new();
    let mut found = project.topology.check_placeholders(&env.name)?.to_vec();
    let refuse = |e: gates_core::config::ConfigError| {
        anyhow::Error::from(e).context(format!(
            "refusing to deploy to {}: its T+60 watch could not start (nothing was changed)",
            env.name
        ))
    };
    let gates = project.gates(None).map_err(refuse)?;
    gates.require_env(&env.name).map_err(refuse)?;
    found.extend(gates.check_placeholders(&env.name)?.iter().cloned());
    for p in found {
        let w = format!(
            "unresolved placeholder at {} in {}: {:?}",
            p.path,
            p.file.display(),
            p.value
        );
        em.human(&format!("warning: {w}"));
        warnings.push(w);
    }
    Ok(warnings)
}

/// The bundle to deploy: `--tag T` (`dist/dhash-T/`, else built from the git
/// tag T), else the checkout's own (reused when built for this commit, else
/// built); see [`dhash_migrate::source`]. `plan`: a dry run, which builds a
/// missing bundle into a temporary folder and leaves dist/ as it is.
pub fn resolve_bundle(
    project: &Project,
    tag: Option<&str>,
    plan: bool,
    em: &Emitter,
) -> anyhow::Result<source::Resolved> {
    let r = source::resolve(project, tag, plan, em)?;
    let b = &r.bundle;
    let want = b
        .dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .and_then(|n| n.strip_prefix(release::BUNDLE_PREFIX).map(str::to_string));
    if want.as_deref() != Some(b.manifest.tag.as_str()) {
        return Err(ToolError::new(
            Exit::Failed,
            anyhow!(
                "{} says tag {:?}, not {:?}: the bundle folder was renamed or edited; nothing was changed",
                b.dir.join(release::MANIFEST).display(),
                b.manifest.tag,
                want.unwrap_or_default()
            ),
        )
        .into());
    }
    em.human(&format!("release {} ({})", b.manifest.id, r.how));
    Ok(r)
}

/// Total bytes of the files under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

/// Free bytes on the file system holding `path` (or its nearest existing parent).
fn free_bytes(path: &Path) -> anyhow::Result<u64> {
    let mut p = path;
    while !p.exists() {
        p = p
            .parent()
            .ok_or_else(|| anyhow!("no existing parent of {}", path.display()))?;
    }
    let st = nix::sys::statvfs::statvfs(p).with_context(|| format!("statvfs {}", p.display()))?;
    Ok((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64))
}

fn human_bytes(n: u64) -> String {
    const MB: f64 = 1024.0 * 1024.0;
    if n as f64 >= MB {
        format!("{:.1} MiB", n as f64 / MB)
    } else {
        format!("{:.1} KiB", n as f64 / 1024.0)
    }
}

/// The release to switch back to: `candidate` unless it is failed or gone,
/// else the last known-good one.
fn switch_back_target(
    env: &EnvConfig,
    st: &ReleasesState,
    candidate: Option<String>,
    new_id: &str,
) -> Option<String> {
    let usable =
        |id: &String| id != new_id && !st.is_failed(id) && env.releases_dir().join(id).is_dir();
    if let Some(c) = candidate.filter(usable) {
        return Some(c);
    }
    if let Some(l) = st.last_known_good.clone().filter(usable) {
        return Some(l);
    }
    // The most recently verified other release (e.g. redeploying the current one).
    st.releases
        .iter()
        .filter(|(id, r)| r.state == "healthy" && usable(id))
        .max_by(|a, b| a.1.updated_at.cmp(&b.1.updated_at))
        .map(|(id, _)| id.clone())
}

fn lock_check(env: &EnvConfig) -> (bool, String, Option<anyhow::Error>) {
    let path = env.lock_path();
    if !path.exists() {
        return (
            true,
            format!("free ({} does not exist yet)", path.display()),
            None,
        );
    }
    match EnvLock::acquire(&path, &env.name, TOOL) {
        Ok(l) => {
            drop(l);
            (true, format!("free ({})", path.display()), None)
        }
        Err(e) => {
            let busy = e.downcast_ref::<LockBusy>().is_some();
            let msg = format!("{e:#}");
            (
                false,
                msg,
                Some(if busy {
                    e
                } else {
                    e.context("checking the lock")
                }),
            )
        }
    }
}

#[derive(serde::Serialize)]
struct Check {
    name: &'static str,
    ok: bool,
    detail: String,
}

/// `--dry-run`: validates and lists the steps; changes nothing (no file or
/// folder is created, the lock is only tried when its file exists).
pub fn dry_run(
    project: &Project,
    env: &EnvConfig,
    opts: &DeployOptions,
    upstream_backup: Option<PathBuf>,
    em: &Emitter,
) -> anyhow::Result<Exit> {
    let resolved = resolve_bundle(project, opts.tag.as_deref(), true, em)?;
    let b = &resolved.bundle;
    let id = b.manifest.id.clone();
    em.human(&format!(
        "dry run: deploy {} (tag {}) to {}; nothing will be changed",
        id, b.manifest.tag, env.name
    ));
    let mut checks: Vec<Check> = Vec::new();
    // The first blocking problem decides the exit code (what the real run would hit).
    let mut fatal: Option<anyhow::Error> = None;
    fn block(fatal: &mut Option<anyhow::Error>, e: anyhow::Error) {
        if fatal.is_none() {
            *fatal = Some(e);
        }
    }

    let bundle_bytes = match bundle::verify_release(&b.dir) {
        Ok(v) => {
            checks.push(Check {
                name: "bundle",
                ok: true,
                detail: format!(
                    "{} files ({}) match release.json",
                    v.files,
                    human_bytes(v.bytes)
                ),
            });
            v.bytes
        }
        Err(e) => {
            checks.push(Check {
                name: "bundle",
                ok: false,
                detail: format!("{e:#}"),
            });
            block(&mut fatal, ToolError::new(Exit::Failed, e).into());
            0
        }
    };
    match check_config(project, env, em) {
        Ok(w) if w.is_empty() => checks.push(Check {
            name: "config",
            ok: true,
            detail: "no unresolved placeholders".into(),
        }),
        Ok(w) => checks.push(Check {
            name: "config",
            ok: true,
            detail: format!(
                "{} placeholder(s) unresolved (refused in production)",
                w.len()
            ),
        }),
        Err(e) => {
            checks.push(Check {
                name: "config",
                ok: false,
                detail: format!("{e:#}"),
            });
            block(&mut fatal, e);
        }
    }
    match bundle::active_faults(&b.dir) {
        Ok(f) if f.is_empty() => checks.push(Check {
            name: "service-config",
            ok: true,
            detail: "config.json valid, no faults enabled".into(),
        }),
        Ok(f) => checks.push(Check {
            name: "service-config",
            ok: true,
            detail: format!(
                "config.json valid; WARNING faults enabled: {}",
                f.join(", ")
            ),
        }),
        Err(e) => {
            checks.push(Check {
                name: "service-config",
                ok: false,
                detail: format!("{e:#}"),
            });
            block(&mut fatal, ToolError::new(Exit::Failed, e).into());
        }
    }
    match dhash_rollback::pending(env) {
        Ok(None) => {}
        Ok(Some(j)) => {
            let msg = format!(
                "a rollback to {} was interrupted at step {:?}; the deploy would refuse until `rollback_dhash --env {}` finishes it",
                j.backup.display(),
                j.step,
                env.name
            );
            checks.push(Check {
                name: "rollback",
                ok: false,
                detail: msg.clone(),
            });
            block(
                &mut fatal,
                ToolError::new(Exit::Failed, anyhow!(msg)).into(),
            );
        }
        Err(e) => {
            checks.push(Check {
                name: "rollback",
                ok: false,
                detail: format!("{e:#}"),
            });
            block(&mut fatal, e);
        }
    }
    let (lock_ok, lock_detail, lock_err) = lock_check(env);
    checks.push(Check {
        name: "lock",
        ok: lock_ok,
        detail: lock_detail,
    });
    if let Some(e) = lock_err {
        block(&mut fatal, e);
    }

    let dest = env.releases_dir().join(&id);
    let installed = dest.is_dir();
    let install_step = if installed {
        match bundle::verify_release(&dest) {
            Ok(_) => format!(
                "{} is already installed and verified: skip the copy",
                dest.display()
            ),
            Err(e) => format!(
                "{} is installed but differs ({e:#}): move it to {} and install a fresh copy",
                dest.display(),
                env.quarantine_dir().display()
            ),
        }
    } else {
        format!(
            "copy {} into {} (via releases/.{id}.partial, verified, then renamed)",
            b.dir.display(),
            dest.display()
        )
    };
    let needed = if installed { 0 } else { bundle_bytes };
    match free_bytes(&env.install_root) {
        Ok(free) if free >= needed + DISK_MARGIN => checks.push(Check {
            name: "disk",
            ok: true,
            detail: format!(
                "{} free, the release needs {}",
                human_bytes(free),
                human_bytes(needed)
            ),
        }),
        Ok(free) => {
            let msg = format!(
                "only {} free, the release needs {} (+{} margin)",
                human_bytes(free),
                human_bytes(needed),
                human_bytes(DISK_MARGIN)
            );
            checks.push(Check {
                name: "disk",
                ok: false,
                detail: msg.clone(),
            });
            block(
                &mut fatal,
                ToolError::new(Exit::Failed, anyhow!(msg)).into(),
            );
        }
        Err(e) => checks.push(Check {
            name: "disk",
            ok: false,
            detail: format!("cannot tell: {e:#}"),
        }),
    }
    let health = gates_core::probe::probe_health(&env.health_url, env.monitor.probe_timeout);
    checks.push(Check {
        name: "health",
        ok: true,
        detail: match &health {
            Health::Ok => format!("{} answers OK", env.health_url),
            Health::NotOk { detail } => format!(
                "{} answers but is not OK ({detail}); the deploy restarts it",
                env.health_url
            ),
            Health::Error { detail } => format!(
                "{} unreachable ({detail}): the service is down; the deploy starts it",
                env.health_url
            ),
        },
    });

    let st = ReleasesState::load(env).unwrap_or_default();
    let journal = Journal::load(env).ok().flatten();
    let current = state::current_id(env);
    let mut from = current.clone();
    if let Some(j) = &journal {
        let switching_back =
            j.step == "switch-back" || j.step == "recovery-failed" || st.is_failed(&j.release);
        checks.push(Check {
            name: "journal",
            ok: true,
            detail: if switching_back {
                format!(
                    "a previous deploy of {} (pid {}) was killed switching back from it; the real run first finishes that switch-back to {}",
                    j.release,
                    j.pid,
                    j.from.as_deref().unwrap_or("nothing (no previous release)")
                )
            } else {
                format!(
                    "a previous deploy of {} (pid {}) stopped at step {:?}; the real run takes over from it",
                    j.release, j.pid, j.step
                )
            },
        });
        if switching_back || current.as_deref() == Some(j.release.as_str()) {
            from = j.from.clone();
        }
    }
    if let Some(rec) = st.releases.get(&id).filter(|r| r.is_bad()) {
        let msg = format!(
            "{id} is recorded {} ({}); the deploy refuses it{}",
            rec.state,
            rec.reason.as_deref().unwrap_or("no reason recorded"),
            if opts.retry_failed {
                " unless --retry-failed (given: it goes ahead)"
            } else {
                " (build a new release, or pass --retry-failed)"
            }
        );
        checks.push(Check {
            name: "release-state",
            ok: opts.retry_failed,
            detail: msg.clone(),
        });
        if !opts.retry_failed {
            block(
                &mut fatal,
                ToolError::new(Exit::Failed, anyhow!(msg)).into(),
            );
        }
    }
    let from = switch_back_target(env, &st, from, &id);
    let backup = upstream_backup.clone();

    let mut pending_json = Vec::new();
    let migrations_dir = b.dir.join("migrations");
    let migrate_step = match dhash_migrate::pending(&env.database, &migrations_dir) {
        Ok(p) if p.is_empty() => "no pending migrations".to_string(),
        Ok(p) => {
            let labels: Vec<String> = p.iter().map(|m| m.label()).collect();
            pending_json = p
                .iter()
                .map(|m| json!({"version": m.version, "name": m.name, "sql": m.up_sql}))
                .collect();
            for m in &p {
                em.debug(&format!("pending {}:\n{}", m.label(), m.up_sql.trim_end()));
            }
            let lacking: Vec<String> = p
                .iter()
                .filter(|m| m.down_sql.is_none())
                .map(|m| m.label())
                .collect();
            let refusal = if opts.no_migrate {
                Some(format!("--no-migrate: {} pending migration(s) ({}); the deploy would refuse before switching", p.len(), labels.join(", ")))
            } else if from.is_some()
                && !lacking.is_empty()
                && backup.is_none()
                && !will_backup(opts, env, current.as_deref())
            {
                Some(format!("{} lack(s) a .down.sql and no backup is taken (--no-backup): the deploy would refuse", lacking.join(", ")))
            } else {
                None
            };
            match refusal {
                Some(msg) => {
                    checks.push(Check {
                        name: "migrations",
                        ok: false,
                        detail: msg.clone(),
                    });
                    block(
                        &mut fatal,
                        ToolError::new(Exit::Failed, anyhow!(msg)).into(),
                    );
                }
                None => checks.push(Check {
                    name: "migrations",
                    ok: true,
                    detail: format!("{} pending: {}", p.len(), labels.join(", ")),
                }),
            }
            format!(
                "apply {} migration(s) to {}: {}",
                p.len(),
                env.database.display(),
                labels.join(", ")
            )
        }
        Err(e) => {
            checks.push(Check {
                name: "migrations",
                ok: false,
                detail: format!("{e:#}"),
            });
            block(&mut fatal, e);
            "apply migrations (cannot tell which: see the migrations check)".to_string()
        }
    };

    let mut steps = vec![
        format!("verify {} against its release.json", b.dir.display()),
        format!("take the {} lock ({})", env.name, env.lock_path().display()),
    ];
    if let Some(p) = &backup {
        steps.push(format!(
            "use the backup announced on stdin as the rollback point: {}",
            p.display()
        ));
    } else if will_backup(opts, env, current.as_deref()) {
        steps.push(format!(
            "back up {} into {} (the rollback point)",
            env.name,
            env.backup_dir.display()
        ));
    }
    steps.push(install_step);
    steps.push(migrate_step);
    steps.push(format!(
        "switch {} atomically: {} -> releases/{id}",
        env.current_link().display(),
        current
            .as_deref()
            .map(|c| format!("releases/{c}"))
            .unwrap_or_else(|| "(nothing deployed)".into())
    ));
    steps.push("restart the service (stop, then start)".to_string());
    if opts.skip_health_check {
        steps.push("skip the health check (--skip-health-check)".to_string());
    } else {
        steps.push(format!(
            "wait for {} consecutive OK answers of {} ({} apart, within {})",
            env.health.checks_required,
            env.health_url,
            gates_core::duration::human(env.health.interval),
            gates_core::duration::human(env.health.timeout)
        ));
    }
    steps.push(match &from {
        Some(f) => format!("if not healthy: mark {id} failed, switch back to {f}, revert the schema it applied, restart, verify health, exit 1"),
        None => format!("if not healthy: mark {id} failed, remove the current link (no previous release), exit 1"),
    });
    steps.push(format!(
        "keep the newest {} releases (never the current or last known-good one)",
        env.retention.releases
    ));
    steps.push(if opts.no_monitor {
        "--no-monitor: start no T+60 watch".to_string()
    } else {
        format!(
            "start the T+60 watch in the background (monitor_dhash --env {} --release {id}{} --detach), wait up to {} for {}; exit 5 if it does not register (live but unwatched)",
            env.name,
            if backup.is_some() || will_backup(opts, env, current.as_deref()) { " --backup <the backup>" } else { "" },
            gates_core::duration::human(WATCH_REGISTER_TIMEOUT),
            env.install_root.join("watch.json").display()
        )
    });

    for c in &checks {
        em.human(&format!(
            "check {:<14} {}  {}",
            c.name,
            if c.ok { "ok  " } else { "FAIL" },
            c.detail
        ));
    }
    for (i, s) in steps.iter().enumerate() {
        em.human(&format!("step {}: {s}", i + 1));
    }
    let ok = fatal.is_none();
    em.emit(
        "deploy.planned",
        if ok { Level::Info } else { Level::Error },
        format!(
            "dry run: deploy {id} to {}: {} steps; {}",
            env.name,
            steps.len(),
            if ok {
                "all checks passed".to_string()
            } else {
                "a check failed (see checks)".to_string()
            }
        ),
        json!({
            "dry_run": true, "release": id, "tag": b.manifest.tag, "bundle": b.dir,
            "from": current, "switch_back_to": from, "backup": backup,
            "schema_version": b.manifest.schema_version,
            "pending_migrations": pending_json, "checks": checks, "steps": steps,
        }),
    );
    match fatal {
        None => Ok(Exit::Ok),
        Some(e) => Err(e.context("dry run: the deploy would not go ahead")),
    }
}

/// Whether the deploy takes its own pre-deploy backup (when no
/// backup.verified arrived on stdin): by default, unless `--no-backup`, or
/// nothing is deployed yet and there is no database (nothing to restore).
fn will_backup(opts: &DeployOptions, env: &EnvConfig, current: Option<&str>) -> bool {
    (opts.backup_first || !opts.no_backup) && (current.is_some() || env.database.exists())
}

/// Whether `name` is a temporary name deploy itself makes: in releases/,
/// `.<id>.partial` (install) and `.<id>.removing.partial` (retention); in the
/// install root, the `fsutil` temp names of `current`, releases.json and the
/// journal. Other tools' temp files (a rollback's stage) are left alone.
fn is_deploy_temp(in_releases: bool, name: &str) -> bool {
    if !(name.starts_with('.') && name.ends_with(".partial")) {
        return false;
    }
    if in_releases {
        return true;
    }
    ["current", state::STATE_FILE, state::JOURNAL_FILE]
        .iter()
        .any(|f| name.starts_with(&format!(".{f}.")))
}

/// Removes what a killed deploy may have left (see [`is_deploy_temp`]).
fn cleanup_partials(env: &EnvConfig, em: &Emitter) {
    for (dir, in_releases) in [
        (env.releases_dir(), true),
        (env.install_root.clone(), false),
    ] {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if !is_deploy_temp(in_releases, &name) {
                continue;
            }
            let p = e.path();
            let r = if e.file_type().is_ok_and(|t| t.is_dir()) {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
            match r {
                Ok(()) => em.human(&format!(
                    "removed {} left by an interrupted run",
                    p.display()
                )),
                Err(err) => em.human(&format!("warning: cannot remove {}: {err}", p.display())),
            }
        }
    }
}

/// One deploy in progress (the lock is held for its whole life).
struct Run<'a> {
    project: &'a Project,
    env: &'a EnvConfig,
    em: &'a Emitter,
    lock: &'a EnvLock,
    manifest: ReleaseManifest,
    dest: PathBuf,
    /// The switch-back target.
    from: Option<String>,
    /// What `current` pointed at when this run began.
    current: Option<String>,
    backup: Option<PathBuf>,
    journal: Journal,
    st: ReleasesState,
    started: Instant,
}

impl Run<'_> {
    fn id(&self) -> &str {
        &self.manifest.id
    }

    fn step(&mut self, step: &str) -> anyhow::Result<()> {
        self.em.debug(&format!("journal: step {step}"));
        self.journal.step(self.env, step)
    }

    fn ledger(&self, result: &str, extra: Value) {
        let mut rec = json!({
            "release": self.id(), "tag": self.manifest.tag, "from": self.from, "result": result,
            "backup": self.backup, "schema_version": self.manifest.schema_version,
            "migrations": self.journal.migrations_applied,
            "seconds": (self.started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        });
        if let (Value::Object(m), Value::Object(x)) = (&mut rec, extra) {
            m.extend(x);
        }
        if let Err(e) = self.env.ledger().append("deploy", rec) {
            self.em
                .human(&format!("warning: cannot append to the ledger: {e:#}"));
        }
    }

    fn save_state(&self) {
        if let Err(e) = self.st.save(self.env) {
            self.em.human(&format!(
                "warning: cannot write {}: {e:#}",
                ReleasesState::path(self.env).display()
            ));
        }
    }

    fn mark(&mut self, state: &str, reason: Option<String>) {
        let (id, tag, sv) = (
            self.manifest.id.clone(),
            self.manifest.tag.clone(),
            self.manifest.schema_version,
        );
        self.st.set(&id, &tag, sv, state, reason);
        self.save_state();
    }

    /// A failure before `current` was switched: the old release still serves.
    /// Brings the schema back if migrations ran, records, and returns the error.
    fn fail_before_switch(&mut self, err: anyhow::Error, mark_failed: bool) -> anyhow::Error {
        let reason = format!("{err:#}");
        if mark_failed {
            self.mark("failed", Some(reason.clone()));
        }
        let mut exit = Exit::Failed;
        let mut notes = Vec::new();
        match self.revert_schema() {
            Ok(Some(note)) => notes.push(note),
            Ok(None) => {}
            Err(e) => {
                exit = Exit::RollbackFailed;
                notes.push(format!("the schema could NOT be brought back: {e:#}"));
            }
        }
        let note = if notes.is_empty() {
            "nothing was switched".to_string()
        } else {
            format!("nothing was switched; {}", notes.join("; "))
        };
        self.ledger(
            "failed",
            json!({"reason": reason, "stage": self.journal.step, "note": note}),
        );
        self.em.emit(
            "deploy.failed",
            if exit == Exit::Failed { Level::Error } else { Level::Critical },
            format!("deploy of {} failed before the switch: {reason}; {note}", self.id()),
            json!({"release": self.id(), "from": self.current, "backup": self.backup, "reason": reason,
                   "stage": self.journal.step, "switched_back": false, "note": note}),
        );
        if exit == Exit::Failed {
            let _ = Journal::remove(self.env);
        } else {
            let _ = self.step("recovery-failed");
        }
        ToolError::new(
            exit,
            err.context(format!("deploy of {} failed; {note}", self.id())),
        )
        .into()
    }

    /// Reverts what this deploy (and an interrupted one it took over) applied.
    /// `Ok(Some(note))` when something was done.
    fn revert_schema(&mut self) -> anyhow::Result<Option<String>> {
        let db_now = dhash_migrate::current_version(&self.env.database)?;
        let pre = self.journal.pre_schema_version;
        let target = pre.unwrap_or(0);
        let applied_here = !self.journal.migrations_applied.is_empty() || db_now > pre;
        if !applied_here
            || db_now.unwrap_or(0) <= target
            || (self.from.is_none() && self.current.is_none())
        {
            return Ok(None);
        }
        let dir = self.dest.join("migrations");
        self.em.human(&format!(
            "bringing the schema back from version {} to {target} with the down migrations of {}",
            db_now.unwrap_or(0),
            self.id()
        ));
        match dhash_migrate::backward(self.env, &dir, target, false, self.lock, self.em) {
            Ok(v) => Ok(Some(format!(
                "reverted migrations {v:?} (schema back to {target})"
            ))),
            Err(e) => {
                let Some(b) = self.backup.clone() else {
                    return Err(
                        e.context("no backup to restore instead (deploy with --backup-first)")
                    );
                };
                self.em.human(&format!(
                    "down migrations failed ({e:#}); restoring the pre-deploy backup {}",
                    b.display()
                ));
                restore_backup(self.project, self.env, self.lock, &b, self.id(), self.em)?;
                Ok(Some(format!(
                    "restored the pre-deploy backup {} (down migrations failed: {e:#})",
                    b.display()
                )))
            }
        }
    }

    /// After the switch: the new release is not healthy. Switch back.
    fn fail_after_switch(&mut self, err: anyhow::Error) -> anyhow::Error {
        let reason = format!("{err:#}");
        self.em.emit(
            "deploy.unhealthy",
            Level::Warning,
            format!("{} did not become healthy: {reason}", self.id()),
            json!({"release": self.id(), "reason": reason}),
        );
        self.mark("failed", Some(reason.clone()));
        let _ = self.step("switch-back");
        crash_point(self.em, "deploy-unhealthy");
        match self.switch_back() {
            Ok(note) => {
                self.ledger(
                    "failed",
                    json!({"reason": reason, "switched_back_to": self.from, "note": note}),
                );
                self.em.emit(
                    "deploy.failed",
                    Level::Error,
                    format!("deploy of {} failed: {reason}; {note}", self.id()),
                    json!({"release": self.id(), "from": self.from, "backup": self.backup, "reason": reason,
                           "switched_back": self.from.is_some(), "switched_back_to": self.from, "note": note}),
                );
                let _ = Journal::remove(self.env);
                ToolError::new(
                    Exit::Failed,
                    err.context(format!("deploy of {} failed; {note}", self.id())),
                )
                .into()
            }
            Err(e) => {
                let what = format!("{e:#}");
                self.ledger("failed", json!({"reason": reason, "recovery_error": what}));
                self.em.emit(
                    "deploy.failed",
                    Level::Critical,
                    format!("deploy of {} failed ({reason}) and switching back FAILED: {what}", self.id()),
                    json!({"release": self.id(), "from": self.from, "backup": self.backup, "reason": reason,
                           "switched_back": false, "recovery_error": what}),
                );
                let _ = self.step("recovery-failed");
                ToolError::new(
                    Exit::RollbackFailed,
                    anyhow!("deploy of {} failed ({reason}) and switching back failed: {what}; restore with rollback_dhash", self.id()),
                )
                .into()
            }
        }
    }

    fn switch_back(&mut self) -> anyhow::Result<String> {
        if let Err(e) = gates_core::service::stop(self.env, self.em) {
            self.em
                .human(&format!("warning: stopping the failed release: {e:#}"));
        }
        let Some(prev) = self.from.clone() else {
            if self.current.is_some() {
                anyhow::bail!(
                    "no other release to switch back to ({} was current already and no other healthy release is installed); the service is stopped",
                    self.current.as_deref().unwrap_or("?")
                );
            }
            // First deploy: nothing to go back to. Leave no `current` behind,
            // so nothing starts the failed release by accident.
            let link = self.env.current_link();
            if fs::symlink_metadata(&link).is_ok() {
                fs::remove_file(&link).with_context(|| format!("removing {}", link.display()))?;
                let _ = gates_core::fsutil::fsync_dir(&self.env.install_root);
            }
            return Ok(format!(
                "no previous release to switch back to: removed {}; the service is stopped",
                link.display()
            ));
        };
        gates_core::fsutil::switch_symlink(
            &Path::new("releases").join(&prev),
            &self.env.current_link(),
        )?;
        self.em.emit(
            "deploy.switched",
            Level::Warning,
            format!(
                "switched {} back to {prev}",
                self.env.current_link().display()
            ),
            json!({"release": prev, "from": self.id(), "switch_back": true}),
        );
        supersede_watch(self.env, &prev, self.em);
        crash_point(self.em, "deploy-switched-back");
        let schema = self.revert_schema()?;
        let restored = schema
            .as_deref()
            .is_some_and(|n| n.starts_with("restored the pre-deploy backup"));
        if !restored {
            gates_core::service::start(self.env, self.em)
                .context("starting the previous release")?;
            gates_core::probe::wait_healthy(self.env, &self.env.health, self.em)
                .context("the previous release did not become healthy")?;
        }
        Ok(match schema {
            Some(s) => format!("switched back to {prev} (healthy); {s}"),
            None => format!("switched back to {prev} (healthy)"),
        })
    }

    fn install(&mut self, bundle_dir: &Path) -> anyhow::Result<bool> {
        let id = self.id().to_string();
        if self.dest.is_dir() {
            match bundle::verify_release(&self.dest) {
                Ok(_) => return Ok(false),
                Err(e) => {
                    let q = self.env.quarantine_dir().join(format!(
                        "{id}-{}",
                        chrono::Utc::now().format("%Y%m%dT%H%M%S%3fZ")
                    ));
                    fs::create_dir_all(self.env.quarantine_dir())?;
                    self.em.human(&format!(
                        "installed {id} differs from its release.json ({e:#}); moving it to {}",
                        q.display()
                    ));
                    fs::rename(&self.dest, &q).with_context(|| {
                        format!("moving {} to {}", self.dest.display(), q.display())
                    })?;
                }
            }
        }
        let bytes = dir_bytes(bundle_dir);
        let free = free_bytes(&self.env.install_root)?;
        if free < bytes + DISK_MARGIN {
            anyhow::bail!(
                "not enough disk space in {}: {} free, the release needs {} (+{} margin)",
                self.env.install_root.display(),
                human_bytes(free),
                human_bytes(bytes),
                human_bytes(DISK_MARGIN)
            );
        }
        let tmp = self.env.releases_dir().join(format!(".{id}.partial"));
        if tmp.exists() {
            fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
        }
        if let Err(e) = bundle::copy_release(bundle_dir, &tmp, &self.manifest) {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        crash_point(self.em, "deploy-installing");
        fs::rename(&tmp, &self.dest)
            .with_context(|| format!("renaming {} to {}", tmp.display(), self.dest.display()))?;
        gates_core::fsutil::fsync_dir(&self.env.releases_dir())?;
        Ok(true)
    }

    /// Keeps the newest `retention.releases` installed releases, never the
    /// current, last known-good or switch-back one.
    fn prune(&mut self) {
        let keep = self.env.retention.releases.max(1);
        let dir = self.env.releases_dir();
        let mut all: Vec<(SystemTime, String)> = state::installed(&dir)
            .into_iter()
            .map(|id| {
                let t = self
                    .st
                    .releases
                    .get(&id)
                    .and_then(|r| r.installed_at.as_deref())
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .map(SystemTime::from)
                    .or_else(|| fs::metadata(dir.join(&id)).and_then(|m| m.modified()).ok())
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                (t, id)
            })
            .collect();
        all.sort_by(|a, b| b.cmp(a));
        let protect: Vec<String> = [
            Some(self.id().to_string()),
            self.st.last_known_good.clone(),
            self.from.clone(),
            state::current_id(self.env),
        ]
        .into_iter()
        .flatten()
        .collect();
        let mut removed = Vec::new();
        for (i, (_, id)) in all.iter().enumerate() {
            if i < keep || protect.contains(id) {
                continue;
            }
            let tmp = dir.join(format!(".{id}.removing.partial"));
            let r = fs::rename(dir.join(id), &tmp).and_then(|_| fs::remove_dir_all(&tmp));
            match r {
                Ok(()) => {
                    self.st.releases.remove(id);
                    removed.push(id.clone());
                }
                Err(e) => self
                    .em
                    .human(&format!("warning: cannot remove old release {id}: {e}")),
            }
        }
        if !removed.is_empty() {
            self.save_state();
            self.em.emit(
                "deploy.pruned",
                Level::Info,
                format!(
                    "removed {} old release(s) (keeping the newest {keep}): {}",
                    removed.len(),
                    removed.join(", ")
                ),
                json!({"removed": removed, "keep": keep}),
            );
        }
    }
}

/// Finishes the switch-back of a deploy that was killed while undoing its
/// failed release (journal step `switch-back` or `recovery-failed`, or its
/// release already recorded failed): marks that release failed, switches
/// `current` back to the release that served before it (never a failed
/// one), brings the schema back with the failed release's down migrations
/// (or its pre-deploy backup), restarts and verifies health. Emits
/// `deploy.interrupted` then `deploy.failed` (`finished_interrupted: true`);
/// exit 4 when the switch-back fails again.
fn finish_switch_back(
    project: &Project,
    env: &EnvConfig,
    lock: &EnvLock,
    j: Journal,
    st: &mut ReleasesState,
    em: &Emitter,
) -> anyhow::Result<()> {
    let target = switch_back_target(env, st, j.from.clone(), &j.release);
    em.emit(
        "deploy.interrupted",
        Level::Warning,
        format!(
            "a previous deploy of {} (pid {}, started {}) was killed at step {:?} while switching back from it; finishing the switch-back to {}",
            j.release,
            j.pid,
            j.started_at,
            j.step,
            target.as_deref().unwrap_or("nothing (no previous release)")
        ),
        json!({"release": j.release, "from": j.from, "step": j.step, "pid": j.pid, "backup": j.backup,
               "migrations_applied": j.migrations_applied, "switch_back_to": target}),
    );
    let _ = env.ledger().append(
        "deploy",
        json!({"release": j.release, "tag": j.tag, "from": j.from, "result": "interrupted", "step": j.step,
               "backup": j.backup, "migrations": j.migrations_applied, "pid": j.pid}),
    );
    let dest = env.releases_dir().join(&j.release);
    let manifest = ReleaseManifest::read(&dest).unwrap_or_else(|_| ReleaseManifest {
        id: j.release.clone(),
        tag: j.tag.clone(),
        schema_version: 0,
        created_at: String::new(),
        files: Default::default(),
    });
    let mut journal = j.clone();
    journal.pid = std::process::id();
    journal.from = target.clone();
    let mut run = Run {
        project,
        env,
        em,
        lock,
        dest,
        manifest,
        from: target,
        // What served when the interrupted deploy began.
        current: j.from.clone(),
        backup: j.backup.clone(),
        journal,
        st: st.clone(),
        started: Instant::now(),
    };
    let reason = run
        .st
        .releases
        .get(&j.release)
        .and_then(|r| r.reason.clone())
        .unwrap_or_else(|| "its deploy was interrupted while switching back".to_string());
    if !run.st.is_failed(&j.release) {
        run.mark("failed", Some(reason.clone()));
    }
    run.step("switch-back")?;
    let outcome = run.switch_back();
    *st = run.st.clone();
    match outcome {
        Ok(note) => {
            let note = format!("finished the interrupted switch-back: {note}");
            run.ledger(
                "failed",
                json!({"reason": reason, "switched_back_to": run.from, "note": note}),
            );
            em.emit(
                "deploy.failed",
                Level::Error,
                format!("deploy of {} failed ({reason}); {note}", j.release),
                json!({"release": j.release, "from": run.from, "backup": run.backup, "reason": reason,
                       "switched_back": run.from.is_some(), "switched_back_to": run.from, "note": note,
                       "finished_interrupted": true}),
            );
            Journal::remove(env)?;
            Ok(())
        }
        Err(e) => {
            let what = format!("{e:#}");
            run.ledger("failed", json!({"reason": reason, "recovery_error": what}));
            em.emit(
                "deploy.failed",
                Level::Critical,
                format!("the interrupted switch-back from {} FAILED again: {what}", j.release),
                json!({"release": j.release, "from": run.from, "backup": run.backup, "reason": reason,
                       "switched_back": false, "recovery_error": what, "finished_interrupted": true}),
            );
            let _ = run.step("recovery-failed");
            Err(ToolError::new(
                Exit::RollbackFailed,
                anyhow!(
                    "a deploy of {} was killed while switching back from it, and finishing that switch-back failed: {what}; restore with rollback_dhash",
                    j.release
                ),
            )
            .into())
        }
    }
}

/// Restores a backup (down migrations failed): the backup crate's restore
/// through dhash_rollback, which also restarts and proves health.
fn restore_backup(
    project: &Project,
    env: &EnvConfig,
    lock: &EnvLock,
    backup: &Path,
    failed_release: &str,
    em: &Emitter,
) -> anyhow::Result<()> {
    let opts = dhash_rollback::RollbackOptions {
        backup: Some(backup.to_path_buf()),
        skip_validation: false,
        dry_run: false,
        reason: Some(format!(
            "deploy of {failed_release} failed and its down migrations could not run"
        )),
    };
    dhash_rollback::rollback(project, env, lock, &opts, em)?;
    Ok(())
}

/// The deploy itself (not a dry run) of the bundle `b` (see
/// [`resolve_bundle`]); the caller has run the configuration preflight.
/// Act once: the release asked for already serves, is recorded healthy and
/// answers health now (checked under the lock). A second deploy of it (a
/// rerun, a second operator) is a no-op that says so: no backup, no switch,
/// no restart. A current release that is unhealthy is deployed again (a repair).
fn already_serving(
    env: &EnvConfig,
    st: &ReleasesState,
    id: &str,
    tag: &str,
    em: &Emitter,
) -> Option<DeployReport> {
    let healthy = st
        .releases
        .get(id)
        .is_some_and(|r| r.state == gates_core::release::state::HEALTHY);
    if !healthy
        || gates_core::probe::probe_health(&env.health_url, env.health.timeout) != Health::Ok
    {
        return None;
    }
    let msg = format!(
        "{id} is already live on {} and healthy: nothing to change (no backup, switch or restart)",
        env.name
    );
    em.emit(
        "deploy.unchanged",
        Level::Info,
        msg,
        json!({"release": id, "tag": tag}),
    );
    let _ = env.ledger().append(
        "deploy",
        json!({"release": id, "tag": tag, "from": id, "result": "unchanged"}),
    );
    Some(DeployReport {
        release: id.to_string(),
        tag: tag.to_string(),
        from: Some(id.to_string()),
        backup: None,
        migrations: Vec::new(),
        health_checked: true,
        unchanged: true,
    })
}

pub fn deploy(
    project: &Project,
    env: &EnvConfig,
    opts: &DeployOptions,
    upstream_backup: Option<PathBuf>,
    b: &release::Bundle,
    em: &Emitter,
) -> anyhow::Result<DeployReport> {
    bundle::verify_release(&b.dir).map_err(|e| {
        ToolError::new(Exit::Failed, e.context("refusing to deploy a bundle that does not match its release.json; nothing was changed"))
    })?;
    let faults = bundle::active_faults(&b.dir).map_err(|e| ToolError::new(Exit::Failed, e))?;
    if !faults.is_empty() {
        em.human(&format!(
            "warning: bundle {} has faults enabled: {}",
            b.manifest.tag,
            faults.join(", ")
        ));
    }
    if let Some(p) = &upstream_backup {
        if !p.is_file() {
            return Err(ToolError::new(
                Exit::Failed,
                anyhow!(
                    "the backup announced on stdin ({}) does not exist; nothing was changed",
                    p.display()
                ),
            )
            .into());
        }
    }

    let lock = env.lock(TOOL)?;
    if let Some(j) = dhash_rollback::pending(env)? {
        return Err(ToolError::new(
            Exit::Failed,
            anyhow!(
                "a rollback of {} to {} (pid {}, started {}) was interrupted at step {:?}; finish it first with `rollback_dhash --env {}` (nothing was changed)",
                env.name,
                j.backup.display(),
                j.pid,
                j.started_at,
                j.step,
                env.name
            ),
        )
        .into());
    }
    let started = Instant::now();
    let mut st = ReleasesState::load(env)?;
    let mut interrupted = Journal::load(env)?;
    let id = b.manifest.id.clone();
    if env.releases_dir().is_dir() || interrupted.is_some() {
        fs::create_dir_all(env.releases_dir())
            .with_context(|| format!("creating {}", env.releases_dir().display()))?;
        cleanup_partials(env, em);
    }

    // A deploy killed while switching back from its failed release: finish
    // that switch-back first, never move on to the failed release.
    if let Some(j) = interrupted.clone() {
        if j.step == "switch-back" || j.step == "recovery-failed" || st.is_failed(&j.release) {
            finish_switch_back(project, env, &lock, j, &mut st, em)?;
            interrupted = None;
        }
    }
    if let Some(rec) = st.releases.get(&id).filter(|r| r.is_bad()) {
        if !opts.retry_failed {
            return Err(ToolError::new(
                Exit::Failed,
                anyhow!(
                    "{id} is recorded {} in {} ({}): it is never deployed again; build a new release (a new tag), or pass --retry-failed to try this one knowingly (nothing was changed)",
                    rec.state,
                    ReleasesState::path(env).display(),
                    rec.reason.as_deref().unwrap_or("no reason recorded")
                ),
            )
            .into());
        }
        em.human(&format!(
            "warning: --retry-failed: deploying {id}, recorded {} ({})",
            rec.state,
            rec.reason.as_deref().unwrap_or("no reason recorded")
        ));
    }
    fs::create_dir_all(env.releases_dir())
        .with_context(|| format!("creating {}", env.releases_dir().display()))?;
    let current = state::current_id(env);
    if interrupted.is_none() && current.as_deref() == Some(id.as_str()) {
        if let Some(report) = already_serving(env, &st, &id, &b.manifest.tag, em) {
            return Ok(report);
        }
    }

    let mut from = current.clone();
    let mut backup = upstream_backup;
    let mut carried: Vec<i64> = Vec::new();
    let mut pre_schema = dhash_migrate::current_version(&env.database)?;
    if let Some(j) = &interrupted {
        let takes_over = current.as_deref() == Some(j.release.as_str()) || current == j.from;
        em.emit(
            "deploy.interrupted",
            Level::Warning,
            format!(
                "a previous deploy of {} (pid {}, started {}) was interrupted at step {:?}; {}",
                j.release,
                j.pid,
                j.started_at,
                j.step,
                if j.release == id { "finishing it" } else { "this deploy replaces it" }
            ),
            json!({"release": j.release, "from": j.from, "step": j.step, "pid": j.pid, "backup": j.backup,
                   "migrations_applied": j.migrations_applied}),
        );
        let _ = env.ledger().append(
            "deploy",
            json!({"release": j.release, "tag": j.tag, "from": j.from, "result": "interrupted", "step": j.step,
                   "backup": j.backup, "migrations": j.migrations_applied, "pid": j.pid}),
        );
        if takes_over {
            from = j.from.clone();
            carried = j.migrations_applied.clone();
            if !carried.is_empty() {
                pre_schema = j.pre_schema_version;
            }
            if backup.is_none() {
                backup = j.backup.clone();
            }
        }
    }
    let from_target = switch_back_target(env, &st, from.clone(), &id);
    if from_target != from {
        if let Some(f) = &from {
            em.human(&format!(
                "{f} is {} and will not be a switch-back target; using {}",
                if f == &id {
                    "the release being deployed"
                } else if st.is_failed(f) {
                    "marked failed"
                } else {
                    "not installed"
                },
                from_target.as_deref().unwrap_or("none")
            ));
        }
    }
    let from = from_target;

    let journal = Journal {
        release: id.clone(),
        tag: b.manifest.tag.clone(),
        from: from.clone(),
        step: "started".into(),
        pid: std::process::id(),
        started_at: gates_core::event::now_rfc3339(),
        updated_at: gates_core::event::now_rfc3339(),
        backup: backup.clone(),
        migrations_applied: carried,
        pre_schema_version: pre_schema,
    };
    let mut run = Run {
        project,
        env,
        em,
        lock: &lock,
        dest: env.releases_dir().join(&id),
        manifest: b.manifest.clone(),
        from,
        current,
        backup,
        journal,
        st,
        started,
    };
    run.step("started")?;
    run.ledger("started", json!({"bundle": b.dir}));
    em.emit(
        "deploy.started",
        Level::Info,
        format!(
            "deploying {id} to {} (from {})",
            env.name,
            run.current.as_deref().unwrap_or("nothing deployed")
        ),
        json!({"release": id, "tag": b.manifest.tag, "from": run.current, "switch_back_to": run.from,
               "backup": run.backup, "bundle": b.dir, "schema_version": b.manifest.schema_version}),
    );
    crash_point(em, "deploy-started");

    // Pending migrations, read from the verified bundle before anything changes.
    match dhash_migrate::pending(&env.database, &b.dir.join("migrations")) {
        Err(e) => return Err(run.fail_before_switch(e, false)),
        Ok(pending) if !pending.is_empty() => {
            let labels: Vec<String> = pending.iter().map(|m| m.label()).collect();
            if opts.no_migrate {
                let e = anyhow!(
                    "--no-migrate: {id} has {} pending migration(s) ({}) and would refuse to start on this database; apply them first (migrate_dhash --env {} --release {}) or deploy without --no-migrate",
                    pending.len(),
                    labels.join(", "),
                    env.name,
                    b.manifest.tag
                );
                return Err(run.fail_before_switch(e, false));
            }
            let lacking: Vec<String> = pending
                .iter()
                .filter(|m| m.down_sql.is_none())
                .map(|m| m.label())
                .collect();
            if run.from.is_some()
                && !lacking.is_empty()
                && run.backup.is_none()
                && !will_backup(opts, env, run.current.as_deref())
            {
                let e = anyhow!(
                    "{} ha(s) no .down.sql and no backup is taken (--no-backup): if the deploy failed, the schema could not be brought back for {}; deploy without --no-backup",
                    lacking.join(", "),
                    run.from.as_deref().unwrap_or("the previous release")
                );
                return Err(run.fail_before_switch(e, false));
            }
            em.human(&format!("pending migrations: {}", labels.join(", ")));
        }
        Ok(_) => {}
    }

    // Backup: the rollback point.
    if let Some(p) = run.backup.clone() {
        match dhash_backup::verify(&p) {
            Ok(m) if m.env != env.name => {
                let e = anyhow!(
                    "backup {} is of environment {:?}, not {:?}",
                    p.display(),
                    m.env,
                    env.name
                );
                return Err(run.fail_before_switch(e, false));
            }
            Ok(_) => em.human(&format!("rollback point: {}", p.display())),
            Err(e) => {
                return Err(run.fail_before_switch(
                    e.context(format!("the backup {} does not verify", p.display())),
                    false,
                ))
            }
        }
    } else if will_backup(opts, env, run.current.as_deref()) {
        run.step("backup")?;
        let bo = dhash_backup::BackupOptions {
            dry_run: false,
            keep: None,
        };
        match dhash_backup::create(project, env, &lock, &bo, em) {
            Ok(info) => {
                run.backup = Some(info.path.clone());
                run.journal.backup = Some(info.path);
            }
            Err(e) => {
                return Err(run.fail_before_switch(e.context("backup before deploy failed"), false))
            }
        }
    }

    // Install.
    run.step("install")?;
    let fresh = match run.install(&b.dir) {
        Ok(f) => f,
        Err(e) => return Err(run.fail_before_switch(e.context("installing the release"), false)),
    };
    if run.st.releases.get(&id).is_none_or(|r| r.state != "failed") || fresh {
        run.mark("installed", None);
    }
    em.emit(
        "deploy.installed",
        Level::Info,
        if fresh {
            format!("installed {id} into {}", run.dest.display())
        } else {
            format!(
                "{id} already installed and verified in {}",
                run.dest.display()
            )
        },
        json!({"release": id, "path": run.dest, "copied": fresh}),
    );
    crash_point(em, "deploy-installed");

    // Migrations (the new release's installed copy).
    let migrations_dir = run.dest.join("migrations");
    let pending = match dhash_migrate::pending(&env.database, &migrations_dir) {
        Ok(p) => p,
        Err(e) => return Err(run.fail_before_switch(e, false)),
    };
    if !pending.is_empty() {
        run.step("migrate")?;
        let result = dhash_migrate::forward(env, &migrations_dir, None, false, &lock, em);
        // Record what is applied now (all, or on failure those before it).
        let applied: Vec<i64> = match dhash_migrate::SqliteStore::open_read_only(&env.database) {
            Ok(mut s) => s
                .applied()
                .map(|r| r.into_iter().map(|a| a.version).collect())
                .unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        run.journal.migrations_applied.extend(
            pending
                .iter()
                .map(|m| m.version)
                .filter(|v| applied.contains(v)),
        );
        if let Err(e) = result {
            return Err(run.fail_before_switch(e.context("applying migrations"), true));
        }
        run.step("migrated")?;
        crash_point(em, "deploy-migrated");
    }

    // Switch.
    run.step("switch")?;
    if let Err(e) =
        gates_core::fsutil::switch_symlink(&Path::new("releases").join(&id), &env.current_link())
    {
        return Err(run.fail_before_switch(e, false));
    }
    em.emit(
        "deploy.switched",
        Level::Info,
        format!("switched {} to {id}", env.current_link().display()),
        json!({"release": id, "from": run.current}),
    );
    supersede_watch(env, &id, em);
    run.step("switched")?;
    crash_point(em, "deploy-switched");

    // Restart.
    run.step("restart")?;
    if let Err(e) = gates_core::service::stop(env, em) {
        return Err(run.fail_after_switch(e.context("stopping the service")));
    }
    crash_point(em, "deploy-stopped");
    if let Err(e) = gates_core::service::start(env, em) {
        let running = gates_core::service::status(env).running;
        if !(opts.skip_health_check && running) {
            return Err(run.fail_after_switch(e.context("starting the new release")));
        }
        em.human(&format!("warning: the service runs but did not report healthy ({e:#}); --skip-health-check: going on"));
    }
    crash_point(em, "deploy-restarted");

    // Health.
    if opts.skip_health_check {
        em.human(
            "--skip-health-check: not waiting for health; the release is recorded as unverified",
        );
    } else {
        run.step("health")?;
        if let Err(e) = gates_core::probe::wait_healthy(env, &env.health, em) {
            return Err(run.fail_after_switch(e));
        }
    }
    crash_point(em, "deploy-healthy");

    run.mark(
        if opts.skip_health_check {
            "unverified"
        } else {
            "healthy"
        },
        None,
    );
    run.ledger(
        "healthy",
        json!({"health_checked": !opts.skip_health_check}),
    );
    em.emit(
        "deploy.healthy",
        Level::Info,
        format!(
            "{id} is live on {}{}",
            env.name,
            if opts.skip_health_check { " (health check skipped)" } else { " and healthy" }
        ),
        json!({"release": id, "tag": b.manifest.tag, "from": run.current, "backup": run.backup,
               "schema_version": b.manifest.schema_version, "migrations": run.journal.migrations_applied,
               "health_checked": !opts.skip_health_check,
               "seconds": (started.elapsed().as_secs_f64() * 10.0).round() / 10.0}),
    );
    run.prune();
    Journal::remove(env)?;
    Ok(DeployReport {
        release: id,
        tag: b.manifest.tag.clone(),
        from: run.current.clone(),
        backup: run.backup.clone(),
        migrations: run.journal.migrations_applied.clone(),
        health_checked: !opts.skip_health_check,
        unchanged: false,
    })
}
