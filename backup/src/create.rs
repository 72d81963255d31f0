//! Creating a backup, in named steps:
//!
//! 1. preflight: the lock is this environment's, retention is sane, no
//!    interrupted rollback is pending ([`check_call`], [`refuse_pending_rollback`]);
//! 2. plan: what goes in ([`crate::plan`]), under a fresh name;
//! 3. write: database snapshot, then every file streamed into a temporary zip
//!    ([`crate::zipwrite`]), then the sidecar, then the rename ([`Run::publish`]);
//! 4. verify: the finished zip is read back; a zip that fails is removed;
//! 5. record: alias, `backup.verified`, ledger, retention.
//!
//! A run that fails once begun (step 1's refusal onwards) is reported as
//! `backup.failed` by [`create_reporting_failure`], backup_dhash's entry.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use gates_core::config::EnvConfig;
use gates_core::exit::{exit_for, Exit};
use gates_core::fsutil;
use gates_core::lock::EnvLock;
use gates_core::project::Project;
use gates_core::{Emitter, Level};
use serde_json::json;

use crate::names::{sidecar_line, sidecar_of, timestamp_now};
use crate::plan::{plan, plan_at, report_plan, Plan, PlanItem};
use crate::snapshot::snapshot_db;
use crate::zipwrite::{write_zip, Written};
use crate::{BackupInfo, BackupOptions, Manifest, FORMAT};

/// Whether a failed run is announced with `backup.failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnFailure {
    /// Only the error is returned (deploy reports it as its own `deploy.failed`).
    Return,
    /// `backup.failed` too, so `backup_dhash | notify` alerts.
    Emit,
}

/// Creates, verifies and records a backup of `env`. The caller holds the
/// environment lock. Emits `backup.started`, `backup.created`, `backup.verified`
/// (or, with `dry_run`, `backup.planned` and nothing is written). A failure
/// is only returned: see [`create_reporting_failure`].
pub fn create(
    project: &Project,
    env: &EnvConfig,
    lock: &EnvLock,
    opts: &BackupOptions,
    em: &Emitter,
) -> anyhow::Result<BackupInfo> {
    create_with(project, env, lock, opts, em, OnFailure::Return)
}

/// [`create`], and when the run fails once begun (a refusal, an unreadable
/// data dir, a snapshot error, a full disk, a failed verification...), a
/// `backup.failed` event (level error) with `path` (the zip it was writing;
/// before it is named, the backup folder) and `reason`. A usage error
/// (exit 2) is not a failed backup: nothing was attempted.
pub fn create_reporting_failure(
    project: &Project,
    env: &EnvConfig,
    lock: &EnvLock,
    opts: &BackupOptions,
    em: &Emitter,
) -> anyhow::Result<BackupInfo> {
    create_with(project, env, lock, opts, em, OnFailure::Emit)
}

fn create_with(
    project: &Project,
    env: &EnvConfig,
    lock: &EnvLock,
    opts: &BackupOptions,
    em: &Emitter,
    on_failure: OnFailure,
) -> anyhow::Result<BackupInfo> {
    let keep = check_call(project, env, lock, opts)?;
    if opts.dry_run {
        let plan = plan(project, env)?;
        report_plan(&plan, em);
        return Ok(BackupInfo {
            path: plan.path.clone(),
            sha256: String::new(),
            bytes: plan.bytes(),
            files: plan.files(),
            release: plan.release.clone(),
            schema_version: None,
        });
    }
    let mut run = Run {
        project,
        env,
        em,
        started: Instant::now(),
        writing: env.backup_dir.clone(),
    };
    let result = run.execute(keep);
    if let Err(e) = &result {
        if on_failure == OnFailure::Emit && exit_for(e) != Exit::Usage {
            report_failed(env, &run.writing, e, em);
        }
    }
    result
}

/// Emits `backup.failed` for a run that began and failed.
fn report_failed(env: &EnvConfig, writing: &Path, e: &anyhow::Error, em: &Emitter) {
    let reason = format!("{e:#}");
    em.emit(
        "backup.failed",
        Level::Error,
        format!("backup of {} failed: {reason}", env.name),
        json!({"path": writing, "reason": reason}),
    );
}

