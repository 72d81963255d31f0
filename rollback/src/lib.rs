//! `rollback_dhash`: verify a backup, restore it, prove health.
//!
//! Order of work (each step is recorded first in `<install_root>/rollback.journal`,
//! written atomically, so a rerun after `kill -9` at any point resumes and ends
//! with the backup's state fully restored):
//!
//! 1. choose the backup (the journal's, `--backup`, or the newest of the
//!    environment that verifies) and refuse one of another environment;
//! 2. extract it into `<install_root>/.rollback.partial/`, verifying the
//!    sidecar, every entry name and every manifest hash on the way (nothing of
//!    the environment is touched yet);
//! 3. stop the service;
//! 4. move the data dir into `<quarantine>/<ts>/data` and the restored data in;
//! 5. install the backup's release into `releases/<id>` (or check the one there);
//! 6. switch `current` atomically, then move the replaced release into the quarantine;
//! 7. start the service, require `health.checks_required` consecutive OK checks,
//!    run the post-rollback smoke tests.
//!
//! The replaced state stays in `<install_root>/quarantine/<ts>/` for
//! root-cause analysis (never under `backups/`, where the seeds' glob looks).
//!
//! In the code: `preflight` makes step 1's decisions and refusals once,
//! for the dry run (`dry_run`) and the real run alike; `stage_journal`
//! is step 2; `execute` runs steps 3-7 from the journal's [`Step`].
//! A restore that serves but fails its smoke tests is completed with
//! `smoke_passed: false`, not failed: the data and release are the backup's.

pub mod cli;
pub mod review;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context};
use dhash_backup::{ExtractOptions, Manifest};
use gates_core::config::EnvConfig;
use gates_core::exit::Exit;
use gates_core::fsutil;
use gates_core::lock::EnvLock;
use gates_core::project::Project;
use gates_core::{Emitter, Level, ToolError};
use serde::{Deserialize, Serialize};
use serde_json::json;

pub const TOOL: &str = "rollback_dhash";
/// File name of the journal under the install root.
pub const JOURNAL: &str = gates_core::install::ROLLBACK_JOURNAL;
/// The extraction folder under the install root.
pub const STAGE: &str = gates_core::install::ROLLBACK_STAGE;

#[derive(Debug, Clone, Default)]
pub struct RollbackOptions {
    /// The backup to restore; None: the newest of the environment that verifies.
    pub backup: Option<PathBuf>,
    /// Emergency: restore without checksum verification (warned loudly, recorded).
    pub skip_validation: bool,
    /// Verify and report what would be done; change nothing.
    pub dry_run: bool,
    /// Why (e.g. the violated gate); recorded in events and the ledger.
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RollbackReport {
    pub backup: PathBuf,
    pub release: Option<String>,
    /// From the start of the rollback to the last required OK health check (0 for a dry run).
    pub seconds_to_healthy: f64,
    /// None when the smoke tests did not run (dry run).
    pub smoke_passed: Option<bool>,
}

/// Where a rollback is; each step is journaled before it is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    Extracting,
    Stopping,
    RestoringData,
    InstallingRelease,
    Switching,
    Starting,
    Verifying,
}

/// `<install_root>/rollback.journal`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Journal {
    pub version: u32,
    pub env: String,
    pub backup: PathBuf,
    pub sha256: Option<String>,
    pub release: Option<String>,
    /// The manifest's database entry (`data/...`).
    pub database: Option<String>,
    /// The release `current` pointed at before the rollback.
    pub previous_release: Option<String>,
    pub stage: PathBuf,
    pub quarantine: PathBuf,
    pub step: Step,
    pub started_at: String,
    pub reason: Option<String>,
    pub skip_validation: bool,
    pub pid: u32,
}

pub fn journal_path(env: &EnvConfig) -> PathBuf {
    gates_core::install::rollback_journal(env)
}

/// The journal of an interrupted rollback, if any.
pub fn pending(env: &EnvConfig) -> anyhow::Result<Option<Journal>> {
    let path = journal_path(env);
    match fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .with_context(|| format!("the rollback journal {} is not valid", path.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow!("reading {}: {e}", path.display())),
    }
}

fn write_journal(env: &EnvConfig, j: &Journal) -> anyhow::Result<()> {
    let text = serde_json::to_vec_pretty(j)?;
    fsutil::write_atomic(&journal_path(env), &text).context("writing the rollback journal")
}

fn set_step(env: &EnvConfig, j: &mut Journal, step: Step) -> anyhow::Result<()> {
    j.step = step;
    write_journal(env, j)
}

/// What is about to happen, for a confirmation prompt.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub env: String,
    pub backup: PathBuf,
    pub manifest: Manifest,
    pub previous_release: Option<String>,
    pub resumed: bool,
}

/// Rolls `env` back to a backup (see the crate docs). The caller holds the lock.
pub fn rollback(
    project: &Project,
    env: &EnvConfig,
    lock: &EnvLock,
    opts: &RollbackOptions,
    em: &Emitter,
) -> anyhow::Result<RollbackReport> {
    rollback_with(project, env, lock, opts, em, &mut |_| Ok(true))
}

fn failed(e: anyhow::Error) -> anyhow::Error {
    ToolError::new(Exit::Failed, e).into()
}

