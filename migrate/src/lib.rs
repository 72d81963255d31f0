//! migrate_dhash: versioned SQLite migrations, forward and backward, from a
//! release bundle's `migrations/NNNN_name.{up,down}.sql`.
//!
//! - Each migration runs in one transaction together with its row in
//!   `schema_migrations(version, name, checksum, applied_at)`: a failing one
//!   leaves nothing behind and the earlier ones stay applied and recorded.
//! - The SHA-256 of every applied `.up.sql` is stored; a file edited after it
//!   was applied is refused before anything runs, naming it.
//! - Backward refuses before anything runs when a `.down.sql` is missing.
//! - The runner talks to a [`MigrationStore`] only ([`SqliteStore`] today).
//! - Every applied/reverted/failed version is appended to the environment's
//!   ledger as a `migration` record.
//!
//! Events: `migrate.planned`, `migrate.applied` / `migrate.reverted` per
//! version, `migrate.failed`, `migrate.completed`; `migrate.status` per
//! migration with `--status`.

pub mod cli;
pub mod migration;
pub mod release;
pub mod source;
pub mod store;

use std::path::{Path, PathBuf};

use anyhow::anyhow;
use gates_core::config::EnvConfig;
use gates_core::exit::usage_error;
use gates_core::install::rollback_journal;
use gates_core::ledger::Ledger;
use gates_core::lock::EnvLock;
use gates_core::{Emitter, Exit, Level, ToolError};
use serde_json::{json, Value};

pub use migration::{load_dir, Migration};
pub use store::{current_version, AppliedRecord, MigrationStore, SqliteStore};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Forward,
    Backward,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Forward => "forward",
            Direction::Backward => "backward",
        }
    }

    /// "apply" or "revert".
    pub fn verb(self) -> &'static str {
        match self {
            Direction::Forward => "apply",
            Direction::Backward => "revert",
        }
    }

    fn verbing(self) -> &'static str {
        match self {
            Direction::Forward => "applying",
            Direction::Backward => "reverting",
        }
    }

    fn verbed(self) -> &'static str {
        match self {
            Direction::Forward => "applied",
            Direction::Backward => "reverted",
        }
    }

    /// The SQL this direction runs for `m` (empty for a missing `.down.sql`,
    /// which a backward plan refuses before it gets here).
    fn sql(self, m: &Migration) -> &str {
        match self {
            Direction::Forward => m.up_sql.as_str(),
            Direction::Backward => m.down_sql.as_deref().unwrap_or(""),
        }
    }
}

/// What a run would do: `steps` in execution order.
#[derive(Debug, Clone)]
pub struct Plan {
    pub direction: Direction,
    /// Schema version before (the highest applied), `None` when nothing is applied.
    pub from: Option<i64>,
    /// Schema version after the plan completes.
    pub to: Option<i64>,
    pub steps: Vec<Migration>,
}

impl Plan {
    pub fn versions(&self) -> Vec<i64> {
        self.steps.iter().map(|m| m.version).collect()
    }
}

fn refuse(msg: String) -> anyhow::Error {
    ToolError::new(Exit::Failed, anyhow!(msg)).into()
}

/// Refuses (before anything runs) when an applied migration's file now
/// differs from what was applied.
pub fn check_integrity(available: &[Migration], applied: &[AppliedRecord]) -> anyhow::Result<()> {
    for rec in applied {
        let Some(m) = available.iter().find(|m| m.version == rec.version) else {
            continue;
        };
        if m.checksum != rec.checksum {
            return Err(refuse(format!(
                "migration {} was edited after it was applied: stored checksum {}, {} now has {}; restore the original file or add a new migration instead (nothing was changed)",
                m.label(),
                rec.checksum,
                m.up_path.display(),
                m.checksum
            )));
        }
        if !rec.name.is_empty() && rec.name != m.name {
            return Err(refuse(format!(
                "version {} was applied as {:?} but {} names it {:?}; these are different migrations (nothing was changed)",
                rec.version,
                rec.name,
                m.up_path.display(),
                m.name
            )));
        }
    }
    Ok(())
}