/// The checks on the call itself: the lock held is this environment's, and
/// retention keeps at least one backup. Returns how many to keep.
fn check_call(
    project: &Project,
    env: &EnvConfig,
    lock: &EnvLock,
    opts: &BackupOptions,
) -> anyhow::Result<usize> {
    if lock.env() != env.name {
        bail!(
            "internal error: the lock held is for {:?}, not {:?}",
            lock.env(),
            env.name
        );
    }
    retention(project, env, opts)
}

/// How many backups retention keeps: `--keep` or `retention.backups`. 0 is a
/// usage/configuration error (exit 2), never quietly taken as 1.
fn retention(project: &Project, env: &EnvConfig, opts: &BackupOptions) -> anyhow::Result<usize> {
    match opts.keep {
        Some(0) => Err(gates_core::exit::usage_error(
            "--keep 0 would delete every backup: keep at least 1",
        )),
        Some(n) => Ok(n),
        None if env.retention.backups == 0 => Err(gates_core::exit::usage_error(format!(
            "{}: environments.{}.retention.backups is 0, which would delete every backup: keep at least 1",
            project.topology.file.display(),
            env.name
        ))),
        None => Ok(env.retention.backups),
    }
}

/// A half-restored environment is never backed up: its state is neither the
/// old one nor the new one.
fn refuse_pending_rollback(env: &EnvConfig) -> anyhow::Result<()> {
    let journal = gates_core::install::rollback_journal(env);
    if journal.exists() {
        bail!(
            "an interrupted rollback of {} is pending ({}): its state is half restored; rerun rollback_dhash --env {} first",
            env.name,
            journal.display(),
            env.name
        );
    }
    Ok(())
}

/// Another environment writing to the same folder breaks the seeds' "newest
/// backup" glob (`ls -1 backups/dhash_*.zip | sort -r | head -n1` picks
/// `dhash_staging_...` over `dhash_production_...`): say so.
fn warn_shared_folder(project: &Project, env: &EnvConfig, em: &Emitter) {
    let shared: Vec<&str> = project
        .topology
        .environments
        .values()
        .filter(|o| o.name != env.name && fsutil::same_path(&o.backup_dir, &env.backup_dir))
        .map(|o| o.name.as_str())
        .collect();
    if !shared.is_empty() {
        em.human(&format!(
            "warning: {} shares the backup folder {} with {}: the runbooks' `ls -1 {}/dhash_*.zip | sort -r | head -n1` may pick another environment's backup; give each environment its own backup_dir in {}",
            env.name,
            env.backup_dir.display(),
            shared.join(", "),
            env.backup_dir.strip_prefix(&project.root).unwrap_or(&env.backup_dir).display(),
            project.topology.file.display()
        ));
    }
}

/// The files one run writes: the final zip, and the temporary files that
/// become it (named so no seed glob matches them; see [`crate::store::cleanup_stale`]).
struct Target {
    zip: PathBuf,
    partial: PathBuf,
    snapshot: PathBuf,
    sidecar: PathBuf,
}

impl Target {
    fn for_plan(env: &EnvConfig, plan: &Plan) -> Target {
        let name = plan
            .path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let pid = std::process::id();
        Target {
            zip: plan.path.clone(),
            partial: env.backup_dir.join(format!(".{name}.{pid}.partial")),
            snapshot: env.backup_dir.join(format!(
                ".dhash_{}_{}.sqlite3.{pid}.partial",
                env.name, plan.timestamp
            )),
            sidecar: sidecar_of(&plan.path),
        }
    }

    /// What an interrupted run removes (the sidecar too: it is written before the rename).
    fn temporaries(&self) -> TempFiles {
        TempFiles(vec![
            self.partial.clone(),
            self.snapshot.clone(),
            PathBuf::from(format!("{}-journal", self.snapshot.display())),
            self.sidecar.clone(),
        ])
    }
}

/// Removes the temporary files of this run unless disarmed.
struct TempFiles(Vec<PathBuf>);