/// What a guarded rollback ([`rollback_release`]) did.
#[derive(Debug, Clone, PartialEq)]
pub enum RollbackOutcome {
    /// The release was rolled back (or an interrupted rollback finished).
    Done(RollbackReport),
    /// Nothing was done: the release asked to be undone is no longer the
    /// current one (another watcher, a manual rollback or a newer deploy
    /// got there first). A `rollback.skipped` event and a ledger record say why.
    Skipped {
        /// The release the caller asked to undo.
        release: String,
        /// What `current` points at instead.
        current: Option<String>,
        reason: String,
    },
}

/// Whether `current` is `release` (by folder name or by its manifest's id).
pub fn is_current(env: &EnvConfig, release: &str) -> bool {
    gates_core::install::current_release_id(env).as_deref() == Some(release)
        || gates_core::service::current_release(env).as_deref() == Some(release)
}

/// Rolls back `release`, but only while it is still the current one: the
/// check is made here, under the environment lock the caller holds, so two
/// actors that saw the same violation (two watchers, a watcher and
/// `rollback_dhash --on-violation`) undo it once. The second gets
/// [`RollbackOutcome::Skipped`]. An interrupted rollback of `release`
/// (its journal names it as the replaced release) is resumed; an
/// interrupted rollback of another release is finished first, as every
/// mutating step must, and reported as done.
pub fn rollback_release(
    project: &Project,
    env: &EnvConfig,
    lock: &EnvLock,
    opts: &RollbackOptions,
    release: &str,
    em: &Emitter,
) -> anyhow::Result<RollbackOutcome> {
    check_lock(env, lock)?;
    let journal = pending(env).ok().flatten();
    if journal.is_none() && !is_current(env, release) {
        let current = gates_core::service::current_release(env)
            .or_else(|| gates_core::install::current_release_id(env));
        let reason = format!(
            "release {release} is no longer the current one (current: {}): it was already rolled back or replaced; nothing was done",
            current.as_deref().unwrap_or("none")
        );
        em.emit(
            "rollback.skipped",
            Level::Warning,
            reason.clone(),
            json!({"release": release, "current_release": current, "requested_reason": opts.reason}),
        );
        let rec = json!({"env": env.name, "release": release, "current": current, "result": "skipped",
                         "reason": opts.reason, "skipped_because": reason});
        if let Err(e) = env.ledger().append("rollback", rec) {
            em.emit(
                "ledger.failed",
                Level::Warning,
                format!("could not record the skipped rollback in the ledger: {e:#}"),
                json!({}),
            );
        }
        return Ok(RollbackOutcome::Skipped {
            release: release.to_string(),
            current,
            reason,
        });
    }
    rollback(project, env, lock, opts, em).map(RollbackOutcome::Done)
}

/// Like [`rollback`], with `confirm` asked (after verification, before anything
/// is touched) whether to go ahead; `Ok(false)` cancels (exit 1, nothing changed).
///
/// The shape: `preflight` decides (shared with the dry run), the stage is
/// extracted or resumed, the operator confirms, then `execute` runs the
/// journalled steps.
pub fn rollback_with(
    project: &Project,
    env: &EnvConfig,
    lock: &EnvLock,
    opts: &RollbackOptions,
    em: &Emitter,
    confirm: &mut dyn FnMut(&Prepared) -> anyhow::Result<bool>,
) -> anyhow::Result<RollbackReport> {
    check_lock(env, lock)?;
    let started = Instant::now();
    let pf = preflight(env, opts, em)?;
    if opts.dry_run {
        return dry_run(env, &pf, em);
    }
    let mut j = stage_journal(env, &pf, em)?;
    let manifest = dhash_backup::read_manifest(&pf.backup).map_err(failed)?;
    announce_verified(&pf, &j, &manifest, em);
    dhash_backup::crash_point("rollback-extracted");
    ask(env, &pf, &j, &manifest, confirm)?;
    execute(project, env, &mut j, &manifest, em, started)
}

/// The lock held must be this environment's (a caller's bug otherwise).
fn check_lock(env: &EnvConfig, lock: &EnvLock) -> anyhow::Result<()> {
    if lock.env() != env.name {
        bail!(
            "internal error: the lock held is for {:?}, not {:?}",
            lock.env(),
            env.name
        );
    }
    Ok(())
}

/// What the dry run and the real run both decide before anything is
/// touched: which backup, whether this run resumes an interrupted one, and
/// that the backup may be used at all.
struct Preflight {
    backup: PathBuf,
    /// The backup's manifest as read; verified later, by the dry run's
    /// verification or the real run's extraction.
    manifest: Manifest,
    /// The interrupted rollback this run resumes.
    resume: Option<Journal>,
    reason: Option<String>,
    skip_validation: bool,
}

/// Step 1: choose the backup and refuse what cannot be restored (see
/// [`Refusal`]). Reads only; the dry run and the real run share it, so they
/// refuse the same inputs with the same words.
fn preflight(env: &EnvConfig, opts: &RollbackOptions, em: &Emitter) -> anyhow::Result<Preflight> {
    let resume = resumable(env, opts.backup.as_deref(), em);
    let backup = match (&resume, &opts.backup) {
        (Some(j), _) => j.backup.clone(),
        (None, Some(b)) => fsutil::absolute(b),
        (None, None) => dhash_backup::newest_verified(env, em).map_err(failed)?,
    };
    let reason = opts
        .reason
        .clone()
        .or_else(|| resume.as_ref().and_then(|j| j.reason.clone()));
    let skip_validation =
        opts.skip_validation || resume.as_ref().is_some_and(|j| j.skip_validation);
    let resumed = resume.is_some();
    announce_start(
        env,
        &backup,
        &reason,
        resumed,
        skip_validation,
        opts.dry_run,
        em,
    );
    let manifest = check_backup(env, &backup).map_err(|r| refuse(em, r))?;
    Ok(Preflight {
        backup,
        manifest,
        resume,
        reason,
        skip_validation,
    })
}

