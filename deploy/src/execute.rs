//! The real run: executes the preflight's [`Plan`] step by step, each step
//! journaled (`deploy.journal.json`) before it runs; on failure before the
//! switch it brings the schema back, after the switch it switches back.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use anyhow::{anyhow, Context};
use dhash_migrate::release::{self, ReleaseManifest};
use dhash_migrate::MigrationStore;
use gates_core::config::{EnvConfig, ServiceControl};
use gates_core::lock::EnvLock;
use gates_core::project::Project;
use gates_core::release::state as rs;
use gates_core::sample::Health;
use gates_core::{Emitter, Exit, Level, ToolError};
use serde::Serialize;
use serde_json::{json, Value};

use crate::plan::{self, Interrupted, Mode, Plan, Stage};
use crate::state::{self, Journal, ReleasesState, Step};
use crate::watch::supersede_watch;
use crate::{bundle, crash_point, DeployOptions, DeployReport, TOOL};

/// The environment restarts with its configured `restart` command (the
/// `commands` service kind), not stop-then-start.
pub fn has_restart_command(env: &EnvConfig) -> bool {
    matches!(
        &env.service,
        ServiceControl::Commands {
            restart: Some(_),
            ..
        }
    )
}

/// How a failed deploy brought the schema back (the `schema` field of
/// `deploy.failed`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "how", rename_all = "kebab-case")]
pub enum SchemaBack {
    /// The new release's down migrations ran.
    DownMigrations { reverted: Vec<i64>, version: i64 },
    /// They failed: the pre-deploy backup was restored (which also restarted
    /// the previous release and proved it healthy).
    RestoredBackup { backup: PathBuf, why: String },
}

impl SchemaBack {
    fn note(&self) -> String {
        match self {
            SchemaBack::DownMigrations { reverted, version } => {
                format!("reverted migrations {reverted:?} (schema back to {version})")
            }
            SchemaBack::RestoredBackup { backup, why } => format!(
                "restored the pre-deploy backup {} (down migrations failed: {why})",
                backup.display()
            ),
        }
    }
}

/// The deploy itself (not a dry run) of the bundle `b` (see
/// [`crate::resolve_bundle`]); the caller has run the configuration preflight.
pub fn deploy(
    project: &Project,
    env: &EnvConfig,
    opts: &DeployOptions,
    upstream_backup: Option<PathBuf>,
    b: &release::Bundle,
    em: &Emitter,
) -> anyhow::Result<DeployReport> {
    let facts = plan::check_bundle(b, upstream_backup.as_deref());
    if let Some(r) = facts.refusal {
        return Err(r.error);
    }
    if !facts.faults.is_empty() {
        em.human(&format!(
            "warning: bundle {} has faults enabled: {}",
            b.manifest.tag,
            facts.faults.join(", ")
        ));
    }
    let lock = env.lock(TOOL)?;
    let started = Instant::now();
    let started_at = gates_core::event::now_rfc3339();
    let preflight = || {
        plan::preflight(
            env,
            opts,
            b,
            facts.bytes,
            upstream_backup.clone(),
            Mode::Real,
        )
    };
    let mut plan = preflight();
    if let Some(r) = plan.take_refusal_before_recovery() {
        return Err(r.error);
    }
    if env.releases_dir().is_dir() || plan.recovery.is_some() || plan.interrupted.is_some() {
        fs::create_dir_all(env.releases_dir())
            .with_context(|| format!("creating {}", env.releases_dir().display()))?;
        cleanup_partials(env, em);
    }
    // A deploy killed while switching back from its failed release: finish
    // that switch-back first, never move on to the failed release.
    if let Some(rec) = plan.recovery.take() {
        finish_switch_back(project, env, &lock, rec.journal, plan.st.clone(), em)?;
        plan = preflight();
    }
    if let Some(r) = plan.take_refusal(Some(Stage::BeforeStart)) {
        return Err(r.error);
    }
    if let Some(w) = &plan.retrying {
        em.human(w);
    }
    fs::create_dir_all(env.releases_dir())
        .with_context(|| format!("creating {}", env.releases_dir().display()))?;
    if plan.interrupted.is_none() && plan.current.as_deref() == Some(plan.id.as_str()) {
        if let Some(report) =
            already_serving(env, &plan.st, &plan.id, &b.manifest.tag, &started_at, em)
        {
            return Ok(report);
        }
    }
    if let Some(i) = &plan.interrupted {
        announce_interrupted(env, i, &plan.id, em);
    }
    if let Some(note) = &plan.from_note {
        em.human(note);
    }
    let mut run = Run::new(project, env, em, &lock, b, plan, started, started_at);
    run.begin(b)?;
    if let Some(r) = run.plan_refusal.take() {
        return Err(run.fail_before_switch(r.error, false));
    }
    run.execute(opts, b)
}