/// Pending migrations up to `target` (all when `None`), oldest first.
pub fn plan_forward(
    available: &[Migration],
    applied: &[AppliedRecord],
    target: Option<i64>,
) -> anyhow::Result<Plan> {
    check_integrity(available, applied)?;
    let from = applied.iter().map(|r| r.version).max();
    if let Some(t) = target {
        if t < 0 {
            return Err(usage_error(format!("--target {t}: expected a version ≥ 0")));
        }
        if let Some(c) = from {
            if t < c {
                return Err(usage_error(format!(
                    "--target {t} is below the current schema version {c}: use --type backward --target {t}"
                )));
            }
        }
        let highest = available.iter().map(|m| m.version).max().unwrap_or(0);
        if t > highest && Some(t) != from {
            return Err(usage_error(format!(
                "--target {t}: no such migration (the highest available is {highest})"
            )));
        }
    }
    let steps: Vec<Migration> = available
        .iter()
        .filter(|m| !applied.iter().any(|r| r.version == m.version))
        .filter(|m| target.is_none_or(|t| m.version <= t))
        .cloned()
        .collect();
    let to = steps.iter().map(|m| m.version).chain(from).max();
    Ok(Plan {
        direction: Direction::Forward,
        from,
        to,
        steps,
    })
}

/// Applied versions above `target`, newest first. `target` `None` = one step
/// back (revert the newest applied migration only).
pub fn plan_backward(
    available: &[Migration],
    applied: &[AppliedRecord],
    target: Option<i64>,
) -> anyhow::Result<Plan> {
    check_integrity(available, applied)?;
    let from = applied.iter().map(|r| r.version).max();
    let Some(current) = from else {
        return Ok(Plan {
            direction: Direction::Backward,
            from,
            to: None,
            steps: Vec::new(),
        });
    };
    let target = match target {
        Some(t) if t < 0 => return Err(usage_error(format!("--target {t}: expected a version ≥ 0"))),
        Some(t) if t > current => {
            return Err(usage_error(format!(
                "--target {t} is above the current schema version {current}: use --type forward --target {t}"
            )))
        }
        Some(t) => t,
        None => applied.iter().map(|r| r.version).filter(|v| *v < current).max().unwrap_or(0),
    };
    let mut steps = Vec::new();
    let mut revert: Vec<&AppliedRecord> = applied.iter().filter(|r| r.version > target).collect();
    revert.sort_by_key(|r| std::cmp::Reverse(r.version));
    for rec in revert {
        let Some(m) = available.iter().find(|m| m.version == rec.version) else {
            return Err(refuse(format!(
                "cannot revert version {} ({}): the migrations folder has no {:04}_{}.up.sql/.down.sql (nothing was changed)",
                rec.version, rec.name, rec.version, rec.name
            )));
        };
        if m.down_sql.is_none() {
            let expected = m.up_path.with_file_name(format!("{}.down.sql", m.label()));
            return Err(refuse(format!(
                "cannot revert {}: {} is missing; backward needs a down migration for every version it reverts (nothing was changed)",
                m.label(),
                expected.display()
            )));
        }
        steps.push(m.clone());
    }
    let to = applied
        .iter()
        .map(|r| r.version)
        .filter(|v| *v <= target)
        .max();
    Ok(Plan {
        direction: Direction::Backward,
        from,
        to,
        steps,
    })
}

/// What the run writes besides the database.
pub struct RunContext<'a> {
    pub em: &'a Emitter,
    /// `None` in dry runs: nothing is recorded.
    pub ledger: Option<Ledger>,
    pub database: PathBuf,
    pub migrations_dir: PathBuf,
    pub release: Option<String>,
    pub dry_run: bool,
}