/// The interrupted rollback this run resumes: none when there is none, when
/// its journal is unreadable (a fresh rollback starts), or when another
/// backup was asked for (it supersedes the interrupted one).
fn resumable(env: &EnvConfig, requested: Option<&Path>, em: &Emitter) -> Option<Journal> {
    let journal = match pending(env) {
        Ok(j) => j?,
        Err(e) => {
            em.emit(
                "rollback.journal-invalid",
                Level::Warning,
                format!("{e:#}; starting a fresh rollback"),
                json!({"path": journal_path(env)}),
            );
            return None;
        }
    };
    match requested {
        Some(b) if !fsutil::same_path(&journal.backup, b) => {
            em.emit(
                "rollback.superseded",
                Level::Warning,
                format!(
                    "an interrupted rollback to {} is superseded by the requested {}",
                    journal.backup.display(),
                    b.display()
                ),
                json!({"interrupted": journal.backup, "backup": b}),
            );
            None
        }
        _ => Some(journal),
    }
}

fn announce_start(
    env: &EnvConfig,
    backup: &Path,
    reason: &Option<String>,
    resumed: bool,
    skip_validation: bool,
    dry_run: bool,
    em: &Emitter,
) {
    em.emit(
        "rollback.started",
        Level::Warning,
        format!(
            "{}rolling {} back to {}",
            if resumed {
                "resuming an interrupted rollback: "
            } else {
                ""
            },
            env.name,
            backup.display()
        ),
        json!({"backup": backup, "reason": reason, "resumed": resumed,
               "skip_validation": skip_validation, "dry_run": dry_run}),
    );
    if skip_validation {
        em.emit(
            "rollback.validation-skipped",
            Level::Critical,
            format!(
                "--skip-validation: restoring {} WITHOUT checksum verification (sidecar and manifest hashes are not checked)",
                backup.display()
            ),
            json!({"backup": backup}),
        );
    }
}

/// Why a backup is refused while nothing is touched yet (exit 1). One
/// wording whether the dry run or the real run finds it.
#[derive(Debug)]
enum Refusal {
    /// A FIFO, a directory, a device or nothing: named for what it is, and
    /// never opened (so nothing blocks), not called missing.
    NotARegularFile {
        backup: PathBuf,
        error: anyhow::Error,
    },
    /// The zip or its manifest cannot be read.
    Unusable {
        backup: PathBuf,
        error: anyhow::Error,
    },
    /// A backup of another environment (the seeds' glob picks any
    /// environment's newest backup).
    OtherEnvironment {
        backup: PathBuf,
        manifest_env: String,
        env: String,
        /// Names the backup that would do instead.
        hint: String,
    },
    /// The sidecar, an entry name, a manifest hash or the database fails.
    DoesNotVerify {
        backup: PathBuf,
        error: anyhow::Error,
    },
}

impl Refusal {
    fn other_environment(env: &EnvConfig, backup: &Path, manifest_env: &str) -> Refusal {
        let hint = dhash_backup::newest_verified(env, &Emitter::sink(TOOL, &env.name))
            .map(|p| {
                format!(
                    "the newest verified backup of {} is {}",
                    env.name,
                    p.display()
                )
            })
            .unwrap_or_else(|_| format!("there is no verified backup of {}", env.name));
        Refusal::OtherEnvironment {
            backup: backup.to_path_buf(),
            manifest_env: manifest_env.to_string(),
            env: env.name.clone(),
            hint,
        }
    }

    /// The `rollback.refused` message.
    fn message(&self) -> String {
        match self {
            Refusal::NotARegularFile { error, .. } => format!("{error:#}"),
            Refusal::Unusable { backup, error } => format!(
                "{} is not a usable backup; nothing was changed: {error:#}",
                backup.display()
            ),
            Refusal::OtherEnvironment {
                backup,
                manifest_env,
                env,
                hint,
            } => format!(
                "refusing: {} is a backup of {manifest_env:?}, not {env:?}; {hint}",
                backup.display()
            ),
            Refusal::DoesNotVerify { backup, error } => format!(
                "{} does not verify; nothing was changed: {error:#}",
                backup.display()
            ),
        }
    }

    fn fields(&self) -> serde_json::Value {
        match self {
            Refusal::NotARegularFile { backup, .. } => json!({"backup": backup}),
            Refusal::Unusable { backup, error } | Refusal::DoesNotVerify { backup, error } => {
                json!({"backup": backup, "error": format!("{error:#}")})
            }
            Refusal::OtherEnvironment {
                backup,
                manifest_env,
                ..
            } => json!({"backup": backup, "manifest_env": manifest_env}),
        }
    }

    /// The error the tool exits with.
    fn into_error(self) -> anyhow::Error {
        let msg = self.message();
        match self {
            Refusal::NotARegularFile { .. } | Refusal::OtherEnvironment { .. } => anyhow!(msg),
            Refusal::Unusable { error, .. } => error,
            Refusal::DoesNotVerify { backup, error } => {
                error.context(format!("verifying {}", backup.display()))
            }
        }
    }
}

/// Reports a refusal (`rollback.refused`) and returns its error (exit 1).
fn refuse(em: &Emitter, r: Refusal) -> anyhow::Error {
    em.emit("rollback.refused", Level::Error, r.message(), r.fields());
    failed(r.into_error())
}