/// A deploy killed mid-way that this run replaces or takes over: said once,
/// and recorded in the ledger.
fn announce_interrupted(env: &EnvConfig, i: &Interrupted, id: &str, em: &Emitter) {
    let j = &i.journal;
    em.emit(
        "deploy.interrupted",
        Level::Warning,
        format!(
            "a previous deploy of {} (pid {}, started {}) was interrupted at step {:?}; {}",
            j.release,
            j.pid,
            j.started_at,
            j.step.as_str(),
            if j.release == id { "finishing it" } else { "this deploy replaces it" }
        ),
        json!({"release": j.release, "from": j.from, "step": j.step, "pid": j.pid, "backup": j.backup,
               "migrations_applied": j.migrations_applied}),
    );
    ledger_interrupted(env, j);
}

fn ledger_interrupted(env: &EnvConfig, j: &Journal) {
    let _ = env.ledger().append(
        "deploy",
        json!({"release": j.release, "tag": j.tag, "from": j.from, "result": "interrupted", "step": j.step,
               "backup": j.backup, "migrations": j.migrations_applied, "pid": j.pid,
               "started_at": j.started_at}),
    );
}

/// Act once: the release asked for already serves, is recorded healthy and
/// answers health now (checked under the lock). A second deploy of it (a
/// rerun, a second operator) is a no-op that says so: no backup, no switch,
/// no restart. A current release that is unhealthy is deployed again (a repair).
fn already_serving(
    env: &EnvConfig,
    st: &ReleasesState,
    id: &str,
    tag: &str,
    started_at: &str,
    em: &Emitter,
) -> Option<DeployReport> {
    let healthy = st.releases.get(id).is_some_and(|r| r.state == rs::HEALTHY);
    if !healthy
        || gates_core::probe::probe_health(&env.health_url, env.health.timeout) != Health::Ok
    {
        return None;
    }
    let report = DeployReport {
        release: id.to_string(),
        tag: tag.to_string(),
        from: Some(id.to_string()),
        backup: None,
        migrations: Vec::new(),
        health_checked: true,
        unchanged: true,
        started_at: started_at.to_string(),
    };
    em.emit(
        "deploy.unchanged",
        Level::Info,
        format!(
            "{id} is already live on {} and healthy: nothing to change (no backup, switch or restart)",
            env.name
        ),
        report.fields(),
    );
    let _ = env.ledger().append(
        "deploy",
        json!({"release": id, "tag": tag, "from": id, "result": "unchanged", "started_at": started_at}),
    );
    Some(report)
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
    /// No backup given: take one.
    take_backup: bool,
    /// The preflight's refusal met after `deploy.started` (see [`Stage`]).
    plan_refusal: Option<plan::Refusal>,
    journal: Journal,
    st: ReleasesState,
    started: Instant,
}

