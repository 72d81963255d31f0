//! What a backup of an environment contains: the pure(ish) first step. It
//! reads the filesystem and writes nothing; the dry run prints it and the
//! real run ([`crate::create`]) writes exactly these items.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;
use gates_core::config::EnvConfig;
use gates_core::fsutil::same_path;
use gates_core::project::Project;
use gates_core::release::ReleaseManifest;
use gates_core::{Emitter, Level};
use serde_json::json;

use crate::names::{backup_file_name, timestamp_now};

/// What goes into one zip entry.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanItem {
    /// Name inside the zip (`data/...`, `release/<id>/...`, `config/...`).
    pub zip_path: String,
    /// Where it is read from.
    pub source: PathBuf,
    /// Size now (the database snapshot may differ a little).
    pub bytes: u64,
    pub mode: u32,
    /// The live SQLite database: captured with the online backup API first.
    pub database: bool,
}

impl PlanItem {
    fn file(zip_path: String, source: PathBuf, meta: &fs::Metadata) -> Self {
        PlanItem {
            zip_path,
            source,
            bytes: meta.len(),
            mode: mode_of(meta),
            database: false,
        }
    }
}

/// What a backup of the environment would contain.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub env: String,
    /// The final path the zip would get (absolute).
    pub path: PathBuf,
    pub timestamp: String,
    pub release: Option<String>,
    pub release_dir: Option<PathBuf>,
    pub release_schema_version: Option<i64>,
    pub items: Vec<PlanItem>,
    /// Paths left out, with the reason (symlinks, special files, the DB's -wal/-shm).
    pub skipped: Vec<(PathBuf, String)>,
}

impl Plan {
    pub fn files(&self) -> usize {
        self.items.len()
    }
    pub fn bytes(&self) -> u64 {
        self.items.iter().map(|i| i.bytes).sum()
    }
    pub fn database_entry(&self) -> Option<&str> {
        self.items
            .iter()
            .find(|i| i.database)
            .map(|i| i.zip_path.as_str())
    }
}

fn mode_of(meta: &fs::Metadata) -> u32 {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        meta.permissions().mode() & 0o777
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        0o644
    }
}