/// The refusals that need no verification: checked before any real work.
fn check_backup(env: &EnvConfig, backup: &Path) -> Result<Manifest, Refusal> {
    if let Err(error) = fsutil::require_regular_file(backup, "the backup") {
        return Err(Refusal::NotARegularFile {
            backup: backup.to_path_buf(),
            error,
        });
    }
    let manifest = dhash_backup::read_manifest(backup).map_err(|error| Refusal::Unusable {
        backup: backup.to_path_buf(),
        error,
    })?;
    if manifest.env != env.name {
        return Err(Refusal::other_environment(env, backup, &manifest.env));
    }
    Ok(manifest)
}

/// Step 2: the journal this run works from. The interrupted run's when the
/// swap finished (the restored data and release are in place, maybe already
/// served: redoing it would quarantine the restore itself) or when its
/// stage survived; else a fresh extraction (verified) into the stage.
fn stage_journal(env: &EnvConfig, pf: &Preflight, em: &Emitter) -> anyhow::Result<Journal> {
    let stage = env.install_root.join(STAGE);
    match pf.resume.clone() {
        Some(j) if j.step >= Step::Starting => {
            em.human(&format!(
                "resuming at step {:?}: the restore is complete on disk",
                j.step
            ));
            Ok(j)
        }
        Some(j) if j.step > Step::Extracting && stage.is_dir() => {
            em.human(&format!("resuming at step {:?}", j.step));
            Ok(j)
        }
        prior => {
            let mut j = fresh_journal(env, pf, prior.as_ref(), stage);
            extract_stage(env, &mut j, em)?;
            Ok(j)
        }
    }
}

/// The journal of a fresh extraction; a resumed run that lost its stage
/// keeps its quarantine, its previous release and its step (the
/// environment is already touched).
fn fresh_journal(
    env: &EnvConfig,
    pf: &Preflight,
    prior: Option<&Journal>,
    stage: PathBuf,
) -> Journal {
    Journal {
        version: 1,
        env: env.name.clone(),
        backup: pf.backup.clone(),
        sha256: None,
        release: pf.manifest.release.clone(),
        database: pf.manifest.database.clone(),
        previous_release: prior
            .and_then(|j| j.previous_release.clone())
            .or_else(|| gates_core::install::current_release_id(env)),
        stage,
        quarantine: prior.map_or_else(
            || env.quarantine_dir().join(dhash_backup::timestamp_now()),
            |j| j.quarantine.clone(),
        ),
        step: prior.map_or(Step::Extracting, |j| j.step),
        started_at: gates_core::event::now_rfc3339(),
        reason: pf.reason.clone(),
        skip_validation: pf.skip_validation,
        pid: std::process::id(),
    }
}

fn announce_verified(pf: &Preflight, j: &Journal, manifest: &Manifest, em: &Emitter) {
    em.emit(
        "rollback.verified",
        Level::Info,
        format!(
            "{} {} (release {}, schema {}, created {})",
            pf.backup.display(),
            match (pf.skip_validation, j.step >= Step::Starting) {
                (_, true) => "already restored by the interrupted run",
                (true, false) => "extracted WITHOUT verification",
                (false, false) => "verified and extracted",
            },
            manifest.release.as_deref().unwrap_or("none"),
            manifest
                .schema_version
                .map(|v| v.to_string())
                .unwrap_or_else(|| "none".into()),
            manifest.created_at
        ),
        json!({"backup": pf.backup, "sha256": j.sha256, "release": manifest.release,
               "schema_version": manifest.schema_version, "created_at": manifest.created_at,
               "files": manifest.files.len(), "bytes": manifest.total_bytes(),
               "skip_validation": pf.skip_validation}),
    );
}

/// Asks `confirm`; a refusal leaves the environment as it was (the stage of
/// a fresh extraction is removed).
fn ask(
    env: &EnvConfig,
    pf: &Preflight,
    j: &Journal,
    manifest: &Manifest,
    confirm: &mut dyn FnMut(&Prepared) -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let prepared = Prepared {
        env: env.name.clone(),
        backup: pf.backup.clone(),
        manifest: manifest.clone(),
        previous_release: j.previous_release.clone(),
        resumed: j.step > Step::Extracting,
    };
    let answer = confirm(&prepared);
    if !matches!(answer, Ok(true)) && j.step <= Step::Extracting {
        discard_stage(env, j);
    }
    match answer {
        Ok(true) => Ok(()),
        Ok(false) => Err(failed(anyhow!("rollback cancelled; nothing was changed"))),
        Err(e) => Err(e),
    }
}

/// Steps 3-7 from where the journal says the rollback is. From here on the
/// environment is touched: failures are exit 4.
fn execute(
    project: &Project,
    env: &EnvConfig,
    j: &mut Journal,
    manifest: &Manifest,
    em: &Emitter,
    started: Instant,
) -> anyhow::Result<RollbackReport> {
    // At Starting or later the interrupted run finished the swap (see [`stage_journal`]).
    if j.step < Step::Starting {
        if let Err(e) = swap(env, j, em) {
            return Err(fail(env, j, em, started, e, "restore"));
        }
    }
    // The replaced release is out of service for good: never healthy, never
    // the last known-good one, never a switch-back target again.
    record_states(env, j, false, em);
    let proven = start_and_prove(project, env, j, em, started);
    // The restore itself is complete on disk: a rerun would not help.
    let _ = fs::remove_file(journal_path(env));
    discard_stage(env, j);
    match proven {
        Ok((seconds, smoke)) => Ok(complete(env, j, manifest, seconds, smoke, em)),
        Err(e) => Err(fail(env, j, em, started, e, "health")),
    }
}

