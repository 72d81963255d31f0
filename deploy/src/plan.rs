//! The preflight: every decision a deploy makes before it changes anything,
//! made once, from what is on disk. It returns a [`Plan`] with its checks and
//! its first refusal. The dry run prints that plan; the real run refuses with
//! the same error, or executes the plan (see `execute`). Nothing here writes.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use dhash_migrate::release::Bundle;
use dhash_migrate::Migration;
use gates_core::config::EnvConfig;
use gates_core::exit::exit_for;
use gates_core::lock::{EnvLock, LockBusy};
use gates_core::sample::Health;
use gates_core::{Exit, ToolError};
use serde::Serialize;

use crate::bundle;
use crate::state::{self, Journal, ReleasesState};
use crate::{DeployOptions, TOOL};

/// Room kept free on the install root's file system beyond the bundle's size.
pub const DISK_MARGIN: u64 = 16 * 1024 * 1024;

/// What a preflight is for: the dry run also tries the lock and probes the
/// service; the real run holds the lock already and probes later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    DryRun,
    Real,
}

/// The checks, in the order the dry run prints them (their names are the
/// `deploy.planned` event's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckName {
    Bundle,
    Backup,
    Config,
    ServiceConfig,
    Journal,
    Lock,
    Disk,
    Health,
    ReleaseState,
    Migrations,
}

impl CheckName {
    /// The name as printed and serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckName::Bundle => "bundle",
            CheckName::Backup => "backup",
            CheckName::Config => "config",
            CheckName::ServiceConfig => "service-config",
            CheckName::Journal => "journal",
            CheckName::Lock => "lock",
            CheckName::Disk => "disk",
            CheckName::Health => "health",
            CheckName::ReleaseState => "release-state",
            CheckName::Migrations => "migrations",
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Check {
    pub name: CheckName,
    pub ok: bool,
    pub detail: String,
}

/// Why the deploy does not go ahead: the error both runs return.
#[derive(Debug)]
pub struct Refusal {
    pub check: CheckName,
    pub error: anyhow::Error,
}

/// When the real run meets a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Before anything is written: a plain error, no event.
    BeforeStart,
    /// After `deploy.started` (journaled), before the switch: `deploy.failed`.
    BeforeSwitch,
}

impl Refusal {
    fn new(check: CheckName, exit: Exit, msg: String) -> Refusal {
        Refusal {
            check,
            error: ToolError::new(exit, anyhow!(msg)).into(),
        }
    }

    pub fn stage(&self) -> Stage {
        match self.check {
            CheckName::Disk | CheckName::Migrations => Stage::BeforeSwitch,
            _ => Stage::BeforeStart,
        }
    }

    pub fn msg(&self) -> String {
        format!("{:#}", self.error)
    }

    pub fn exit(&self) -> Exit {
        exit_for(&self.error)
    }
}

/// What the install step will do with `releases/<id>/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Install {
    Copy,
    /// Already installed and verified: skip the copy.
    Verified,
    /// Installed but different (why): quarantine it, then copy.
    Replace(String),
}

/// A deploy killed while switching back from its failed release: the real
/// run finishes that switch-back (to `to`) before anything else.
#[derive(Debug, Clone)]
pub struct Recovery {
    pub journal: Journal,
    pub to: Option<String>,
}

/// A deploy killed mid-way (not switching back).
#[derive(Debug, Clone)]
pub struct Interrupted {
    pub journal: Journal,
    /// It was deploying from (or to) what serves now: this run carries on its
    /// switch-back target, migrations and backup.
    pub takes_over: bool,
}

/// The facts of a verified bundle (computed once: hashing is not free).
#[derive(Debug)]
pub struct BundleFacts {
    pub bytes: u64,
    pub faults: Vec<String>,
    pub checks: Vec<Check>,
    pub refusal: Option<Refusal>,
}