impl<'a> Run<'a> {
    #[allow(clippy::too_many_arguments)] // the plan and the run's context, once
    fn new(
        project: &'a Project,
        env: &'a EnvConfig,
        em: &'a Emitter,
        lock: &'a EnvLock,
        b: &release::Bundle,
        mut plan: Plan,
        started: Instant,
        started_at: String,
    ) -> Run<'a> {
        let id = b.manifest.id.clone();
        let journal = Journal {
            release: id.clone(),
            tag: b.manifest.tag.clone(),
            from: plan.from.clone(),
            step: Step::Started,
            pid: std::process::id(),
            started_at: started_at.clone(),
            updated_at: started_at,
            backup: plan.backup.clone(),
            migrations_applied: plan.carried.clone(),
            pre_schema_version: plan.pre_schema,
        };
        Run {
            project,
            env,
            em,
            lock,
            dest: env.releases_dir().join(&id),
            manifest: b.manifest.clone(),
            from: plan.from.clone(),
            current: plan.current.clone(),
            backup: plan.backup.clone(),
            take_backup: plan.take_backup,
            plan_refusal: plan.take_refusal(None),
            journal,
            st: plan.st,
            started,
        }
    }

    fn id(&self) -> &str {
        &self.manifest.id
    }

    fn step(&mut self, step: Step) -> anyhow::Result<()> {
        self.em.debug(&format!("journal: step {}", step.as_str()));
        self.journal.step(self.env, step)
    }

    fn ledger(&self, result: &str, extra: Value) {
        let mut rec = json!({
            "release": self.id(), "tag": self.manifest.tag, "from": self.from, "result": result,
            "backup": self.backup, "schema_version": self.manifest.schema_version,
            "migrations": self.journal.migrations_applied,
            "started_at": self.journal.started_at,
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

    /// Journals the start and says so: `deploy.started`.
    fn begin(&mut self, b: &release::Bundle) -> anyhow::Result<()> {
        self.step(Step::Started)?;
        self.ledger("started", json!({"bundle": b.dir}));
        self.em.emit(
            "deploy.started",
            Level::Info,
            format!(
                "deploying {} to {} (from {})",
                self.id(),
                self.env.name,
                self.current.as_deref().unwrap_or("nothing deployed")
            ),
            json!({"release": self.id(), "tag": b.manifest.tag, "from": self.current, "switch_back_to": self.from,
                   "backup": self.backup, "bundle": b.dir, "schema_version": b.manifest.schema_version}),
        );
        crash_point(self.em, "deploy-started");
        Ok(())
    }

    /// The steps after `deploy.started`, in order.
    fn execute(
        mut self,
        opts: &DeployOptions,
        b: &release::Bundle,
    ) -> anyhow::Result<DeployReport> {
        self.rollback_point()?;
        self.install_step(b)?;
        self.migrate_step()?;
        self.switch_step()?;
        self.restart_step(opts)?;
        self.health_step(opts)?;
        Ok(self.finish(opts))
    }

    /// The rollback point: the backup given (verified), else a new one.
    fn rollback_point(&mut self) -> anyhow::Result<()> {
        if let Some(p) = self.backup.clone() {
            return match dhash_backup::verify(&p) {
                Ok(m) if m.env != self.env.name => {
                    let e = anyhow!(
                        "backup {} is of environment {:?}, not {:?}",
                        p.display(),
                        m.env,
                        self.env.name
                    );
                    Err(self.fail_before_switch(e, false))
                }
                Ok(_) => {
                    self.em.human(&format!("rollback point: {}", p.display()));
                    Ok(())
                }
                Err(e) => Err(self.fail_before_switch(
                    e.context(format!("the backup {} does not verify", p.display())),
                    false,
                )),
            };
        }
        if !self.take_backup {
            return Ok(());
        }
        self.step(Step::Backup)?;
        let bo = dhash_backup::BackupOptions {
            dry_run: false,
            keep: None,
        };
        match dhash_backup::create(self.project, self.env, self.lock, &bo, self.em) {
            Ok(info) => {
                self.backup = Some(info.path.clone());
                self.journal.backup = Some(info.path);
                Ok(())
            }
            Err(e) => Err(self.fail_before_switch(e.context("backup before deploy failed"), false)),
        }
    }

    fn install_step(&mut self, b: &release::Bundle) -> anyhow::Result<()> {
        self.step(Step::Install)?;
        let fresh = match self.install(&b.dir) {
            Ok(f) => f,
            Err(e) => {
                return Err(self.fail_before_switch(e.context("installing the release"), false))
            }
        };
        if self
            .st
            .releases
            .get(self.id())
            .is_none_or(|r| r.state != rs::FAILED)
            || fresh
        {
            self.mark(rs::INSTALLED, None);
        }
        let id = self.id().to_string();
        self.em.emit(
            "deploy.installed",
            Level::Info,
            if fresh {
                format!("installed {id} into {}", self.dest.display())
            } else {
                format!(
                    "{id} already installed and verified in {}",
                    self.dest.display()
                )
            },
            json!({"release": id, "path": self.dest, "copied": fresh}),
        );
        crash_point(self.em, "deploy-installed");
        Ok(())
    }

    /// Copies the bundle in (via `.<id>.partial` and a rename); `false` when
    /// it was installed and verified already.
    fn install(&mut self, bundle_dir: &Path) -> anyhow::Result<bool> {
        let id = self.id().to_string();
        if self.dest.is_dir() {
            match bundle::verify_release(&self.dest) {
                Ok(_) => return Ok(false),
                Err(e) => self.quarantine_installed(&e)?,
            }
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

    /// An installed copy that differs from its release.json is moved aside.
    fn quarantine_installed(&self, why: &anyhow::Error) -> anyhow::Result<()> {
        let q = self.env.quarantine_dir().join(format!(
            "{}-{}",
            self.id(),
            chrono::Utc::now().format("%Y%m%dT%H%M%S%3fZ")
        ));
        fs::create_dir_all(self.env.quarantine_dir())?;
        self.em.human(&format!(
            "installed {} differs from its release.json ({why:#}); moving it to {}",
            self.id(),
            q.display()
        ));
        fs::rename(&self.dest, &q)
            .with_context(|| format!("moving {} to {}", self.dest.display(), q.display()))
    }

    /// The new release's pending migrations (its installed copy).
    fn migrate_step(&mut self) -> anyhow::Result<()> {
        let migrations_dir = self.dest.join("migrations");
        let pending = match dhash_migrate::pending(&self.env.database, &migrations_dir) {
            Ok(p) => p,
            Err(e) => return Err(self.fail_before_switch(e, false)),
        };
        if pending.is_empty() {
            return Ok(());
        }
        let labels: Vec<String> = pending.iter().map(|m| m.label()).collect();
        self.em
            .human(&format!("pending migrations: {}", labels.join(", ")));
        self.step(Step::Migrate)?;
        let result =
            dhash_migrate::forward(self.env, &migrations_dir, None, false, self.lock, self.em);
        // Record what is applied now (all, or on failure those before it).
        let applied: Vec<i64> = match dhash_migrate::SqliteStore::open_read_only(&self.env.database)
        {
            Ok(mut s) => s
                .applied()
                .map(|r| r.into_iter().map(|a| a.version).collect())
                .unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        self.journal.migrations_applied.extend(
            pending
                .iter()
                .map(|m| m.version)
                .filter(|v| applied.contains(v)),
        );
        if let Err(e) = result {
            return Err(self.fail_before_switch(e.context("applying migrations"), true));
        }
        self.step(Step::Migrated)?;
        crash_point(self.em, "deploy-migrated");
        Ok(())
    }

    fn switch_step(&mut self) -> anyhow::Result<()> {
        self.step(Step::Switch)?;
        let id = self.id().to_string();
        let link = self.env.current_link();
        if let Err(e) = gates_core::fsutil::switch_symlink(&Path::new("releases").join(&id), &link)
        {
            return Err(self.fail_before_switch(e, false));
        }
        self.em.emit(
            "deploy.switched",
            Level::Info,
            format!("switched {} to {id}", link.display()),
            json!({"release": id, "from": self.current}),
        );
        supersede_watch(self.env, &id, self.em);
        self.step(Step::Switched)?;
        crash_point(self.em, "deploy-switched");
        Ok(())
    }

    /// Restarts onto the new release: the environment's `restart` command
    /// when it has one, else stop then start.
    fn restart_step(&mut self, opts: &DeployOptions) -> anyhow::Result<()> {
        self.step(Step::Restart)?;
        let (env, em) = (self.env, self.em);
        let started = if has_restart_command(env) {
            gates_core::service::restart(env, em)
        } else {
            if let Err(e) = gates_core::service::stop(env, em) {
                return Err(self.fail_after_switch(e.context("stopping the service")));
            }
            crash_point(em, "deploy-stopped");
            gates_core::service::start(env, em)
        };
        if let Err(e) = started {
            let running = gates_core::service::status(env).running;
            if !(opts.skip_health_check && running) {
                return Err(self.fail_after_switch(e.context("starting the new release")));
            }
            em.human(&format!("warning: the service runs but did not report healthy ({e:#}); --skip-health-check: going on"));
        }
        crash_point(em, "deploy-restarted");
        Ok(())
    }

    fn health_step(&mut self, opts: &DeployOptions) -> anyhow::Result<()> {
        if opts.skip_health_check {
            self.em.human(
                "--skip-health-check: not waiting for health; the release is recorded as unverified",
            );
        } else {
            self.step(Step::Health)?;
            if let Err(e) = gates_core::probe::wait_healthy(self.env, &self.env.health, self.em) {
                return Err(self.fail_after_switch(e));
            }
        }
        crash_point(self.em, "deploy-healthy");
        Ok(())
    }

    /// Live: recorded, announced (`deploy.healthy` carries the report),
    /// old releases pruned, the journal removed.
    fn finish(mut self, opts: &DeployOptions) -> DeployReport {
        let checked = !opts.skip_health_check;
        self.mark(if checked { rs::HEALTHY } else { rs::UNVERIFIED }, None);
        self.ledger("healthy", json!({"health_checked": checked}));
        let report = DeployReport {
            release: self.id().to_string(),
            tag: self.manifest.tag.clone(),
            from: self.current.clone(),
            backup: self.backup.clone(),
            migrations: self.journal.migrations_applied.clone(),
            health_checked: checked,
            unchanged: false,
            started_at: self.journal.started_at.clone(),
        };
        let mut fields = report.fields();
        if let Value::Object(m) = &mut fields {
            m.insert("schema_version".into(), json!(self.manifest.schema_version));
            m.insert(
                "seconds".into(),
                json!((self.started.elapsed().as_secs_f64() * 10.0).round() / 10.0),
            );
        }
        self.em.emit(
            "deploy.healthy",
            Level::Info,
            format!(
                "{} is live on {}{}",
                report.release,
                self.env.name,
                if checked {
                    " and healthy"
                } else {
                    " (health check skipped)"
                }
            ),
            fields,
        );
        self.prune();
        if let Err(e) = Journal::remove(self.env) {
            self.em.human(&format!("warning: {e:#}"));
        }
        report
    }

    /// A failure before `current` was switched: the old release still serves.
    /// Brings the schema back if migrations ran, records, and returns the error.
    fn fail_before_switch(&mut self, err: anyhow::Error, mark_failed: bool) -> anyhow::Error {
        let reason = format!("{err:#}");
        if mark_failed {
            self.mark(rs::FAILED, Some(reason.clone()));
        }
        let (schema, exit, note) = match self.revert_schema() {
            Ok(Some(s)) => (
                Some(s.clone()),
                Exit::Failed,
                format!("nothing was switched; {}", s.note()),
            ),
            Ok(None) => (None, Exit::Failed, "nothing was switched".to_string()),
            Err(e) => (
                None,
                Exit::RollbackFailed,
                format!("nothing was switched; the schema could NOT be brought back: {e:#}"),
            ),
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
                   "stage": self.journal.step, "switched_back": false, "note": note, "schema": schema}),
        );
        if exit == Exit::Failed {
            let _ = Journal::remove(self.env);
        } else {
            let _ = self.step(Step::RecoveryFailed);
        }
        ToolError::new(
            exit,
            err.context(format!("deploy of {} failed; {note}", self.id())),
        )
        .into()
    }

    /// Reverts what this deploy (and an interrupted one it took over) applied.
    /// `Ok(Some(how))` when something was done.
    fn revert_schema(&mut self) -> anyhow::Result<Option<SchemaBack>> {
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
        let e = match dhash_migrate::backward(self.env, &dir, target, false, self.lock, self.em) {
            Ok(v) => {
                return Ok(Some(SchemaBack::DownMigrations {
                    reverted: v,
                    version: target,
                }))
            }
            Err(e) => e,
        };
        let Some(b) = self.backup.clone() else {
            return Err(e.context("no backup to restore instead (deploy with --backup-first)"));
        };
        self.em.human(&format!(
            "down migrations failed ({e:#}); restoring the pre-deploy backup {}",
            b.display()
        ));
        restore_backup(self.project, self.env, self.lock, &b, self.id(), self.em)?;
        Ok(Some(SchemaBack::RestoredBackup {
            backup: b,
            why: format!("{e:#}"),
        }))
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
        self.mark(rs::FAILED, Some(reason.clone()));
        let _ = self.step(Step::SwitchBack);
        crash_point(self.em, "deploy-unhealthy");
        let outcome = self.switch_back();
        match self.report_switch_back(&reason, outcome, false) {
            Ok(note) => ToolError::new(
                Exit::Failed,
                err.context(format!("deploy of {} failed; {note}", self.id())),
            )
            .into(),
            Err(what) => ToolError::new(
                Exit::RollbackFailed,
                anyhow!("deploy of {} failed ({reason}) and switching back failed: {what}; restore with rollback_dhash", self.id()),
            )
            .into(),
        }
    }

    /// Records and announces (`deploy.failed`) how a switch-back ended:
    /// Ok(the note) when it succeeded, Err(what failed) otherwise.
    /// `finishing`: the switch-back of an interrupted deploy.
    fn report_switch_back(
        &mut self,
        reason: &str,
        outcome: anyhow::Result<(String, Option<SchemaBack>)>,
        finishing: bool,
    ) -> Result<String, String> {
        let (id, from, backup) = (
            self.id().to_string(),
            self.from.clone(),
            self.backup.clone(),
        );
        match outcome {
            Ok((note, schema)) => {
                let note = if finishing {
                    format!("finished the interrupted switch-back: {note}")
                } else {
                    note
                };
                self.ledger(
                    "failed",
                    json!({"reason": reason, "switched_back_to": from, "note": note}),
                );
                let msg = if finishing {
                    format!("deploy of {id} failed ({reason}); {note}")
                } else {
                    format!("deploy of {id} failed: {reason}; {note}")
                };
                let mut fields = json!({"release": id, "from": from, "backup": backup, "reason": reason,
                       "switched_back": from.is_some(), "switched_back_to": from, "note": note,
                       "schema": schema});
                if finishing {
                    fields["finished_interrupted"] = json!(true);
                }
                self.em.emit("deploy.failed", Level::Error, msg, fields);
                let _ = Journal::remove(self.env);
                Ok(note)
            }
            Err(e) => {
                let what = format!("{e:#}");
                self.ledger("failed", json!({"reason": reason, "recovery_error": what}));
                let msg = if finishing {
                    format!("the interrupted switch-back from {id} FAILED again: {what}")
                } else {
                    format!("deploy of {id} failed ({reason}) and switching back FAILED: {what}")
                };
                let mut fields = json!({"release": id, "from": from, "backup": backup, "reason": reason,
                       "switched_back": false, "recovery_error": what});
                if finishing {
                    fields["finished_interrupted"] = json!(true);
                }
                self.em.emit("deploy.failed", Level::Critical, msg, fields);
                let _ = self.step(Step::RecoveryFailed);
                Err(what)
            }
        }
    }

    /// Stops the failed release, points `current` back, brings the schema
    /// back, restarts and verifies health: the note, and how the schema came back.
    fn switch_back(&mut self) -> anyhow::Result<(String, Option<SchemaBack>)> {
        if let Err(e) = gates_core::service::stop(self.env, self.em) {
            self.em
                .human(&format!("warning: stopping the failed release: {e:#}"));
        }
        let Some(prev) = self.from.clone() else {
            return self.no_switch_back_target().map(|n| (n, None));
        };
        let link = self.env.current_link();
        gates_core::fsutil::switch_symlink(&Path::new("releases").join(&prev), &link)?;
        self.em.emit(
            "deploy.switched",
            Level::Warning,
            format!("switched {} back to {prev}", link.display()),
            json!({"release": prev, "from": self.id(), "switch_back": true}),
        );
        supersede_watch(self.env, &prev, self.em);
        crash_point(self.em, "deploy-switched-back");
        let schema = self.revert_schema()?;
        // A restored backup restarted the previous release and proved it healthy.
        if !matches!(schema, Some(SchemaBack::RestoredBackup { .. })) {
            gates_core::service::start(self.env, self.em)
                .context("starting the previous release")?;
            gates_core::probe::wait_healthy(self.env, &self.env.health, self.em)
                .context("the previous release did not become healthy")?;
        }
        let note = match &schema {
            Some(s) => format!("switched back to {prev} (healthy); {}", s.note()),
            None => format!("switched back to {prev} (healthy)"),
        };
        Ok((note, schema))
    }

    /// Nothing to switch back to. On a first deploy, leave no `current`
    /// behind, so nothing starts the failed release by accident.
    fn no_switch_back_target(&self) -> anyhow::Result<String> {
        if let Some(c) = &self.current {
            anyhow::bail!(
                "no other release to switch back to ({c} was current already and no other healthy release is installed); the service is stopped"
            );
        }
        let link = self.env.current_link();
        if fs::symlink_metadata(&link).is_ok() {
            fs::remove_file(&link).with_context(|| format!("removing {}", link.display()))?;
            let _ = gates_core::fsutil::fsync_dir(&self.env.install_root);
        }
        Ok(format!(
            "no previous release to switch back to: removed {}; the service is stopped",
            link.display()
        ))
    }

    /// Keeps the newest `retention.releases` installed releases, never the
    /// current, last known-good or switch-back one.
    fn prune(&mut self) {
        let keep = self.env.retention.releases.max(1);
        let dir = self.env.releases_dir();
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
        for (i, id) in self.newest_first().iter().enumerate() {
            if i < keep || protect.contains(id) {
                continue;
            }
            let tmp = dir.join(format!(".{id}.removing.partial"));
            match fs::rename(dir.join(id), &tmp).and_then(|_| fs::remove_dir_all(&tmp)) {
                Ok(()) => {
                    self.st.releases.remove(id);
                    removed.push(id.clone());
                }
                Err(e) => self
                    .em
                    .human(&format!("warning: cannot remove old release {id}: {e}")),
            }
        }
        if removed.is_empty() {
            return;
        }
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

    /// Installed releases, newest install first.
    fn newest_first(&self) -> Vec<String> {
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
        all.into_iter().map(|(_, id)| id).collect()
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
    st: ReleasesState,
    em: &Emitter,
) -> anyhow::Result<()> {
    let target = plan::switch_back_target(env, &st, j.from.clone(), &j.release);
    em.emit(
        "deploy.interrupted",
        Level::Warning,
        format!(
            "a previous deploy of {} (pid {}, started {}) was killed at step {:?} while switching back from it; finishing the switch-back to {}",
            j.release,
            j.pid,
            j.started_at,
            j.step.as_str(),
            target.as_deref().unwrap_or("nothing (no previous release)")
        ),
        json!({"release": j.release, "from": j.from, "step": j.step, "pid": j.pid, "backup": j.backup,
               "migrations_applied": j.migrations_applied, "switch_back_to": target}),
    );
    ledger_interrupted(env, &j);
    let mut run = recovery_run(project, env, lock, &j, target, st, em);
    let reason = run
        .st
        .releases
        .get(&j.release)
        .and_then(|r| r.reason.clone())
        .unwrap_or_else(|| "its deploy was interrupted while switching back".to_string());
    if !run.st.is_failed(&j.release) {
        run.mark(rs::FAILED, Some(reason.clone()));
    }
    run.step(Step::SwitchBack)?;
    let outcome = run.switch_back();
    match run.report_switch_back(&reason, outcome, true) {
        Ok(_) => Ok(()),
        Err(what) => Err(ToolError::new(
            Exit::RollbackFailed,
            anyhow!(
                "a deploy of {} was killed while switching back from it, and finishing that switch-back failed: {what}; restore with rollback_dhash",
                j.release
            ),
        )
        .into()),
    }
}

/// The [`Run`] that finishes an interrupted deploy's switch-back to `target`.
fn recovery_run<'a>(
    project: &'a Project,
    env: &'a EnvConfig,
    lock: &'a EnvLock,
    j: &Journal,
    target: Option<String>,
    st: ReleasesState,
    em: &'a Emitter,
) -> Run<'a> {
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
    Run {
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
        take_backup: false,
        plan_refusal: None,
        journal,
        st,
        started: Instant::now(),
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
    let report = dhash_rollback::rollback(project, env, lock, &opts, em)?;
    // The restore serves, but its smoke tests failed: not a clean restore.
    if report.smoke_passed == Some(false) {
        anyhow::bail!(
            "restored {} but its post-rollback smoke tests failed",
            backup.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_deploys_own_temp_names_are_cleaned() {
        assert!(is_deploy_temp(true, ".r1.partial"));
        assert!(is_deploy_temp(false, ".current.123.partial"));
        assert!(!is_deploy_temp(false, ".rollback.partial"));
        assert!(!is_deploy_temp(true, "r1"));
    }

    #[test]
    fn a_restored_backup_is_told_by_its_kind_not_its_prose() {
        let s = SchemaBack::RestoredBackup {
            backup: PathBuf::from("/b.tar.gz"),
            why: "x".into(),
        };
        let v = serde_json::to_value(&s).expect("json");
        assert_eq!(v["how"], "restored-backup");
        assert!(s.note().contains("/b.tar.gz"));
    }
}