fn step_json(m: &Migration, with_sql: bool, direction: Direction) -> Value {
    let mut v = json!({"version": m.version, "name": m.name, "checksum": m.checksum});
    if with_sql {
        let sql = match direction {
            Direction::Forward => Some(m.up_sql.as_str()),
            Direction::Backward => m.down_sql.as_deref(),
        };
        v["sql"] = json!(sql);
    }
    v
}

fn indent(sql: &str) -> String {
    sql.trim_end()
        .lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs a plan against a store: events, human lines and ledger records.
pub fn execute(
    store: &mut dyn MigrationStore,
    plan: &Plan,
    ctx: &RunContext,
) -> anyhow::Result<Vec<i64>> {
    emit_planned(store, plan, ctx);
    let mut done = Vec::new();
    for m in &plan.steps {
        if ctx.dry_run {
            ctx.em.human(&format!(
                "would {} {} (sha256 {}):\n{}",
                plan.direction.verb(),
                m.label(),
                m.checksum,
                indent(plan.direction.sql(m))
            ));
            continue;
        }
        run_step(store, m, plan.direction, ctx, &done)?;
        done.push(m.version);
    }
    emit_completed(store, plan, ctx)?;
    Ok(done)
}

/// "dry run: " before what a dry run says.
fn dry_prefix(ctx: &RunContext) -> &'static str {
    if ctx.dry_run {
        "dry run: "
    } else {
        ""
    }
}

/// `migrate.planned`: what the run is about to do (with the SQL in a dry run).
fn emit_planned(store: &dyn MigrationStore, plan: &Plan, ctx: &RunContext) {
    let dir = plan.direction;
    let steps: Vec<Value> = plan
        .steps
        .iter()
        .map(|m| step_json(m, ctx.dry_run, dir))
        .collect();
    let prefix = dry_prefix(ctx);
    let msg = if plan.steps.is_empty() {
        format!(
            "{prefix}nothing to {}; schema version {}",
            dir.verb(),
            fmt_version(plan.from)
        )
    } else {
        format!(
            "{prefix}{} {} migration(s) {}: schema version {} -> {}",
            if ctx.dry_run {
                format!("would {}", dir.verb())
            } else {
                dir.verbing().to_string()
            },
            plan.steps.len(),
            dir.as_str(),
            fmt_version(plan.from),
            fmt_version(plan.to)
        )
    };
    ctx.em.emit(
        "migrate.planned",
        Level::Info,
        msg,
        json!({
            "direction": dir.as_str(),
            "dry_run": ctx.dry_run,
            "database": ctx.database,
            "store": store.describe(),
            "migrations_dir": ctx.migrations_dir,
            "release": ctx.release,
            "from_version": plan.from,
            "to_version": plan.to,
            "versions": plan.versions(),
            "steps": steps,
        }),
    );
}

/// Applies or reverts one migration (its own transaction), then its event
/// and ledger record. `done`: the versions completed before it.
fn run_step(
    store: &mut dyn MigrationStore,
    m: &Migration,
    dir: Direction,
    ctx: &RunContext,
    done: &[i64],
) -> anyhow::Result<()> {
    ctx.em.debug(&format!(
        "{} {}:\n{}",
        dir.verbing(),
        m.label(),
        indent(dir.sql(m))
    ));
    let started = std::time::Instant::now();
    let result = match dir {
        Direction::Forward => store.apply(m),
        Direction::Backward => store.revert(m),
    };
    let ms = started.elapsed().as_millis() as u64;
    match result {
        Ok(()) => record_step_done(m, dir, ctx, ms),
        Err(e) => Err(record_step_failed(m, dir, ctx, done, &format!("{e:#}"))),
    }
}