/// What the post-rollback smoke tests found, once the restored release
/// proved healthy.
#[derive(Debug, Clone, PartialEq)]
enum Smoke {
    Passed,
    /// Checks beyond health failed (golden images, metrics, queue): the
    /// restore stands and serves, but someone must look (exit 4).
    Failed(String),
}

/// The smoke checks that prove the restored release serves: when one of
/// them fails the rollback failed, not just its smoke tests.
const SERVING_CHECKS: [&str; 3] = ["health", "health_consecutive", "release"];

/// Step 7: start, require the consecutive OK health checks, run the
/// post-rollback smoke tests. `Err`: the restored release does not serve.
fn start_and_prove(
    project: &Project,
    env: &EnvConfig,
    j: &mut Journal,
    em: &Emitter,
    started: Instant,
) -> anyhow::Result<(f64, Smoke)> {
    set_step(env, j, Step::Starting)?;
    gates_core::service::start(env, em).context("starting the service")?;
    dhash_backup::crash_point("rollback-started");
    set_step(env, j, Step::Verifying)?;
    gates_core::probe::wait_healthy(env, &env.health, em).context("waiting for health")?;
    let seconds = started.elapsed().as_secs_f64();
    let smoke = dhash_smoke::run(
        project,
        env,
        &dhash_smoke::SmokeOptions {
            mode: dhash_smoke::SmokeMode::PostRollback,
            dry_run: false,
        },
        em,
    )
    .context("running the post-rollback smoke tests")?;
    if smoke.passed {
        return Ok((seconds, Smoke::Passed));
    }
    let failed = smoke
        .failed()
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect::<Vec<_>>()
        .join("; ");
    if smoke
        .failed()
        .any(|c| SERVING_CHECKS.contains(&c.name.as_str()))
    {
        bail!("post-rollback smoke tests failed: {failed}");
    }
    Ok((seconds, Smoke::Failed(failed)))
}

/// Records and reports a completed restore. Failed smoke tests keep the
/// restored release from being recorded healthy (never the last known-good
/// one that way) and make the completion critical.
fn complete(
    env: &EnvConfig,
    j: &Journal,
    manifest: &Manifest,
    seconds: f64,
    smoke: Smoke,
    em: &Emitter,
) -> RollbackReport {
    let smoke_passed = smoke == Smoke::Passed;
    let smoke_error = match &smoke {
        Smoke::Passed => None,
        Smoke::Failed(checks) => Some(format!("post-rollback smoke tests failed: {checks}")),
    };
    record_states(env, j, smoke_passed, em);
    let outcome = LedgerOutcome::Completed {
        seconds,
        smoke_passed,
        error: smoke_error.as_deref(),
    };
    ledger(env, em, j, outcome);
    let healthy = format!(
        "{} rolled back to {} (release {}) and healthy after {seconds:.1}s",
        env.name,
        j.backup.display(),
        manifest.release.as_deref().unwrap_or("unchanged")
    );
    let (level, msg) = match &smoke_error {
        None => (Level::Info, healthy),
        Some(e) => (
            Level::Critical,
            format!("{healthy}, but the {e}: the restored release needs a look"),
        ),
    };
    em.emit(
        "rollback.completed",
        level,
        msg,
        json!({"backup": j.backup, "release": manifest.release, "previous_release": j.previous_release,
               "schema_version": manifest.schema_version, "seconds_to_healthy": seconds,
               "smoke_passed": Some(smoke_passed), "quarantine": j.quarantine, "reason": j.reason,
               "skip_validation": j.skip_validation}),
    );
    RollbackReport {
        backup: j.backup.clone(),
        release: manifest.release.clone(),
        seconds_to_healthy: seconds,
        smoke_passed: Some(smoke_passed),
    }
}

fn fail(
    env: &EnvConfig,
    j: &Journal,
    em: &Emitter,
    started: Instant,
    e: anyhow::Error,
    stage: &str,
) -> anyhow::Error {
    let msg = format!("{e:#}");
    ledger(env, em, j, LedgerOutcome::Failed { error: &msg });
    let resumable = journal_path(env).exists();
    em.emit(
        "rollback.failed",
        Level::Critical,
        format!(
            "rollback of {} to {} failed during {stage}: {msg}{}",
            env.name,
            j.backup.display(),
            if resumable {
                " (rerun rollback_dhash to resume)"
            } else {
                ""
            }
        ),
        json!({"backup": j.backup, "release": j.release, "step": j.step, "error": msg,
               "quarantine": j.quarantine, "resumable": resumable,
               "seconds": started.elapsed().as_secs_f64()}),
    );
    ToolError::new(Exit::RollbackFailed, e).into()
}