/// Everything the deploy decided before it changes anything.
#[derive(Debug)]
pub struct Plan {
    pub id: String,
    pub current: Option<String>,
    /// The switch-back target.
    pub from: Option<String>,
    /// When `from` is not what served (why, for humans).
    pub from_note: Option<String>,
    /// The rollback point given (stdin) or carried over from an interrupted deploy.
    pub backup: Option<PathBuf>,
    /// No backup given: the deploy takes its own.
    pub take_backup: bool,
    pub carried: Vec<i64>,
    pub pre_schema: Option<i64>,
    pub recovery: Option<Recovery>,
    pub interrupted: Option<Interrupted>,
    pub pending: Vec<Migration>,
    pub install: Install,
    pub st: ReleasesState,
    /// `--retry-failed` on a release recorded bad (the warning to give).
    pub retrying: Option<String>,
    pub checks: Vec<Check>,
    /// Every refusal, in check order; see [`Plan::take_refusal`].
    pub refusals: Vec<Refusal>,
}

impl Plan {
    /// The refusal the real run meets first (all `BeforeStart` ones come
    /// before any `BeforeSwitch` one), removed from the plan; `only`: of that
    /// stage only.
    pub fn take_refusal(&mut self, only: Option<Stage>) -> Option<Refusal> {
        let at = |stage| self.refusals.iter().position(|r| r.stage() == stage);
        let i = match only {
            Some(stage) => at(stage),
            None => at(Stage::BeforeStart).or_else(|| at(Stage::BeforeSwitch)),
        }?;
        Some(self.refusals.remove(i))
    }

    /// What the real run refuses before it finishes a pending switch-back:
    /// any `BeforeStart` refusal except the release state (that switch-back
    /// is what marks its release failed; the run re-plans after it).
    pub fn take_refusal_before_recovery(&mut self) -> Option<Refusal> {
        let recovering = self.recovery.is_some();
        let i = self.refusals.iter().position(|r| {
            r.stage() == Stage::BeforeStart && !(recovering && r.check == CheckName::ReleaseState)
        })?;
        Some(self.refusals.remove(i))
    }

    fn check(&mut self, name: CheckName, r: Result<String, Refusal>) {
        match r {
            Ok(detail) => self.checks.push(Check {
                name,
                ok: true,
                detail,
            }),
            Err(refusal) => {
                self.checks.push(Check {
                    name,
                    ok: false,
                    detail: refusal.msg(),
                });
                self.refusals.push(refusal);
            }
        }
    }
}

impl BundleFacts {
    fn check(&mut self, name: CheckName, r: Result<String, Refusal>) {
        let (ok, detail) = match r {
            Ok(detail) => (true, detail),
            Err(e) => {
                let msg = e.msg();
                self.refusal.get_or_insert(e);
                (false, msg)
            }
        };
        self.checks.push(Check { name, ok, detail });
    }
}

/// Verifies the bundle against its release.json, its service config, and the
/// backup announced on stdin.
pub fn check_bundle(b: &Bundle, upstream: Option<&Path>) -> BundleFacts {
    let mut facts = BundleFacts {
        bytes: 0,
        faults: Vec::new(),
        checks: Vec::new(),
        refusal: None,
    };
    let verified = bundle::verify_release(&b.dir).map_err(|e| Refusal {
        check: CheckName::Bundle,
        error: ToolError::new(Exit::Failed, e.context("refusing to deploy a bundle that does not match its release.json; nothing was changed")).into(),
    });
    if let Ok(v) = &verified {
        facts.bytes = v.bytes;
    }
    let verified = verified.map(|v| {
        format!(
            "{} files ({}) match release.json",
            v.files,
            human_bytes(v.bytes)
        )
    });
    facts.check(CheckName::Bundle, verified);
    let faults = bundle::active_faults(&b.dir).map_err(|e| Refusal {
        check: CheckName::ServiceConfig,
        error: ToolError::new(Exit::Failed, e).into(),
    });
    let faults = faults.map(|f| {
        let detail = if f.is_empty() {
            "config.json valid, no faults enabled".to_string()
        } else {
            format!(
                "config.json valid; WARNING faults enabled: {}",
                f.join(", ")
            )
        };
        facts.faults = f;
        detail
    });
    facts.check(CheckName::ServiceConfig, faults);
    if let Some(p) = upstream {
        facts.check(CheckName::Backup, check_upstream(p));
    }
    facts
}

fn check_upstream(p: &Path) -> Result<String, Refusal> {
    if p.is_file() {
        return Ok(format!(
            "the rollback point announced on stdin: {}",
            p.display()
        ));
    }
    Err(Refusal::new(
        CheckName::Backup,
        Exit::Failed,
        format!(
            "the backup announced on stdin ({}) does not exist; nothing was changed",
            p.display()
        ),
    ))
}