fn record_step_done(
    m: &Migration,
    dir: Direction,
    ctx: &RunContext,
    ms: u64,
) -> anyhow::Result<()> {
    let (event, word) = match dir {
        Direction::Forward => ("migrate.applied", "applied"),
        Direction::Backward => ("migrate.reverted", "reverted"),
    };
    ctx.em.emit(
        event,
        Level::Info,
        format!("{word} {}", m.label()),
        json!({"version": m.version, "name": m.name, "checksum": m.checksum, "ms": ms, "direction": dir.as_str()}),
    );
    if let Some(l) = &ctx.ledger {
        l.append(
            "migration",
            json!({"direction": dir.as_str(), "version": m.version, "name": m.name,
                   "checksum": m.checksum, "result": word, "database": ctx.database,
                   "release": ctx.release, "ms": ms}),
        )?;
    }
    Ok(())
}

/// `migrate.failed` and its ledger record (best effort); returns the error
/// that ends the run.
fn record_step_failed(
    m: &Migration,
    dir: Direction,
    ctx: &RunContext,
    done: &[i64],
    err: &str,
) -> anyhow::Error {
    ctx.em.emit(
        "migrate.failed",
        Level::Error,
        format!("{} failed and was rolled back: {err}", m.label()),
        json!({"version": m.version, "name": m.name, "direction": dir.as_str(),
               "error": err, "completed": done, "file": m.up_path}),
    );
    if let Some(l) = &ctx.ledger {
        let _ = l.append(
            "migration",
            json!({"direction": dir.as_str(), "version": m.version, "name": m.name,
                   "checksum": m.checksum, "result": "failed", "error": err,
                   "database": ctx.database, "release": ctx.release}),
        );
    }
    let kept = if done.is_empty() {
        "nothing else changed".to_string()
    } else {
        format!(
            "versions {done:?} completed before it and stay {}",
            dir.verbed()
        )
    };
    ToolError::new(
        Exit::Failed,
        anyhow!(
            "migration {} ({}) failed: {err}; its transaction was rolled back, {kept}",
            m.label(),
            dir.as_str()
        ),
    )
    .into()
}

/// `migrate.completed` with the schema version after the run.
fn emit_completed(
    store: &mut dyn MigrationStore,
    plan: &Plan,
    ctx: &RunContext,
) -> anyhow::Result<()> {
    let dir = plan.direction;
    let schema_version = if ctx.dry_run {
        plan.to
    } else {
        store.applied()?.iter().map(|r| r.version).max()
    };
    ctx.em.emit(
        "migrate.completed",
        Level::Info,
        format!(
            "{}{} {} migration(s); schema version {}",
            dry_prefix(ctx),
            if ctx.dry_run {
                format!("would {}", dir.verb())
            } else {
                dir.verbed().to_string()
            },
            plan.steps.len(),
            fmt_version(schema_version)
        ),
        json!({"direction": dir.as_str(), "dry_run": ctx.dry_run, "versions": plan.versions(),
               "schema_version": schema_version, "database": ctx.database}),
    );
    Ok(())
}

fn fmt_version(v: Option<i64>) -> String {
    v.map(|v| v.to_string())
        .unwrap_or_else(|| "none".to_string())
}

fn check_lock(env: &EnvConfig, lock: &EnvLock) -> anyhow::Result<()> {
    if lock.env() != env.name || lock.path() != env.lock_path() {
        anyhow::bail!(
            "internal error: the lock held is for environment {:?} ({}), not {:?}",
            lock.env(),
            lock.path().display(),
            env.name
        );
    }
    Ok(())
}

/// Opens the store: writable (created if missing) for a real run,
/// read-only (never creating anything) for a dry run.
fn open_store(env: &EnvConfig, dry_run: bool) -> anyhow::Result<SqliteStore> {
    if dry_run {
        SqliteStore::open_read_only(&env.database)
    } else {
        SqliteStore::open(&env.database)
    }
}