/// `releases.json` (issue 13 "Release states"): the release the rollback
/// replaced is `rolled-back` (with the reason); once the restored release
/// has proven healthy it is recorded `healthy`, unless it is recorded bad
/// (failed, rolled back, quarantined): an operator may restore such a
/// backup, but it never becomes the last known-good release that way.
/// A failure to record is reported, never fatal: the service matters more.
fn record_states(env: &EnvConfig, j: &Journal, restored_healthy: bool, em: &Emitter) {
    use gates_core::release::{state, ReleaseManifest, ReleasesState};
    let result = (|| -> anyhow::Result<()> {
        let mut st = ReleasesState::load(env)?;
        let mut changed = false;
        if let Some(prev) = j.previous_release.as_deref() {
            if j.release.as_deref() != Some(prev) {
                let reason = format!(
                    "rolled back to {} ({})",
                    j.backup.display(),
                    j.reason.as_deref().unwrap_or("no reason given")
                );
                changed |= st.mark_rolled_back(prev, &reason);
            }
        }
        if restored_healthy {
            if let Some(id) = j.release.as_deref().filter(|id| !st.is_failed(id)) {
                let m = ReleaseManifest::read(&env.releases_dir().join(id))?;
                st.set(
                    id,
                    &m.tag,
                    m.schema_version,
                    state::HEALTHY,
                    Some(format!("restored from {}", j.backup.display())),
                );
                changed = true;
            }
        }
        if changed {
            st.save(env)?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        em.emit(
            "rollback.state-unrecorded",
            Level::Warning,
            format!(
                "could not record the release states in {}: {e:#}",
                ReleasesState::path(env).display()
            ),
            json!({"error": format!("{e:#}")}),
        );
    }
}

/// How a rollback that touched the environment ended, for its ledger record.
enum LedgerOutcome<'a> {
    /// Restored and healthy; `error` names the failed smoke checks, if any.
    Completed {
        seconds: f64,
        smoke_passed: bool,
        error: Option<&'a str>,
    },
    Failed {
        error: &'a str,
    },
}

fn ledger(env: &EnvConfig, em: &Emitter, j: &Journal, outcome: LedgerOutcome) {
    let (result, seconds, smoke_passed, error) = match outcome {
        LedgerOutcome::Completed {
            seconds,
            smoke_passed,
            error,
        } => ("completed", Some(seconds), Some(smoke_passed), error),
        LedgerOutcome::Failed { error } => ("failed", None, None, Some(error)),
    };
    let rec = json!({"env": env.name, "backup": j.backup, "release": j.release, "from": j.previous_release,
                     "result": result, "reason": j.reason, "skip_validation": j.skip_validation,
                     "seconds_to_healthy": seconds, "smoke_passed": smoke_passed,
                     "quarantine": j.quarantine, "error": error});
    if let Err(e) = env.ledger().append("rollback", rec) {
        em.emit(
            "ledger.failed",
            Level::Warning,
            format!("could not record the rollback in the ledger: {e:#}"),
            json!({}),
        );
    }
}

fn discard_stage(env: &EnvConfig, j: &Journal) {
    let _ = fs::remove_dir_all(&j.stage);
    let _ = fsutil::fsync_dir(&env.install_root);
}

/// Step 2: a fresh extraction into the stage.
fn extract_stage(env: &EnvConfig, j: &mut Journal, em: &Emitter) -> anyhow::Result<()> {
    fs::create_dir_all(&env.install_root)
        .with_context(|| format!("creating {}", env.install_root.display()))
        .map_err(failed)?;
    if j.stage.exists() {
        fs::remove_dir_all(&j.stage)
            .with_context(|| format!("removing the old stage {}", j.stage.display()))
            .map_err(failed)?;
    }
    em.debug(&format!(
        "extracting {} into {}",
        j.backup.display(),
        j.stage.display()
    ));
    let extracted = dhash_backup::extract(
        &j.backup,
        &j.stage,
        &ExtractOptions {
            skip_validation: j.skip_validation,
        },
    );
    let extracted = match extracted {
        Ok(x) => x,
        Err(e) => {
            discard_stage(env, j);
            if j.step > Step::Extracting {
                // An interrupted rollback had already touched the environment.
                let e = e.context(format!("verifying {} again to resume", j.backup.display()));
                return Err(fail(env, j, em, Instant::now(), e, "extraction"));
            }
            // Nothing was touched (the journal is written only once the swap begins).
            let backup = j.backup.clone();
            return Err(refuse(em, Refusal::DoesNotVerify { backup, error: e }));
        }
    };
    if extracted.manifest.env != env.name {
        // The zip changed since the preflight read its manifest.
        discard_stage(env, j);
        let r = Refusal::other_environment(env, &j.backup, &extracted.manifest.env);
        return Err(refuse(em, r));
    }
    j.sha256 = extracted.sha256.clone();
    j.release = extracted.manifest.release.clone();
    j.database = extracted.manifest.database.clone();
    fsutil::fsync_dir(&env.install_root).map_err(|e| failed(e.into()))?;
    Ok(())
}

/// A free name in the quarantine (`name`, `name.1`, ...).
fn quarantine_slot(q: &Path, name: &str) -> PathBuf {
    let first = q.join(name);
    if !first.exists() {
        return first;
    }
    (1..)
        .map(|i| q.join(format!("{name}.{i}")))
        .find(|p| !p.exists())
        .unwrap_or(first)
}

/// Whether the installed release folder holds exactly the backup's files.
fn release_matches(dir: &Path, id: &str, manifest_files: &[dhash_backup::FileEntry]) -> bool {
    let prefix = format!("release/{id}/");
    let mut expected = 0usize;
    for f in manifest_files {
        let Some(rel) = f.path.strip_prefix(&prefix) else {
            continue;
        };
        expected += 1;
        match dhash_backup::sha256_file(&dir.join(rel)) {
            Ok(h) if h == f.sha256 => {}
            _ => return false,
        }
    }
    let mut count = 0usize;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else {
            return false;
        };
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(_) => count += 1,
                Err(_) => return false,
            }
        }
    }
    count == expected
}