impl TempFiles {
    fn disarm(&mut self) {
        self.0.clear();
    }
}

impl Drop for TempFiles {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = fs::remove_file(p);
        }
    }
}

/// The manifest of a backup of `plan`, before the file list and time are known.
fn manifest_base(env: &EnvConfig, plan: &Plan, schema_version: Option<i64>) -> Manifest {
    Manifest {
        format: FORMAT,
        env: env.name.clone(),
        release: plan.release.clone(),
        schema_version,
        release_schema_version: plan.release_schema_version,
        created_at: String::new(),
        tool: crate::TOOL.to_string(),
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        host: gates_core::lock::hostname(),
        database: plan.database_entry().map(str::to_string),
        files: Vec::new(),
    }
}

/// The plan's items with the live database replaced by its snapshot (online
/// backup API, never a plain copy) at `snapshot`. Returns its schema version.
fn snapshot_database(plan: &Plan, snapshot: &Path) -> anyhow::Result<(Vec<PlanItem>, Option<i64>)> {
    let mut schema_version = None;
    let mut items = plan.items.clone();
    for item in items.iter_mut().filter(|i| i.database) {
        schema_version = snapshot_db(&item.source, snapshot)?;
        item.bytes = fs::metadata(snapshot)?.len();
        item.source = snapshot.to_path_buf();
    }
    Ok((items, schema_version))
}

/// One backup run (after [`check_call`]).
struct Run<'a> {
    project: &'a Project,
    env: &'a EnvConfig,
    em: &'a Emitter,
    started: Instant,
    /// What a failure reports as `path`: the backup folder, then the zip.
    writing: PathBuf,
}