/// One migrate run, as the binary or a library caller asks for it.
#[derive(Debug, Clone)]
pub struct Request {
    pub migrations_dir: PathBuf,
    pub direction: Direction,
    /// Forward: apply up to this version (all when `None`). Backward: revert
    /// versions above it (one step back when `None`).
    pub target: Option<i64>,
    pub dry_run: bool,
    /// The release the migrations come from, for records.
    pub release: Option<String>,
}

/// Plans and runs migrations in either direction. `lock` must be `Some`
/// unless `dry_run`.
pub fn run(
    env: &EnvConfig,
    req: &Request,
    lock: Option<&EnvLock>,
    em: &Emitter,
) -> anyhow::Result<Vec<i64>> {
    let (migrations_dir, direction, target, dry_run) = (
        req.migrations_dir.as_path(),
        req.direction,
        req.target,
        req.dry_run,
    );
    match lock {
        Some(l) => check_lock(env, l)?,
        None if !dry_run => anyhow::bail!("internal error: migrations need the environment lock"),
        None => {}
    }
    let available = load_dir(migrations_dir)?;
    // Plan on a read-only view first, so a refusal never creates the database.
    let mut ro = SqliteStore::open_read_only(&env.database)?;
    let applied = ro.applied()?;
    drop(ro);
    let plan = match direction {
        Direction::Forward => plan_forward(&available, &applied, target)?,
        Direction::Backward => plan_backward(&available, &applied, target)?,
    };
    if dry_run && !env.database.exists() {
        em.human(&format!(
            "dry run: {} does not exist yet; a real run creates it",
            env.database.display()
        ));
    }
    let mut store = if plan.steps.is_empty() || dry_run {
        SqliteStore::open_read_only(&env.database)?
    } else {
        open_store(env, dry_run)?
    };
    let ctx = RunContext {
        em,
        ledger: if dry_run { None } else { Some(env.ledger()) },
        database: env.database.clone(),
        migrations_dir: migrations_dir.to_path_buf(),
        release: req.release.clone(),
        dry_run,
    };
    execute(&mut store, &plan, &ctx)
}

/// Applies pending migrations of `migrations_dir` up to `target` (all when
/// `None`). Returns the versions applied (none in a dry run).
pub fn forward(
    env: &EnvConfig,
    migrations_dir: &Path,
    target: Option<i64>,
    dry_run: bool,
    lock: &EnvLock,
    em: &Emitter,
) -> anyhow::Result<Vec<i64>> {
    let req = Request {
        migrations_dir: migrations_dir.to_path_buf(),
        direction: Direction::Forward,
        target,
        dry_run,
        release: release_of(migrations_dir),
    };
    run(env, &req, Some(lock), em)
}

/// Reverts applied versions above `target`, newest first, with the
/// `.down.sql` files of `migrations_dir`. Returns the versions reverted.
pub fn backward(
    env: &EnvConfig,
    migrations_dir: &Path,
    target: i64,
    dry_run: bool,
    lock: &EnvLock,
    em: &Emitter,
) -> anyhow::Result<Vec<i64>> {
    let req = Request {
        migrations_dir: migrations_dir.to_path_buf(),
        direction: Direction::Backward,
        target: Some(target),
        dry_run,
        release: release_of(migrations_dir),
    };
    run(env, &req, Some(lock), em)
}

/// The release id of `<release>/migrations`, when its parent holds a manifest.
pub fn release_of(migrations_dir: &Path) -> Option<String> {
    let parent = migrations_dir.parent()?;
    release::ReleaseManifest::read(parent).ok().map(|m| m.id)
}

/// Migrations of `migrations_dir` not yet applied to `database` (read-only;
/// refuses an edited applied migration like a real run would).
pub fn pending(database: &Path, migrations_dir: &Path) -> anyhow::Result<Vec<Migration>> {
    let available = load_dir(migrations_dir)?;
    let applied = SqliteStore::open_read_only(database)?.applied()?;
    Ok(plan_forward(&available, &applied, None)?.steps)
}