/// Journals `step` unless the rollback is already there or past it.
fn advance(env: &EnvConfig, j: &mut Journal, step: Step) -> anyhow::Result<()> {
    if j.step < step {
        set_step(env, j, step)?;
    }
    Ok(())
}

/// Steps 3-6, each idempotent given what is on disk, so a rerun redoes or
/// skips what an interrupted run did.
fn swap(env: &EnvConfig, j: &mut Journal, em: &Emitter) -> anyhow::Result<()> {
    // 3. Stop. The journal is written for the first time here: from now on
    // a rerun resumes this rollback.
    advance(env, j, Step::Stopping)?;
    let q = open_quarantine(env, j)?;
    gates_core::service::stop(env, em).context("stopping the service")?;
    dhash_backup::crash_point("rollback-stopped");

    restore_data(env, j, &q, em)?;
    dhash_backup::crash_point("rollback-data-restored");

    let Some(id) = j.release.clone() else {
        em.emit(
            "rollback.release-unchanged",
            Level::Warning,
            "the backup holds no release (nothing was deployed when it was made): only the data was restored",
            json!({}),
        );
        return Ok(());
    };
    install_release(env, j, &id, &q, em)?;
    dhash_backup::crash_point("rollback-release-installed");
    switch_release(env, j, &id, &q, em)
}

/// The quarantine of this rollback, with a note of what it holds and why.
fn open_quarantine(env: &EnvConfig, j: &Journal) -> anyhow::Result<PathBuf> {
    let q = j.quarantine.clone();
    fs::create_dir_all(&q).with_context(|| format!("creating the quarantine {}", q.display()))?;
    let info = q.join("rollback.json");
    if !info.exists() {
        fsutil::write_atomic(
            &info,
            &serde_json::to_vec_pretty(&json!({
                "env": env.name, "backup": j.backup, "reason": j.reason,
                "previous_release": j.previous_release, "restored_release": j.release,
                "started_at": j.started_at,
                "note": "state replaced by a rollback, kept for root-cause analysis",
            }))?,
        )?;
    }
    Ok(q)
}

/// Step 4, the data: the live folder into the quarantine, the restored one in.
fn restore_data(env: &EnvConfig, j: &mut Journal, q: &Path, em: &Emitter) -> anyhow::Result<()> {
    advance(env, j, Step::RestoringData)?;
    let staged_data = j.stage.join("data");
    if staged_data.is_dir() {
        if env.data_dir.exists() {
            let slot = quarantine_slot(q, "data");
            fsutil::move_path(&env.data_dir, &slot)?;
            em.emit(
                "rollback.quarantined",
                Level::Info,
                format!(
                    "moved the replaced data {} to {}",
                    env.data_dir.display(),
                    slot.display()
                ),
                json!({"what": "data", "from": env.data_dir, "to": slot}),
            );
        }
        dhash_backup::crash_point("rollback-data-quarantined");
        fsutil::move_path(&staged_data, &env.data_dir)?;
    } else if !env.data_dir.is_dir() {
        bail!(
            "neither the staged data nor {} exists: rerun rollback_dhash to extract again",
            env.data_dir.display()
        );
    }
    place_database(env, j, q, em)
}

/// Step 5: the backup's release into `releases/<id>`: moved in from the stage,
/// or kept when the folder there already holds exactly its files.
fn install_release(
    env: &EnvConfig,
    j: &mut Journal,
    id: &str,
    q: &Path,
    em: &Emitter,
) -> anyhow::Result<()> {
    advance(env, j, Step::InstallingRelease)?;
    let staged_release = j.stage.join("release").join(id);
    let target = env.releases_dir().join(id);
    if !staged_release.is_dir() {
        if !target.is_dir() {
            bail!(
                "neither the staged release nor {} exists: rerun rollback_dhash to extract again",
                target.display()
            );
        }
        return Ok(());
    }
    if !target.exists() {
        return fsutil::move_path(&staged_release, &target);
    }
    let manifest = dhash_backup::read_manifest(&j.backup)?;
    if release_matches(&target, id, &manifest.files) {
        em.debug(&format!(
            "{} already holds the backup's release files",
            target.display()
        ));
        return Ok(());
    }
    let slot = quarantine_slot(&q.join("releases"), id);
    em.emit(
        "rollback.quarantined",
        Level::Warning,
        format!(
            "{} differs from the backup's copy: moved to {}",
            target.display(),
            slot.display()
        ),
        json!({"what": "release", "from": target, "to": slot}),
    );
    fsutil::move_path(&target, &slot)?;
    fsutil::move_path(&staged_release, &target)
}

/// Step 6: switch `current`, then quarantine the replaced release.
fn switch_release(
    env: &EnvConfig,
    j: &mut Journal,
    id: &str,
    q: &Path,
    em: &Emitter,
) -> anyhow::Result<()> {
    advance(env, j, Step::Switching)?;
    fsutil::switch_symlink(&Path::new("releases").join(id), &env.current_link())?;
    dhash_backup::crash_point("rollback-switched");
    let Some(prev) = j.previous_release.clone().filter(|p| p != id) else {
        return Ok(());
    };
    let old = env.releases_dir().join(&prev);
    if old.is_dir() {
        let slot = quarantine_slot(&q.join("releases"), &prev);
        fsutil::move_path(&old, &slot)?;
        em.emit(
            "rollback.quarantined",
            Level::Info,
            format!("moved the replaced release {prev} to {}", slot.display()),
            json!({"what": "release", "release": prev, "from": old, "to": slot}),
        );
    }
    Ok(())
}