/// The state-dependent preflight (see the module doc). `Mode::Real` expects
/// the caller to hold the environment lock.
pub fn preflight(
    env: &EnvConfig,
    opts: &DeployOptions,
    b: &Bundle,
    bundle_bytes: u64,
    upstream: Option<PathBuf>,
    mode: Mode,
) -> Plan {
    let id = b.manifest.id.clone();
    let mut plan = Plan {
        id: id.clone(),
        current: state::current_id(env),
        from: None,
        from_note: None,
        backup: upstream,
        take_backup: false,
        carried: Vec::new(),
        pre_schema: None,
        recovery: None,
        interrupted: None,
        pending: Vec::new(),
        install: Install::Copy,
        st: ReleasesState::load(env).unwrap_or_default(),
        retrying: None,
        checks: Vec::new(),
        refusals: Vec::new(),
    };
    let journal = read_journals(env, &mut plan);
    if mode == Mode::DryRun {
        let (detail, err) = lock_check(env);
        plan.check(
            CheckName::Lock,
            err.map_or(Ok(detail), |error| {
                Err(Refusal {
                    check: CheckName::Lock,
                    error,
                })
            }),
        );
    }
    if let Some(j) = journal {
        plan_interrupted(env, &mut plan, j);
    }
    plan.pre_schema = dhash_migrate::current_version(&env.database).unwrap_or(None);
    if let Some(i) = plan.interrupted.as_ref().filter(|i| i.takes_over) {
        plan.carried = i.journal.migrations_applied.clone();
        if !plan.carried.is_empty() {
            plan.pre_schema = i.journal.pre_schema_version;
        }
    }
    plan_target(env, &mut plan);
    plan.take_backup = plan.backup.is_none() && will_backup(opts, env, plan.current.as_deref());
    plan_disk(env, &mut plan, bundle_bytes);
    if mode == Mode::DryRun {
        let health = gates_core::probe::probe_health(&env.health_url, env.monitor.probe_timeout);
        plan.checks.push(health_check(env, &health));
    }
    plan_release_state(env, opts, &mut plan);
    plan_migrations(env, opts, b, &mut plan);
    plan
}

/// The journals a killed run left: a rollback's is refused (it must finish
/// first); a deploy's is returned (finished or taken over).
fn read_journals(env: &EnvConfig, plan: &mut Plan) -> Option<Journal> {
    let rollback = match dhash_rollback::pending(env) {
        Ok(None) => Ok(()),
        Ok(Some(j)) => Err(Refusal::new(
            CheckName::Journal,
            Exit::Failed,
            format!(
                "a rollback of {} to {} (pid {}, started {}) was interrupted at step {:?}; finish it first with `rollback_dhash --env {}` (nothing was changed)",
                env.name,
                j.backup.display(),
                j.pid,
                j.started_at,
                j.step,
                env.name
            ),
        )),
        Err(error) => Err(Refusal {
            check: CheckName::Journal,
            error,
        }),
    };
    let deploy = rollback.and_then(|_| {
        Journal::load(env).map_err(|error| Refusal {
            check: CheckName::Journal,
            error,
        })
    });
    let (detail, journal) = match deploy {
        Err(e) => {
            plan.check(CheckName::Journal, Err(e));
            return None;
        }
        Ok(None) => ("no interrupted deploy or rollback".to_string(), None),
        Ok(Some(j)) => (journal_detail(env, &plan.st, &j), Some(j)),
    };
    plan.check(CheckName::Journal, Ok(detail));
    journal
}

fn journal_detail(env: &EnvConfig, st: &ReleasesState, j: &Journal) -> String {
    if j.step.is_switching_back() || st.is_failed(&j.release) {
        format!(
            "a previous deploy of {} (pid {}) was killed switching back from it; the real run first finishes that switch-back to {}",
            j.release,
            j.pid,
            switch_back_target(env, st, j.from.clone(), &j.release)
                .as_deref()
                .unwrap_or("nothing (no previous release)")
        )
    } else {
        format!(
            "a previous deploy of {} (pid {}) stopped at step {:?}; the real run takes over from it",
            j.release,
            j.pid,
            j.step.as_str()
        )
    }
}