/// Where one migration stands (`--status`; serialized in lowercase).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MigrationState {
    Applied,
    Pending,
    /// Applied, and its file changed since.
    Modified,
    /// Applied, but this release has no file for it.
    Unknown,
}

impl MigrationState {
    pub fn as_str(self) -> &'static str {
        match self {
            MigrationState::Applied => "applied",
            MigrationState::Pending => "pending",
            MigrationState::Modified => "modified",
            MigrationState::Unknown => "unknown",
        }
    }
}

/// One line of `--status`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StatusRow {
    pub version: i64,
    pub name: String,
    pub state: MigrationState,
    pub checksum: String,
    pub applied_at: Option<String>,
    pub has_down: bool,
}

/// Applied and pending migrations, by version (read-only).
pub fn status(database: &Path, migrations_dir: &Path) -> anyhow::Result<Vec<StatusRow>> {
    let available = load_dir(migrations_dir)?;
    let applied = SqliteStore::open_read_only(database)?.applied()?;
    let mut rows = Vec::new();
    for m in &available {
        let rec = applied.iter().find(|r| r.version == m.version);
        let state = match rec {
            None => MigrationState::Pending,
            Some(r) if r.checksum != m.checksum => MigrationState::Modified,
            Some(_) => MigrationState::Applied,
        };
        rows.push(StatusRow {
            version: m.version,
            name: m.name.clone(),
            state,
            checksum: m.checksum.clone(),
            applied_at: rec.map(|r| r.applied_at.clone()),
            has_down: m.down_sql.is_some(),
        });
    }
    for r in &applied {
        if !available.iter().any(|m| m.version == r.version) {
            rows.push(StatusRow {
                version: r.version,
                name: r.name.clone(),
                state: MigrationState::Unknown,
                checksum: r.checksum.clone(),
                applied_at: Some(r.applied_at.clone()),
                has_down: false,
            });
        }
    }
    rows.sort_by_key(|r| r.version);
    Ok(rows)
}

/// What the `migrate_dhash` binary was asked (parsed flags).
#[derive(Debug, Clone)]
pub struct ToolOptions {
    pub env: String,
    pub direction: Direction,
    pub target: Option<i64>,
    pub dry_run: bool,
    pub verbose: bool,
    pub status: bool,
    /// Whose migrations: `--release`, `--tag`, `--installed`, or the checkout's.
    pub want: release::Want,
    /// Backward below the schema the deployed release needs, knowingly.
    pub force: bool,
}

pub const TOOL: &str = "migrate_dhash";

/// The file an interrupted rollback leaves in the install root (owned by
/// rollback_dhash; backup and deploy refuse while it exists, and so do we).
pub const ROLLBACK_JOURNAL: &str = gates_core::install::ROLLBACK_JOURNAL;

/// Refuses while an interrupted rollback is pending: its state is half
/// restored, and migrating under it would mix two schemas.
pub fn refuse_pending_rollback(env: &EnvConfig) -> anyhow::Result<()> {
    let journal = rollback_journal(env);
    if fs_exists(&journal) {
        return Err(refuse(format!(
            "an interrupted rollback of {} is pending ({}): its state is half restored; finish it first with `rollback_dhash --env {}` (nothing was changed)",
            env.name,
            journal.display(),
            env.name
        )));
    }
    Ok(())
}

fn fs_exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

/// Refuses (without `force`) a backward plan that leaves the schema below
/// what the deployed release needs: it would fail to start, or to hash.
pub fn refuse_below_deployed(env: &EnvConfig, plan: &Plan, force: bool) -> anyhow::Result<()> {
    if plan.direction != Direction::Backward || plan.steps.is_empty() {
        return Ok(());
    }
    let Some((_, m)) = release::current_release(env) else {
        return Ok(());
    };
    let after = plan.to.unwrap_or(0);
    if after >= m.schema_version {
        return Ok(());
    }
    let running = gates_core::service::status(env).running;
    let what = format!(
        "reverting to schema version {after} would drop below schema version {} that the {} release {} needs: {}",
        m.schema_version,
        if running { "running" } else { "deployed" },
        m.id,
        if running {
            "hashing would fail while it serves"
        } else {
            "it would fail when started"
        }
    );
    if force {
        return Ok(());
    }
    Err(refuse(format!(
        "{what}; deploy or roll back to a release that needs version {after} or less first, or pass --force to do it anyway (nothing was changed)"
    )))
}

