//! deploy_dhash: install a release bundle, migrate, switch `current`
//! atomically, restart the service and wait for health; switch back when the
//! new release does not become healthy.
//!
//! Steps (each recorded in `deploy.journal.json` before it runs):
//! verify the bundle against its release.json → take the environment lock →
//! (backup) → install into `releases/<id>/` via `releases/.<id>.partial` and a
//! rename → apply pending migrations (the new release's) → switch `current` →
//! restart the service (the environment's `restart` command when it has one,
//! else stop then start) → wait for health. On failure after the switch: mark
//! the release failed, switch back to the previous release, bring the schema
//! back (the new release's down migrations, else the pre-deploy backup),
//! restart and verify health, exit 1 (`deploy.failed`); exit 4 when that
//! recovery fails.
//!
//! Shape: [`plan::preflight`] makes every refusal decision once and returns
//! a typed [`plan::Plan`]; [`dry_run`] prints it, [`deploy`] (module
//! `execute`) refuses with the same error or executes it step by step, each
//! step a [`state::Step`] in the journal; [`watch`] starts the T+60 watch.
//!
//! Events: `deploy.started`, `deploy.installed`, `deploy.switched`,
//! `deploy.healthy` (carries the [`DeployReport`]) | `deploy.unhealthy` then
//! `deploy.failed` (`schema`: how the schema came back, see [`SchemaBack`]);
//! also `deploy.unchanged` (the release already serves), `deploy.interrupted`
//! (a previous run was killed mid-way), `deploy.planned` (`--dry-run`; its
//! `refusal` is the real run's error and exit code), `deploy.pruned`, and the
//! `migrate.*`, `backup.*`, `service.*` events of the steps. Every deploy
//! ledger record carries `started_at`.
//!
//! A fleet environment (one that lists `instances`) is rolled out in waves
//! by [`fleet`], which runs the deploy above on each instance in turn.

pub mod bundle;
pub mod cli;
pub mod dry_run;
mod execute;
pub mod fleet;
pub mod plan;
pub mod state;
pub mod tee;
pub mod watch;

use std::path::PathBuf;

use anyhow::anyhow;
use dhash_migrate::release;
use dhash_migrate::source;
use gates_core::config::EnvConfig;
use gates_core::project::Project;
use gates_core::runlog::{RunKind, RunLog};
use gates_core::{Emitter, Exit, ToolError};
use serde::Serialize;

pub use dry_run::dry_run;
pub use execute::{deploy, SchemaBack};
pub use watch::{start_watch, MONITOR_BIN_VAR};

pub const TOOL: &str = "deploy_dhash";

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

/// A successful deploy (`deploy.healthy` and `deploy.unchanged` carry it).
#[derive(Debug, Clone, PartialEq, Serialize)]
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
    /// When this deploy began (RFC 3339).
    pub started_at: String,
}

impl DeployReport {
    /// The report as event fields.
    pub fn fields(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

/// `DHASH_TEST_CRASH_AT=<point>` kills the process with SIGKILL at that
/// point (tests of crash safety). Points: `deploy-started`,
/// `deploy-installing` (copy done, not yet renamed), `deploy-installed`,
/// `deploy-migrated`, `deploy-switched`, `deploy-stopped`, `deploy-restarted`,
/// `deploy-healthy` (verified, not yet recorded), `deploy-unhealthy`
/// (recorded failed, switch-back journaled, nothing switched back yet),
/// `deploy-switched-back` (current back, schema not yet). Fleets:
/// `fleet-wave-<n>-moved` (wave n's instances moved, not yet baked),
/// `fleet-wave-<n>-passed` (recorded, next wave not started),
/// `fleet-rolling-back` (rollback journalled, no instance back yet),
/// `fleet-instance-rolled-back` (after each instance's rollback).
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
    if env.fleet.is_some() {
        return run_fleet_tool(&project, env, opts, upstream, &em);
    }
    if opts.dry_run {
        return dry_run(&project, env, opts, upstream, &em);
    }
    // Preflight, before anything changes (the dry run checks the same).
    check_config(&project, env, &em)?;
    let resolved = resolve_bundle(&project, opts.tag.as_deref(), false, &em)?;

    let (log, tee) = start_run_log(&project, env, &em);
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

/// A fleet environment: the waves rollout ([`fleet`]), under the same run
/// log. No T+60 watch is started (the watch follows one instance); the
/// waves' bakes are the fleet's gates. `--dry-run` lists the waves.
fn run_fleet_tool(
    project: &Project,
    env: &EnvConfig,
    opts: &DeployOptions,
    upstream: Option<PathBuf>,
    em: &Emitter,
) -> anyhow::Result<Exit> {
    for p in project.topology.check_placeholders(&env.name)? {
        em.human(&format!(
            "warning: unresolved placeholder at {}: {:?}",
            p.path, p.value
        ));
    }
    let resolved = resolve_bundle(project, opts.tag.as_deref(), opts.dry_run, em)?;
    if opts.dry_run {
        let f = env.fleet.as_ref().map(|f| (f.targets(), f.waves.clone()));
        em.info(
            "fleet.planned",
            format!("would roll {} out to {} in waves", resolved.bundle.manifest.id, env.name),
            serde_json::json!({"release": resolved.bundle.manifest.id,
                               "waves": f.as_ref().map(|f| &f.1), "targets": f.as_ref().map(|f| &f.0)}),
        );
        return Ok(Exit::Ok);
    }
    let (log, tee) = start_run_log(project, env, em);
    let result = fleet::run_fleet(project, env, opts, upstream, &resolved.bundle, em);
    if let (Err(e), Some(l)) = (&result, &log) {
        l.line(&format!("{TOOL}: error: {e:#}"));
    }
    drop(tee);
    result
}

/// The run log (`monitor_logs/deploy_<env>_<stamp>`) and the copy of stderr
/// into it; a deploy goes on without them (said as a warning).
fn start_run_log(
    project: &Project,
    env: &EnvConfig,
    em: &Emitter,
) -> (Option<RunLog>, Option<tee::StderrTee>) {
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
    (log, tee)
}

/// Preflight of the configuration, shared by the dry run and the real run:
/// the gates file must load and have a section (with gates) for the
/// environment, or the T+60 watch could not start after the switch; the
/// refusal (exit 2) names the file and `environments.<env>`. Placeholders
/// are refused in production and returned as warnings elsewhere.
pub(crate) fn check_config(
    project: &Project,
    env: &EnvConfig,
    em: &Emitter,
) -> anyhow::Result<Vec<String>> {
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