/// A deploy journal: finish its switch-back (then what serves is its
/// target, and its release is failed), or take it over.
fn plan_interrupted(env: &EnvConfig, plan: &mut Plan, j: Journal) {
    if j.step.is_switching_back() || plan.st.is_failed(&j.release) {
        let to = switch_back_target(env, &plan.st, j.from.clone(), &j.release);
        plan.current = to.clone();
        plan.recovery = Some(Recovery { journal: j, to });
        return;
    }
    let takes_over = plan.current.as_deref() == Some(j.release.as_str()) || plan.current == j.from;
    if takes_over && plan.backup.is_none() {
        plan.backup = j.backup.clone();
    }
    plan.interrupted = Some(Interrupted {
        journal: j,
        takes_over,
    });
}

/// The switch-back target: what served (or the interrupted deploy's), unless
/// it is unusable.
fn plan_target(env: &EnvConfig, plan: &mut Plan) {
    let candidate = match plan.interrupted.as_ref().filter(|i| i.takes_over) {
        Some(i) => i.journal.from.clone(),
        None => plan.current.clone(),
    };
    let target = switch_back_target(env, &plan.st, candidate.clone(), &plan.id);
    if let Some(f) = candidate.filter(|f| target.as_ref() != Some(f)) {
        plan.from_note = Some(format!(
            "{f} is {} and will not be a switch-back target; using {}",
            if f == plan.id {
                "the release being deployed"
            } else if plan.st.is_failed(&f) {
                "marked failed"
            } else {
                "not installed"
            },
            target.as_deref().unwrap_or("none")
        ));
    }
    plan.from = target;
}

fn plan_disk(env: &EnvConfig, plan: &mut Plan, bundle_bytes: u64) {
    let dest = env.releases_dir().join(&plan.id);
    plan.install = if !dest.is_dir() {
        Install::Copy
    } else {
        match bundle::verify_release(&dest) {
            Ok(_) => Install::Verified,
            Err(e) => Install::Replace(format!("{e:#}")),
        }
    };
    let needed = if plan.install == Install::Verified {
        0
    } else {
        bundle_bytes
    };
    let r = match free_bytes(&env.install_root) {
        Ok(free) if free >= needed + DISK_MARGIN => Ok(format!(
            "{} free, the release needs {}",
            human_bytes(free),
            human_bytes(needed)
        )),
        Ok(free) => Err(Refusal::new(
            CheckName::Disk,
            Exit::Failed,
            format!(
                "not enough disk space in {}: {} free, the release needs {} (+{} margin)",
                env.install_root.display(),
                human_bytes(free),
                human_bytes(needed),
                human_bytes(DISK_MARGIN)
            ),
        )),
        // Not a refusal: the copy itself will tell.
        Err(e) => {
            plan.checks.push(Check {
                name: CheckName::Disk,
                ok: false,
                detail: format!("cannot tell: {e:#}"),
            });
            return;
        }
    };
    plan.check(CheckName::Disk, r);
}