/// The whole tool: forwards stdin, resolves the migrations, takes the lock
/// (not for `--dry-run`/`--status`), runs.
pub fn run_tool(opts: &ToolOptions) -> anyhow::Result<Exit> {
    let em = Emitter::stdout(TOOL, &opts.env, opts.verbose);
    gates_core::event::pump_stdin(&em, |_| {});
    let project = gates_core::project::Project::discover()?;
    let env = project.env(&opts.env)?;
    let placeholders = project.topology.check_placeholders(&env.name)?;
    for p in placeholders {
        em.human(&format!(
            "warning: unresolved placeholder {} in {}",
            p.path,
            p.file.display()
        ));
    }
    let read_only = opts.dry_run || opts.status;
    check_no_rollback(env, opts, &em)?;
    let src = release::resolve_migrations(&project, env, &opts.want, read_only, &em)?;
    em.human(&format!(
        "migrations: {} ({})",
        src.migrations_dir.display(),
        src.why
    ));
    em.debug(&format!("database: {}", env.database.display()));
    if opts.status {
        report_status(env, &src, &em)?;
        return Ok(Exit::Ok);
    }
    let lock = if opts.dry_run {
        None
    } else {
        Some(env.lock(TOOL)?)
    };
    if lock.is_some() {
        // Under the lock: a rollback may have started since the first look.
        refuse_pending_rollback(env)?;
    }
    if opts.direction == Direction::Backward {
        check_backward(env, &src.migrations_dir, opts, &em)?;
    }
    let req = Request {
        migrations_dir: src.migrations_dir.clone(),
        direction: opts.direction,
        target: opts.target,
        dry_run: opts.dry_run,
        release: src.release.clone(),
    };
    run(env, &req, lock.as_ref(), &em)?;
    Ok(Exit::Ok)
}

/// The first look for a rollback journal: a refusal, or a warning for
/// `--status` (which changes nothing).
fn check_no_rollback(env: &EnvConfig, opts: &ToolOptions, em: &Emitter) -> anyhow::Result<()> {
    if rollback_journal(env).exists() && env.lock_path().exists() && !opts.status {
        // A rollback that is running right now holds the lock beside its
        // journal: that is "busy" (exit 75), not an interrupted one.
        drop(env.lock(TOOL)?);
    }
    if !opts.status {
        refuse_pending_rollback(env)?;
    } else if let Err(e) = refuse_pending_rollback(env) {
        em.human(&format!("warning: {e:#}"));
    }
    Ok(())
}

/// `--status`: one `migrate.status` event a migration, then the totals.
fn report_status(
    env: &EnvConfig,
    src: &release::MigrationSource,
    em: &Emitter,
) -> anyhow::Result<()> {
    let rows = status(&env.database, &src.migrations_dir)?;
    for r in &rows {
        em.emit(
            "migrate.status",
            Level::Info,
            format!("{:04}_{} {}", r.version, r.name, r.state.as_str()),
            serde_json::to_value(r)?,
        );
    }
    let applied = rows
        .iter()
        .filter(|r| r.state != MigrationState::Pending)
        .count();
    let pending = rows.len() - applied;
    let schema_version = current_version(&env.database)?;
    em.emit(
        "migrate.completed",
        Level::Info,
        format!(
            "status: {applied} applied, {pending} pending; schema version {}",
            fmt_version(schema_version)
        ),
        json!({"mode": "status", "applied": applied, "pending": pending,
               "schema_version": schema_version, "database": env.database,
               "migrations_dir": src.migrations_dir, "release": src.release}),
    );
    Ok(())
}