/// When the environment's database is not at the backup's place inside the
/// data dir (the topology keeps it elsewhere), move it there.
fn place_database(env: &EnvConfig, j: &Journal, q: &Path, em: &Emitter) -> anyhow::Result<()> {
    let Some(db) = j.database.as_deref() else {
        return Ok(());
    };
    let Some(rel) = db.strip_prefix("data/") else {
        return Ok(());
    };
    let restored = env.data_dir.join(rel);
    if fsutil::same_path(&restored, &env.database) || !restored.is_file() {
        return Ok(());
    }
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let live = PathBuf::from(format!("{}{suffix}", env.database.display()));
        if live.exists() {
            let name = live
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("database");
            fsutil::move_path(&live, &quarantine_slot(&q.join("database"), name))?;
        }
    }
    fsutil::move_path(&restored, &env.database)?;
    em.debug(&format!("database restored to {}", env.database.display()));
    Ok(())
}

/// The dry run: verify (unless `--skip-validation`) and report the plan;
/// change nothing. Its refusals are the real run's ([`preflight`], [`Refusal`]).
fn dry_run(env: &EnvConfig, pf: &Preflight, em: &Emitter) -> anyhow::Result<RollbackReport> {
    let backup = &pf.backup;
    let manifest = if pf.skip_validation {
        pf.manifest.clone()
    } else {
        dhash_backup::verify(backup).map_err(|error| {
            refuse(
                em,
                Refusal::DoesNotVerify {
                    backup: backup.clone(),
                    error,
                },
            )
        })?
    };
    em.emit(
        "rollback.verified",
        Level::Info,
        format!("{} verified (dry run)", backup.display()),
        json!({"backup": backup, "release": manifest.release, "schema_version": manifest.schema_version,
               "created_at": manifest.created_at, "files": manifest.files.len(),
               "bytes": manifest.total_bytes(), "skip_validation": pf.skip_validation, "dry_run": true}),
    );
    let current = gates_core::install::current_release_id(env);
    let data_files = manifest
        .files
        .iter()
        .filter(|f| f.path.starts_with("data/"))
        .count();
    let steps = planned_steps(env, backup, &manifest, current.as_deref(), data_files);
    em.emit(
        "rollback.planned",
        Level::Info,
        format!(
            "dry run: would roll {} back to {}; nothing changed",
            env.name,
            backup.display()
        ),
        json!({"backup": backup, "release": manifest.release, "current_release": current,
               "data_files": data_files, "steps": steps, "dry_run": true}),
    );
    Ok(RollbackReport {
        backup: backup.clone(),
        release: manifest.release,
        seconds_to_healthy: 0.0,
        smoke_passed: None,
    })
}

/// The steps of the crate docs, in words, for the dry run's plan.
fn planned_steps(
    env: &EnvConfig,
    backup: &Path,
    manifest: &Manifest,
    current: Option<&str>,
    data_files: usize,
) -> Vec<String> {
    vec![
        format!(
            "extract {} into {}",
            backup.display(),
            env.install_root.join(STAGE).display()
        ),
        "stop the service".to_string(),
        format!(
            "move {} into {}/<timestamp>/data",
            env.data_dir.display(),
            env.quarantine_dir().display()
        ),
        format!(
            "restore {data_files} data files into {}",
            env.data_dir.display()
        ),
        match &manifest.release {
            Some(id) => format!(
                "install release {id} into {} and switch current to it",
                env.releases_dir().join(id).display()
            ),
            None => "keep the current release (the backup holds none)".to_string(),
        },
        match (current, &manifest.release) {
            (Some(c), Some(id)) if c != id => {
                format!("move the replaced release {c} into the quarantine")
            }
            _ => "no release to move aside".to_string(),
        },
        format!(
            "start the service and require {} consecutive OK health checks",
            env.health.checks_required
        ),
        "run the post-rollback smoke tests".to_string(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// A quarantine or restore across filesystems cannot rename: the tree is
    /// copied (links kept as links) and the source removed. /dev/shm is a
    /// tmpfs on Linux, the build folder is not.
    #[test]
    fn move_path_across_filesystems_copies_then_removes() {
        let src_root = tempfile::tempdir_in("/dev/shm").expect("tempdir in /dev/shm");
        let dst_root =
            tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).expect("tempdir in the crate");
        let dev = |p: &Path| fs::metadata(p).expect("metadata").dev();
        assert_ne!(
            dev(src_root.path()),
            dev(dst_root.path()),
            "this test needs /dev/shm on another filesystem than the source tree"
        );
        let src = src_root.path().join("release");
        fs::create_dir_all(src.join("migrations")).expect("mkdir");
        fs::write(src.join("release.json"), b"{\"id\":\"r1\"}").expect("write");
        fs::write(
            src.join("migrations/0001_init.up.sql"),
            b"CREATE TABLE t(x);",
        )
        .expect("write");
        std::os::unix::fs::symlink("release.json", src.join("manifest")).expect("symlink");

        let dst = dst_root.path().join("quarantine/release");
        fsutil::move_path(&src, &dst).expect("move across filesystems");

        assert!(!src.exists(), "the source is removed");
        assert_eq!(
            fs::read(dst.join("migrations/0001_init.up.sql")).expect("read"),
            b"CREATE TABLE t(x);"
        );
        assert_eq!(
            fs::read_link(dst.join("manifest")).expect("still a link"),
            Path::new("release.json")
        );
        let leftovers: Vec<_> = fs::read_dir(dst_root.path().join("quarantine"))
            .expect("read_dir")
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("release")]);
    }
}