/// Not a refusal: a service that is down is started by the deploy.
fn health_check(env: &EnvConfig, health: &Health) -> Check {
    Check {
        name: CheckName::Health,
        ok: *health == Health::Ok,
        detail: match health {
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
    }
}

/// A release recorded failed, rolled back or quarantined is refused unless
/// `--retry-failed`. A pending switch-back marks its release failed first.
fn plan_release_state(env: &EnvConfig, opts: &DeployOptions, plan: &mut Plan) {
    let id = &plan.id;
    let recovering = plan.recovery.as_ref().map(|r| &r.journal.release) == Some(id);
    let rec = plan.st.releases.get(id).filter(|r| r.is_bad());
    if rec.is_none() && !recovering {
        return;
    }
    let state = rec.map_or(gates_core::release::state::FAILED, |r| r.state.as_str());
    let reason = rec
        .and_then(|r| r.reason.as_deref())
        .unwrap_or("no reason recorded");
    if opts.retry_failed {
        plan.retrying = Some(format!(
            "warning: --retry-failed: deploying {id}, recorded {state} ({reason})"
        ));
        let detail = format!("{id} is recorded {state} ({reason}); --retry-failed: it goes ahead");
        plan.check(CheckName::ReleaseState, Ok(detail));
        return;
    }
    let msg = format!(
        "{id} is recorded {state} in {} ({reason}): it is never deployed again; build a new release (a new tag), or pass --retry-failed to try this one knowingly (nothing was changed)",
        ReleasesState::path(env).display(),
    );
    plan.check(
        CheckName::ReleaseState,
        Err(Refusal::new(CheckName::ReleaseState, Exit::Failed, msg)),
    );
}

/// Pending migrations (read from the verified bundle): refused with
/// `--no-migrate`, and when one lacks a .down.sql with no backup to restore.
fn plan_migrations(env: &EnvConfig, opts: &DeployOptions, b: &Bundle, plan: &mut Plan) {
    let pending = match dhash_migrate::pending(&env.database, &b.dir.join("migrations")) {
        Ok(p) => p,
        Err(error) => {
            let r = Refusal {
                check: CheckName::Migrations,
                error,
            };
            return plan.check(CheckName::Migrations, Err(r));
        }
    };
    let labels: Vec<String> = pending.iter().map(Migration::label).collect();
    let lacking: Vec<String> = pending
        .iter()
        .filter(|m| m.down_sql.is_none())
        .map(Migration::label)
        .collect();
    let refuse = |msg: String| Err(Refusal::new(CheckName::Migrations, Exit::Failed, msg));
    let r = if pending.is_empty() {
        Ok("no pending migrations".to_string())
    } else if opts.no_migrate {
        refuse(format!(
            "--no-migrate: {} has {} pending migration(s) ({}) and would refuse to start on this database; apply them first (migrate_dhash --env {} --release {}) or deploy without --no-migrate",
            plan.id,
            pending.len(),
            labels.join(", "),
            env.name,
            b.manifest.tag
        ))
    } else if plan.from.is_some()
        && !lacking.is_empty()
        && plan.backup.is_none()
        && !plan.take_backup
    {
        refuse(format!(
            "{} ha(s) no .down.sql and no backup is taken (--no-backup): if the deploy failed, the schema could not be brought back for {}; deploy without --no-backup",
            lacking.join(", "),
            plan.from.as_deref().unwrap_or("the previous release")
        ))
    } else {
        Ok(format!("{} pending: {}", pending.len(), labels.join(", ")))
    };
    plan.pending = pending;
    plan.check(CheckName::Migrations, r);
}

/// Whether the deploy takes its own pre-deploy backup (when no
/// backup.verified arrived on stdin): by default, unless `--no-backup`, or
/// nothing is deployed yet and there is no database (nothing to restore).
pub fn will_backup(opts: &DeployOptions, env: &EnvConfig, current: Option<&str>) -> bool {
    (opts.backup_first || !opts.no_backup) && (current.is_some() || env.database.exists())
}

/// The release to switch back to: `candidate` unless it is failed or gone,
/// else the last known-good one.
pub fn switch_back_target(
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
        .filter(|(id, r)| r.state == gates_core::release::state::HEALTHY && usable(id))
        .max_by(|a, b| a.1.updated_at.cmp(&b.1.updated_at))
        .map(|(id, _)| id.clone())
}

/// The dry run's lock check: only tried when the lock file exists (a dry
/// run creates nothing).
fn lock_check(env: &EnvConfig) -> (String, Option<anyhow::Error>) {
    let path = env.lock_path();
    if !path.exists() {
        return (
            format!("free ({} does not exist yet)", path.display()),
            None,
        );
    }
    match EnvLock::acquire(&path, &env.name, TOOL) {
        Ok(l) => {
            drop(l);
            (format!("free ({})", path.display()), None)
        }
        Err(e) if e.downcast_ref::<LockBusy>().is_some() => (format!("{e:#}"), Some(e)),
        Err(e) => (format!("{e:#}"), Some(e.context("checking the lock"))),
    }
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

pub fn human_bytes(n: u64) -> String {
    const MB: f64 = 1024.0 * 1024.0;
    if n as f64 >= MB {
        format!("{:.1} MiB", n as f64 / MB)
    } else {
        format!("{:.1} KiB", n as f64 / 1024.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_names_print_as_they_serialize() {
        use CheckName::*;
        for c in [
            Bundle,
            Backup,
            Config,
            ServiceConfig,
            Journal,
            Lock,
            Disk,
            Health,
            ReleaseState,
            Migrations,
        ] {
            assert_eq!(
                serde_json::to_value(c).expect("json"),
                serde_json::json!(c.as_str())
            );
        }
    }
}