/// A backward run may not leave the schema below what the deployed release
/// needs, unless forced (then it says so).
fn check_backward(
    env: &EnvConfig,
    migrations_dir: &Path,
    opts: &ToolOptions,
    em: &Emitter,
) -> anyhow::Result<()> {
    let available = load_dir(migrations_dir)?;
    let applied = SqliteStore::open_read_only(&env.database)?.applied()?;
    let plan = plan_backward(&available, &applied, opts.target)?;
    refuse_below_deployed(env, &plan, opts.force)?;
    if opts.force
        && plan.to.unwrap_or(0)
            < release::current_release(env)
                .map(|(_, m)| m.schema_version)
                .unwrap_or(0)
    {
        em.human("warning: --force: reverting below the schema version the deployed release needs");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mig(v: i64, down: bool) -> Migration {
        Migration {
            version: v,
            name: format!("m{v}"),
            up_path: PathBuf::from(format!("/x/{v:04}_m{v}.up.sql")),
            up_sql: format!("CREATE TABLE t{v}(x);"),
            down_path: down.then(|| PathBuf::from(format!("/x/{v:04}_m{v}.down.sql"))),
            down_sql: down.then(|| format!("DROP TABLE t{v};")),
            checksum: format!("c{v}"),
        }
    }
    fn rec(v: i64) -> AppliedRecord {
        AppliedRecord {
            version: v,
            name: format!("m{v}"),
            checksum: format!("c{v}"),
            applied_at: "t".into(),
        }
    }

    #[test]
    fn forward_plans() {
        let av = vec![mig(1, true), mig(2, true), mig(3, true)];
        let p = plan_forward(&av, &[rec(1)], None).expect("plan");
        assert_eq!(p.versions(), vec![2, 3]);
        assert_eq!((p.from, p.to), (Some(1), Some(3)));
        assert_eq!(
            plan_forward(&av, &[rec(1)], Some(2))
                .expect("plan")
                .versions(),
            vec![2]
        );
        assert!(plan_forward(&av, &[rec(1), rec(2)], Some(1)).is_err());
        assert!(plan_forward(&av, &[], Some(9)).is_err());
        let mut edited = rec(1);
        edited.checksum = "other".into();
        let err = plan_forward(&av, &[edited], None).expect_err("edited");
        assert!(format!("{err:#}").contains("0001_m1 was edited"), "{err:#}");
    }

    #[test]
    fn status_states_keep_their_words() {
        for (state, word) in [
            (MigrationState::Applied, "applied"),
            (MigrationState::Pending, "pending"),
            (MigrationState::Modified, "modified"),
            (MigrationState::Unknown, "unknown"),
        ] {
            assert_eq!(state.as_str(), word);
            assert_eq!(serde_json::to_value(state).expect("json"), json!(word));
        }
    }

    #[test]
    fn backward_plans() {
        let av = vec![mig(1, true), mig(2, true), mig(3, false)];
        let p = plan_backward(&av, &[rec(1), rec(2)], None).expect("plan");
        assert_eq!(p.versions(), vec![2]);
        assert_eq!(p.to, Some(1));
        let p = plan_backward(&av, &[rec(1), rec(2)], Some(0)).expect("plan");
        assert_eq!(p.versions(), vec![2, 1]);
        assert_eq!(p.to, None);
        let err = plan_backward(&av, &[rec(1), rec(2), rec(3)], Some(1)).expect_err("no down");
        assert!(
            format!("{err:#}").contains("0003_m3.down.sql is missing"),
            "{err:#}"
        );
        assert!(plan_backward(&av, &[rec(1)], Some(2)).is_err());
        assert!(plan_backward(&av, &[], None)
            .expect("empty")
            .steps
            .is_empty());
    }
}