/// Regular files under `dir`, sorted, as (relative path with `/`, metadata).
fn walk(
    dir: &Path,
    skipped: &mut Vec<(PathBuf, String)>,
) -> anyhow::Result<Vec<(String, PathBuf, fs::Metadata)>> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((d, prefix)) = stack.pop() {
        let mut entries: Vec<_> = fs::read_dir(&d)
            .with_context(|| format!("reading {}", d.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("reading {}", d.display()))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name();
            let Some(name) = name.to_str() else {
                skipped.push((e.path(), "name is not UTF-8".into()));
                continue;
            };
            let rel = if prefix.is_empty() {
                name.to_string()
            } else {
                format!("{prefix}/{name}")
            };
            let meta = fs::symlink_metadata(e.path())
                .with_context(|| format!("reading {}", e.path().display()))?;
            if meta.file_type().is_symlink() {
                skipped.push((
                    e.path(),
                    "symbolic link (backups hold regular files only)".into(),
                ));
            } else if meta.is_dir() {
                stack.push((e.path(), rel));
            } else if meta.is_file() {
                out.push((rel, e.path(), meta));
            } else {
                skipped.push((e.path(), "not a regular file".into()));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// What a backup of `env` would contain now (reads only).
pub fn plan(project: &Project, env: &EnvConfig) -> anyhow::Result<Plan> {
    plan_at(project, env, &timestamp_now())
}

/// [`plan`] for the backup named with timestamp `ts`.
pub(crate) fn plan_at(project: &Project, env: &EnvConfig, ts: &str) -> anyhow::Result<Plan> {
    let mut items = Vec::new();
    let mut skipped = Vec::new();
    items.extend(database_item(env));
    data_items(env, &mut items, &mut skipped)?;
    // A broken `current` is an error: never back up a broken environment silently.
    let release = gates_core::install::current_release_checked(env).context("before backing up")?;
    let release_schema = release
        .as_ref()
        .and_then(|r| ReleaseManifest::read(&r.dir).ok())
        .map(|m| m.schema_version);
    if let Some(r) = &release {
        for (rel, path, meta) in walk(&r.dir, &mut skipped)? {
            items.push(PlanItem::file(
                format!("release/{}/{rel}", r.id),
                path,
                &meta,
            ));
        }
    }
    config_items(project, &mut items, &mut skipped);
    Ok(Plan {
        env: env.name.clone(),
        path: env.backup_dir.join(backup_file_name(&env.name, ts)),
        timestamp: ts.to_string(),
        release: release.as_ref().map(|r| r.id.clone()),
        release_dir: release.map(|r| r.dir),
        release_schema_version: release_schema,
        items,
        skipped,
    })
}

/// The live database, first: under `data/` when it lives in the data dir,
/// else `data/.database/<name>`. None when there is no database file yet.
fn database_item(env: &EnvConfig) -> Option<PlanItem> {
    let db = &env.database;
    let meta = fs::metadata(db).ok().filter(|m| m.is_file())?;
    let zip_path = match db.strip_prefix(&env.data_dir) {
        Ok(rel) => rel
            .to_str()
            .map(|r| format!("data/{}", r.replace('\\', "/"))),
        Err(_) => db
            .file_name()
            .and_then(|n| n.to_str())
            .map(|n| format!("data/.database/{n}")),
    }?;
    Some(PlanItem {
        database: true,
        ..PlanItem::file(zip_path, db.clone(), &meta)
    })
}

/// Every other regular file of the data dir (the database's own -wal/-shm/-journal
/// are left out: the snapshot includes them).
fn data_items(
    env: &EnvConfig,
    items: &mut Vec<PlanItem>,
    skipped: &mut Vec<(PathBuf, String)>,
) -> anyhow::Result<()> {
    let db = &env.database;
    if !env.data_dir.is_dir() {
        skipped.push((env.data_dir.clone(), "data folder does not exist".into()));
        return Ok(());
    }
    let db_sidecars: Vec<PathBuf> = ["-wal", "-shm", "-journal"]
        .iter()
        .map(|s| PathBuf::from(format!("{}{s}", db.display())))
        .collect();
    for (rel, path, meta) in walk(&env.data_dir, skipped)? {
        if same_path(&path, db) {
            continue;
        }
        if db_sidecars.iter().any(|s| same_path(&path, s)) {
            skipped.push((
                path,
                "write-ahead/journal file of the live database (the snapshot includes it)".into(),
            ));
            continue;
        }
        items.push(PlanItem::file(format!("data/{rel}"), path, &meta));
    }
    Ok(())
}

/// The two configuration files (a missing one is skipped, not an error).
fn config_items(
    project: &Project,
    items: &mut Vec<PlanItem>,
    skipped: &mut Vec<(PathBuf, String)>,
) {
    for (src, name) in [
        (project.topology.file.clone(), "config/environments.json"),
        (project.gates_path(), "config/quality-gates-config.json"),
    ] {
        match fs::metadata(&src) {
            Ok(meta) if meta.is_file() => items.push(PlanItem::file(name.to_string(), src, &meta)),
            _ => skipped.push((src, "config file not found".into())),
        }
    }
}

/// Emits `backup.planned` (the dry run's report) for a plan.
pub fn report_plan(plan: &Plan, em: &Emitter) {
    for item in &plan.items {
        em.debug(&format!(
            "would back up {} ({} bytes) as {}",
            item.source.display(),
            item.bytes,
            item.zip_path
        ));
    }
    let skipped: Vec<_> = plan
        .skipped
        .iter()
        .map(|(p, why)| json!({"path": p, "reason": why}))
        .collect();
    let count = |prefix: &str| {
        plan.items
            .iter()
            .filter(|i| i.zip_path.starts_with(prefix))
            .count()
    };
    em.emit(
        "backup.planned",
        Level::Info,
        format!(
            "dry run: would back up {} files ({} bytes) of {} to {}; nothing written",
            plan.files(),
            plan.bytes(),
            plan.env,
            plan.path.display()
        ),
        json!({"path": plan.path, "files": plan.files(), "bytes": plan.bytes(),
               "data_files": count("data/"), "release_files": count("release/"),
               "release": plan.release, "database": plan.database_entry(),
               "skipped": skipped, "dry_run": true}),
    );
}