impl Run<'_> {
    fn execute(&mut self, keep: usize) -> anyhow::Result<BackupInfo> {
        let env = self.env;
        refuse_pending_rollback(env)?;
        self.prepare_folder()?;
        let plan = self.fresh_plan()?;
        let target = Target::for_plan(env, &plan);
        self.writing = target.zip.clone();
        let mut temps = target.temporaries();
        self.em.emit(
            "backup.started",
            Level::Info,
            format!("backing up {} ({} files, {} bytes)", env.name, plan.files(), plan.bytes()),
            json!({"path": target.zip, "files": plan.files(), "bytes": plan.bytes(), "release": plan.release}),
        );

        let (items, schema_version) = snapshot_database(&plan, &target.snapshot)?;
        crate::crash_point("backup-snapshot");
        let written = write_zip(
            &target.partial,
            &items,
            manifest_base(env, &plan, schema_version),
        )?;
        let _ = fs::remove_file(&target.snapshot);
        crate::crash_point("backup-zip-written");
        self.publish(&target, &written.sha256)?;
        temps.disarm();
        crate::crash_point("backup-renamed");

        let info = made(&target, &written, &plan, schema_version);
        self.emit_created(&info);
        verify_or_remove(env, &target)?;
        self.record(&info, keep)?;
        Ok(info)
    }

    /// The backup folder exists, holds no leftovers of interrupted runs, and
    /// has adopted this environment's backups from the old shared folder.
    fn prepare_folder(&self) -> anyhow::Result<()> {
        let env = self.env;
        fs::create_dir_all(&env.backup_dir)
            .with_context(|| format!("creating the backup folder {}", env.backup_dir.display()))?;
        crate::store::cleanup_stale(env, self.em)?;
        crate::store::adopt_legacy(&self.project.root, env, self.em)?;
        warn_shared_folder(self.project, env, self.em);
        Ok(())
    }

    /// A plan under a name no file has yet (two runs within one millisecond
    /// get different names); what it leaves out is said (the data folder
    /// loudly, the rest with `--verbose`).
    fn fresh_plan(&self) -> anyhow::Result<Plan> {
        let mut plan = plan(self.project, self.env)?;
        while plan.path.exists() || sidecar_of(&plan.path).exists() {
            std::thread::sleep(Duration::from_millis(2));
            plan = plan_at(self.project, self.env, &timestamp_now())?;
        }
        for (p, why) in &plan.skipped {
            if *p == self.env.data_dir {
                self.em.human(&format!("warning: {}: {why}", p.display()));
            } else {
                self.em.debug(&format!("skipping {}: {why}", p.display()));
            }
        }
        Ok(plan)
    }

    /// Sidecar first (atomic), then the zip appears under its final name: a
    /// file matching dhash_*.zip always has its sidecar.
    fn publish(&self, target: &Target, sha256: &str) -> anyhow::Result<()> {
        fsutil::write_atomic(
            &target.sidecar,
            sidecar_line(&self.project.root, &target.zip, sha256).as_bytes(),
        )
        .context("writing the sidecar")?;
        crate::crash_point("backup-sidecar-written");
        fs::rename(&target.partial, &target.zip).with_context(|| {
            format!(
                "renaming {} to {}",
                target.partial.display(),
                target.zip.display()
            )
        })?;
        fsutil::fsync_dir(&self.env.backup_dir).context("syncing the backup folder")
    }

    fn emit_created(&self, info: &BackupInfo) {
        self.em.emit(
            "backup.created",
            Level::Info,
            format!(
                "created {} ({} bytes, {} files)",
                info.path.display(),
                info.bytes,
                info.files
            ),
            json!({"path": info.path, "sha256": info.sha256, "bytes": info.bytes, "files": info.files,
                   "release": info.release, "schema_version": info.schema_version}),
        );
    }

    /// The alias (its sidecar first) before the event that announces the
    /// backup, then the ledger, retention and the other aliases.
    fn record(&self, info: &BackupInfo, keep: usize) -> anyhow::Result<()> {
        let (env, em) = (self.env, self.em);
        let alias = match crate::store::make_alias_for(&info.path) {
            Ok(a) => a,
            Err(e) => {
                em.emit(
                    "backup.alias-failed",
                    Level::Warning,
                    format!("could not make the alias of {}: {e:#}", info.path.display()),
                    json!({"path": info.path}),
                );
                None
            }
        };
        let seconds = self.started.elapsed().as_secs_f64();
        em.emit(
            "backup.verified",
            Level::Info,
            format!("verified {} in {seconds:.1}s", info.path.display()),
            json!({"path": info.path, "sha256": info.sha256, "bytes": info.bytes, "files": info.files,
                   "release": info.release, "schema_version": info.schema_version, "alias": alias,
                   "seconds": seconds}),
        );
        if let Err(e) = env.ledger().append(
            "backup",
            json!({"env": env.name, "path": info.path, "sha256": info.sha256, "bytes": info.bytes,
                   "files": info.files, "release": info.release,
                   "schema_version": info.schema_version, "result": "verified"}),
        ) {
            em.emit(
                "ledger.failed",
                Level::Warning,
                format!("could not record the backup in the ledger: {e:#}"),
                json!({}),
            );
        }
        crate::store::prune(env, keep, &info.path, em)?;
        if let Err(e) = crate::store::sync_aliases(env, em) {
            em.emit(
                "backup.alias-failed",
                Level::Warning,
                format!("could not bring the aliases in line with the backups: {e:#}"),
                json!({}),
            );
        }
        Ok(())
    }
}

/// What the run made, as events and the caller see it.
fn made(
    target: &Target,
    written: &Written,
    plan: &Plan,
    schema_version: Option<i64>,
) -> BackupInfo {
    BackupInfo {
        path: target.zip.clone(),
        sha256: written.sha256.clone(),
        bytes: written.bytes,
        files: written.entries.len(),
        release: plan.release.clone(),
        schema_version,
    }
}

/// Re-reads the finished zip (sidecar, CRCs, every manifest hash): a zip that
/// fails verification never stays under a backup name.
fn verify_or_remove(env: &EnvConfig, target: &Target) -> anyhow::Result<()> {
    if let Err(e) = crate::verify::verify(&target.zip) {
        let _ = fs::remove_file(&target.zip);
        let _ = fs::remove_file(&target.sidecar);
        let _ = fsutil::fsync_dir(&env.backup_dir);
        return Err(e.context(format!(
            "the new backup {} failed verification and was removed",
            target.zip.display()
        )));
    }
    Ok(())
}
