//! Creating a backup: plan, snapshot the database, stream everything into a
//! zip under a temporary name, write the sidecar, rename, re-verify.

use std::fs::{self, File};
use std::io::{self, BufWriter, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use gates_core::config::EnvConfig;
use gates_core::fsutil;
use gates_core::lock::EnvLock;
use gates_core::project::Project;
use gates_core::{Emitter, Level};
use serde_json::json;
use sha2::{Digest, Sha256};
use zip::write::SimpleFileOptions;
use zip::CompressionMethod;

use crate::names::{backup_file_name, timestamp_now};
use crate::{BackupInfo, BackupOptions, FileEntry, Manifest, FORMAT, MANIFEST};

/// Read/write buffer for streaming (also the size of the compressibility sample).
const BUF: usize = 256 * 1024;
/// Bytes sampled at the start of a file to decide stored vs deflate.
const SAMPLE: usize = 64 * 1024;
/// Files at least this large get zip64 headers (margin below 4 GiB for growth while reading).
const LARGE: u64 = 1 << 31;
/// Extensions of already-compressed formats: stored, never deflated.
const COMPRESSED_EXT: &[&str] = &[
    "png", "jpg", "jpeg", "gif", "webp", "heic", "zip", "gz", "tgz", "bz2", "xz", "zst", "7z",
    "rar", "mp3", "mp4", "mov", "avi", "mkv", "woff2", "jar", "br", "lz4",
];

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

/// The release `current` points at: (id, dir). None when there is no link;
/// a broken link is an error (never back up a broken environment silently).
pub(crate) fn current_release(env: &EnvConfig) -> anyhow::Result<Option<(String, PathBuf)>> {
    Ok(gates_core::install::current_release_checked(env)
        .context("before backing up")?
        .map(|c| (c.id, c.dir)))
}

fn release_schema_version(dir: &Path) -> Option<i64> {
    let text = fs::read_to_string(dir.join("release.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("schema_version").and_then(serde_json::Value::as_i64)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// What a backup of `env` would contain now (reads only).
pub fn plan(project: &Project, env: &EnvConfig) -> anyhow::Result<Plan> {
    plan_at(project, env, &timestamp_now())
}

fn plan_at(project: &Project, env: &EnvConfig, ts: &str) -> anyhow::Result<Plan> {
    let mut items = Vec::new();
    let mut skipped = Vec::new();
    let db = &env.database;
    let db_sidecars: Vec<PathBuf> = ["-wal", "-shm", "-journal"]
        .iter()
        .map(|s| PathBuf::from(format!("{}{s}", db.display())))
        .collect();

    // The database first: zip path under data/ when it lives in the data dir.
    let db_meta = fs::metadata(db).ok().filter(|m| m.is_file());
    let db_zip = match db.strip_prefix(&env.data_dir) {
        Ok(rel) => rel
            .to_str()
            .map(|r| format!("data/{}", r.replace('\\', "/"))),
        Err(_) => db
            .file_name()
            .and_then(|n| n.to_str())
            .map(|n| format!("data/.database/{n}")),
    };
    if let (Some(meta), Some(zip_path)) = (&db_meta, &db_zip) {
        items.push(PlanItem {
            zip_path: zip_path.clone(),
            source: db.clone(),
            bytes: meta.len(),
            mode: mode_of(meta),
            database: true,
        });
    }

    if env.data_dir.is_dir() {
        for (rel, path, meta) in walk(&env.data_dir, &mut skipped)? {
            if same_file(&path, db) {
                continue;
            }
            if db_sidecars.iter().any(|s| same_file(&path, s)) {
                skipped.push((
                    path,
                    "write-ahead/journal file of the live database (the snapshot includes it)"
                        .into(),
                ));
                continue;
            }
            items.push(PlanItem {
                zip_path: format!("data/{rel}"),
                source: path,
                bytes: meta.len(),
                mode: mode_of(&meta),
                database: false,
            });
        }
    } else {
        skipped.push((env.data_dir.clone(), "data folder does not exist".into()));
    }

    let release = current_release(env)?;
    let mut release_schema = None;
    if let Some((id, dir)) = &release {
        release_schema = release_schema_version(dir);
        for (rel, path, meta) in walk(dir, &mut skipped)? {
            items.push(PlanItem {
                zip_path: format!("release/{id}/{rel}"),
                source: path,
                bytes: meta.len(),
                mode: mode_of(&meta),
                database: false,
            });
        }
    }

    for (src, name) in [
        (project.topology.file.clone(), "config/environments.json"),
        (project.gates_path(), "config/quality-gates-config.json"),
    ] {
        match fs::metadata(&src) {
            Ok(meta) if meta.is_file() => items.push(PlanItem {
                zip_path: name.to_string(),
                source: src,
                bytes: meta.len(),
                mode: mode_of(&meta),
                database: false,
            }),
            _ => skipped.push((src, "config file not found".into())),
        }
    }

    Ok(Plan {
        env: env.name.clone(),
        path: env.backup_dir.join(backup_file_name(&env.name, ts)),
        timestamp: ts.to_string(),
        release: release.as_ref().map(|r| r.0.clone()),
        release_dir: release.map(|r| r.1),
        release_schema_version: release_schema,
        items,
        skipped,
    })
}

/// Copies the live database with SQLite's online backup API (consistent even
/// while the service writes). Returns the schema version it holds.
fn snapshot_db(src: &Path, dst: &Path) -> anyhow::Result<Option<i64>> {
    use rusqlite::{backup::StepResult, Connection, OpenFlags};
    // Read-only first (never checkpoints or otherwise touches the live files);
    // read-write when SQLite needs it (a WAL database without its -shm file).
    let open = |flags: OpenFlags| -> rusqlite::Result<(Connection, Option<i64>)> {
        let c = Connection::open_with_flags(src, flags | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
        c.busy_timeout(Duration::from_secs(10))?;
        // Migrations take the environment lock we hold, so this stays true for the copy.
        let schema = match c.query_row("SELECT MAX(version) FROM schema_migrations", [], |r| {
            r.get(0)
        }) {
            Ok(v) => v,
            Err(rusqlite::Error::SqliteFailure(_, Some(m))) if m.contains("no such table") => None,
            Err(e) => return Err(e),
        };
        Ok((c, schema))
    };
    let (src_conn, schema) = open(OpenFlags::SQLITE_OPEN_READ_ONLY)
        .or_else(|_| open(OpenFlags::SQLITE_OPEN_READ_WRITE))
        .with_context(|| format!("opening the database {}", src.display()))?;
    let mut dst_conn = Connection::open(dst)
        .with_context(|| format!("creating the snapshot {}", dst.display()))?;
    {
        let backup = rusqlite::backup::Backup::new(&src_conn, &mut dst_conn)
            .context("starting the online backup")?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            // -1: every page in one step, inside one read transaction (a
            // consistent snapshot; in WAL mode writers are not blocked).
            match backup.step(-1).context("copying the database")? {
                StepResult::Done => break,
                StepResult::More => {}
                StepResult::Busy | StepResult::Locked => {
                    if Instant::now() > deadline {
                        bail!("the database {} stayed locked for 60 s", src.display());
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => {}
            }
        }
    }
    dst_conn
        .close()
        .map_err(|(_, e)| e)
        .context("closing the snapshot")?;
    File::open(dst)?.sync_all()?;
    Ok(schema)
}

/// A writer that hashes and counts what goes through it. After `discard` is
/// set (an earlier error), writes go nowhere, so dropping a half-written zip
/// does not try to finish it on the real file.
struct HashWriter<W: Write> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
    discard: Arc<AtomicBool>,
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.discard.load(Ordering::Relaxed) {
            return Ok(buf.len());
        }
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        if self.discard.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.inner.flush()
    }
}

/// Shannon entropy of a sample in bits per byte (8 = random).
fn entropy(sample: &[u8]) -> f64 {
    let mut counts = [0u32; 256];
    for &b in sample {
        counts[b as usize] += 1;
    }
    let n = sample.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum()
}

/// Stored for already-compressed formats and random-looking data, deflate
/// (fast level 1) for the rest.
fn choose_method(path: &Path, sample: &[u8]) -> CompressionMethod {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    if ext.is_some_and(|e| COMPRESSED_EXT.contains(&e.as_str())) {
        return CompressionMethod::Stored;
    }
    if sample.len() < 64 || (sample.len() >= 4096 && entropy(sample) > 7.5) {
        return CompressionMethod::Stored;
    }
    CompressionMethod::Deflated
}

fn zip_time(meta: &fs::Metadata) -> zip::DateTime {
    meta.modified()
        .map(|m| to_zip_time(m.into()))
        .unwrap_or_default()
}

fn now_zip_time() -> zip::DateTime {
    to_zip_time(chrono::Utc::now())
}

fn to_zip_time(t: chrono::DateTime<chrono::Utc>) -> zip::DateTime {
    use chrono::{Datelike, Timelike};
    zip::DateTime::from_date_and_time(
        u16::try_from(t.year()).unwrap_or(1980),
        t.month() as u8,
        t.day() as u8,
        t.hour() as u8,
        t.minute() as u8,
        t.second() as u8,
    )
    .unwrap_or_default()
}

/// Fills `buf` as far as the file allows (short only at end of file).
fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

type Zip = zip::ZipWriter<zip::write::StreamWriter<HashWriter<BufWriter<File>>>>;

/// Streams one file into the zip, hashing it on the way (bounded memory).
fn add_file(
    zip: &mut Zip,
    zip_path: &str,
    source: &Path,
    mode: u32,
    buf: &mut [u8],
    progress: &indicatif::ProgressBar,
) -> anyhow::Result<FileEntry> {
    let mut f = fsutil::open_regular(source, "the file to back up")?;
    let meta = f
        .metadata()
        .with_context(|| format!("reading {}", source.display()))?;
    let sample_len = SAMPLE.min(buf.len());
    let n = read_full(&mut f, &mut buf[..sample_len])
        .with_context(|| format!("reading {}", source.display()))?;
    let method = choose_method(source, &buf[..n]);
    let mut opts = SimpleFileOptions::default()
        .compression_method(method)
        .unix_permissions(mode)
        .large_file(meta.len() >= LARGE)
        .last_modified_time(zip_time(&meta));
    if method == CompressionMethod::Deflated {
        opts = opts.compression_level(Some(1));
    }
    zip.start_file(zip_path, opts)
        .with_context(|| format!("adding {zip_path} to the zip"))?;
    let mut hasher = Sha256::new();
    let mut bytes = n as u64;
    hasher.update(&buf[..n]);
    zip.write_all(&buf[..n]).context("writing the zip")?;
    progress.inc(n as u64);
    loop {
        let k = match f.read(buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", source.display())),
        };
        hasher.update(&buf[..k]);
        zip.write_all(&buf[..k]).context("writing the zip")?;
        bytes += k as u64;
        progress.inc(k as u64);
    }
    Ok(FileEntry {
        path: zip_path.to_string(),
        bytes,
        sha256: hex::encode(hasher.finalize()),
        mode: Some(mode),
    })
}

/// Streams every item, then the manifest (last: it holds their hashes).
fn write_entries(
    zip: &mut Zip,
    items: &[PlanItem],
    mut manifest: Manifest,
    progress: &indicatif::ProgressBar,
) -> anyhow::Result<Vec<FileEntry>> {
    let mut buf = vec![0u8; BUF];
    let mut entries = Vec::with_capacity(items.len());
    for item in items {
        progress.set_message(item.zip_path.clone());
        entries.push(add_file(
            zip,
            &item.zip_path,
            &item.source,
            item.mode,
            &mut buf,
            progress,
        )?);
    }
    manifest.created_at = gates_core::event::now_rfc3339();
    manifest.files = entries.clone();
    let text = serde_json::to_vec_pretty(&manifest)?;
    zip.start_file(
        MANIFEST,
        SimpleFileOptions::default()
            .compression_method(CompressionMethod::Deflated)
            .unix_permissions(0o644)
            .last_modified_time(now_zip_time()),
    )?;
    zip.write_all(&text).context("writing the zip")?;
    Ok(entries)
}

fn finish_zip(zip: Zip) -> anyhow::Result<HashWriter<BufWriter<File>>> {
    let stream = zip.finish().context("finishing the zip")?;
    let mut hw = stream.into_inner();
    hw.flush().context("writing the zip")?;
    hw.inner.get_ref().sync_all().context("syncing the zip")?;
    Ok(hw)
}

/// Removes the temporary files of this run unless disarmed.
struct TempFiles(Vec<PathBuf>);
impl Drop for TempFiles {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = fs::remove_file(p);
        }
    }
}

fn progress_bar(total: u64) -> indicatif::ProgressBar {
    if io::stderr().is_terminal() {
        let pb = indicatif::ProgressBar::with_draw_target(
            Some(total),
            indicatif::ProgressDrawTarget::stderr(),
        );
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{spinner} backup {bar:30} {bytes}/{total_bytes} {bytes_per_sec} {msg}",
        ) {
            pb.set_style(style);
        }
        pb
    } else {
        indicatif::ProgressBar::hidden()
    }
}

/// The sidecar line: `<hex>  <path>`, the path relative to the project root
/// when the zip lives under it (so `sha256sum -c` from the root passes), else absolute.
pub(crate) fn sidecar_line(project_root: &Path, zip: &Path, hex: &str) -> String {
    let shown = match zip.strip_prefix(project_root) {
        Ok(rel) => rel.to_string_lossy().to_string(),
        Err(_) => zip.to_string_lossy().to_string(),
    };
    format!("{hex}  {shown}\n")
}

/// Creates, verifies and records a backup of `env`. The caller holds the
/// environment lock. Emits `backup.started`, `backup.created`, `backup.verified`
/// (or, with `dry_run`, `backup.planned` and nothing is written).
pub fn create(
    project: &Project,
    env: &EnvConfig,
    lock: &EnvLock,
    opts: &BackupOptions,
    em: &Emitter,
) -> anyhow::Result<BackupInfo> {
    if lock.env() != env.name {
        bail!(
            "internal error: the lock held is for {:?}, not {:?}",
            lock.env(),
            env.name
        );
    }
    let keep = retention(project, env, opts)?;
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
    let started = Instant::now();
    let journal = gates_core::install::rollback_journal(env);
    if journal.exists() {
        bail!(
            "an interrupted rollback of {} is pending ({}): its state is half restored; rerun rollback_dhash --env {} first",
            env.name,
            journal.display(),
            env.name
        );
    }
    fs::create_dir_all(&env.backup_dir)
        .with_context(|| format!("creating the backup folder {}", env.backup_dir.display()))?;
    crate::store::cleanup_stale(env, em)?;
    crate::store::adopt_legacy(&project.root, env, em)?;
    warn_shared_folder(project, env, em);

    // A fresh name (two runs within one millisecond get different names).
    let mut plan = plan(project, env)?;
    while plan.path.exists() || PathBuf::from(format!("{}.sha256", plan.path.display())).exists() {
        std::thread::sleep(Duration::from_millis(2));
        plan = plan_at(project, env, &timestamp_now())?;
    }
    for (p, why) in &plan.skipped {
        if *p == env.data_dir {
            em.human(&format!("warning: {}: {why}", p.display()));
        } else {
            em.debug(&format!("skipping {}: {why}", p.display()));
        }
    }
    let final_path = plan.path.clone();
    let name = final_path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    let pid = std::process::id();
    let partial = env.backup_dir.join(format!(".{name}.{pid}.partial"));
    let snapshot = env.backup_dir.join(format!(
        ".dhash_{}_{}.sqlite3.{pid}.partial",
        env.name, plan.timestamp
    ));
    let sidecar = PathBuf::from(format!("{}.sha256", final_path.display()));
    let mut temps = TempFiles(vec![
        partial.clone(),
        snapshot.clone(),
        PathBuf::from(format!("{}-journal", snapshot.display())),
        sidecar.clone(),
    ]);

    em.emit(
        "backup.started",
        Level::Info,
        format!("backing up {} ({} files, {} bytes)", env.name, plan.files(), plan.bytes()),
        json!({"path": final_path, "files": plan.files(), "bytes": plan.bytes(), "release": plan.release}),
    );

    // 1. The database snapshot (online backup API, never a plain copy).
    let mut schema_version = None;
    let mut items = plan.items.clone();
    for item in items.iter_mut().filter(|i| i.database) {
        schema_version = snapshot_db(&item.source, &snapshot)?;
        item.bytes = fs::metadata(&snapshot)?.len();
        item.source = snapshot.clone();
    }
    crate::crash_point("backup-snapshot");

    // 2. Stream everything into the partial zip.
    let total: u64 = items.iter().map(|i| i.bytes).sum();
    let progress = progress_bar(total);
    let discard = Arc::new(AtomicBool::new(false));
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&partial)
        .with_context(|| format!("creating {}", partial.display()))?;
    let hw = HashWriter {
        inner: BufWriter::with_capacity(BUF, file),
        hasher: Sha256::new(),
        bytes: 0,
        discard: discard.clone(),
    };
    let mut zip = zip::ZipWriter::new_stream(hw);
    let manifest_base = Manifest {
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
    };
    let written = match write_entries(&mut zip, &items, manifest_base, &progress) {
        Ok(entries) => finish_zip(zip).map(|hw| (entries, hw)),
        Err(e) => {
            // Nothing more may reach the file (dropping a ZipWriter finishes it).
            discard.store(true, Ordering::Relaxed);
            drop(zip);
            Err(e)
        }
    };
    progress.finish_and_clear();
    let (entries, hw) = match written {
        Ok(x) => x,
        Err(e) => {
            discard.store(true, Ordering::Relaxed);
            return Err(e.context(format!("writing {}", partial.display())));
        }
    };
    let _ = fs::remove_file(&snapshot);
    let sha256 = hex::encode(hw.hasher.finalize());
    let zip_bytes = hw.bytes;
    drop(hw.inner);
    crate::crash_point("backup-zip-written");

    // 3. Sidecar first (atomic), then the zip appears under its final name:
    // a file matching dhash_*.zip always has its sidecar.
    fsutil::write_atomic(
        &sidecar,
        sidecar_line(&project.root, &final_path, &sha256).as_bytes(),
    )
    .context("writing the sidecar")?;
    crate::crash_point("backup-sidecar-written");
    fs::rename(&partial, &final_path)
        .with_context(|| format!("renaming {} to {}", partial.display(), final_path.display()))?;
    fsutil::fsync_dir(&env.backup_dir).context("syncing the backup folder")?;
    temps.0.clear();
    crate::crash_point("backup-renamed");

    let files = entries.len();
    em.emit(
        "backup.created",
        Level::Info,
        format!(
            "created {} ({zip_bytes} bytes, {files} files)",
            final_path.display()
        ),
        json!({"path": final_path, "sha256": sha256, "bytes": zip_bytes, "files": files,
               "release": plan.release, "schema_version": schema_version}),
    );

    // 4. Re-read the finished zip: sidecar, CRCs, every manifest hash.
    if let Err(e) = crate::verify::verify(&final_path) {
        // Never leave a zip that fails verification under a backup name.
        let _ = fs::remove_file(&final_path);
        let _ = fs::remove_file(&sidecar);
        let _ = fsutil::fsync_dir(&env.backup_dir);
        return Err(e.context(format!(
            "the new backup {} failed verification and was removed",
            final_path.display()
        )));
    }
    // The `dhash-<env>-<ts>.zip` alias (its sidecar first), before the event
    // that announces the backup.
    let alias = match crate::store::make_alias_for(&final_path) {
        Ok(a) => a,
        Err(e) => {
            em.emit(
                "backup.alias-failed",
                Level::Warning,
                format!(
                    "could not make the alias of {}: {e:#}",
                    final_path.display()
                ),
                json!({"path": final_path}),
            );
            None
        }
    };
    let info = BackupInfo {
        path: final_path.clone(),
        sha256: sha256.clone(),
        bytes: zip_bytes,
        files,
        release: plan.release.clone(),
        schema_version,
    };
    em.emit(
        "backup.verified",
        Level::Info,
        format!(
            "verified {} in {:.1}s",
            final_path.display(),
            started.elapsed().as_secs_f64()
        ),
        json!({"path": final_path, "sha256": sha256, "bytes": zip_bytes, "files": files,
               "release": plan.release, "schema_version": schema_version, "alias": alias,
               "seconds": started.elapsed().as_secs_f64()}),
    );
    if let Err(e) = env.ledger().append(
        "backup",
        json!({"env": env.name, "path": final_path, "sha256": sha256, "bytes": zip_bytes, "files": files,
               "release": plan.release, "schema_version": schema_version, "result": "verified"}),
    ) {
        em.emit("ledger.failed", Level::Warning, format!("could not record the backup in the ledger: {e:#}"), json!({}));
    }
    crate::store::prune(env, keep, &final_path, em)?;
    if let Err(e) = crate::store::sync_aliases(env, em) {
        em.emit(
            "backup.alias-failed",
            Level::Warning,
            format!("could not bring the aliases in line with the backups: {e:#}"),
            json!({}),
        );
    }
    Ok(info)
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

/// Another environment writing to the same folder breaks the seeds' "newest
/// backup" glob (`ls -1 backups/dhash_*.zip | sort -r | head -n1` picks
/// `dhash_staging_...` over `dhash_production_...`): say so.
fn warn_shared_folder(project: &Project, env: &EnvConfig, em: &Emitter) {
    let shared: Vec<&str> = project
        .topology
        .environments
        .values()
        .filter(|o| o.name != env.name && same_file(&o.backup_dir, &env.backup_dir))
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
    let data = plan
        .items
        .iter()
        .filter(|i| i.zip_path.starts_with("data/"))
        .count();
    let release = plan
        .items
        .iter()
        .filter(|i| i.zip_path.starts_with("release/"))
        .count();
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
               "data_files": data, "release_files": release,
               "release": plan.release, "database": plan.database_entry(),
               "skipped": skipped, "dry_run": true}),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_choice() {
        let text = b"hello world, the quick brown fox ".repeat(200);
        assert_eq!(
            choose_method(Path::new("a.txt"), &text),
            CompressionMethod::Deflated
        );
        assert_eq!(
            choose_method(Path::new("a.PNG"), &text),
            CompressionMethod::Stored
        );
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let random: Vec<u8> = (0..SAMPLE)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        assert!(entropy(&random) > 7.9);
        assert_eq!(
            choose_method(Path::new("blob.bin"), &random),
            CompressionMethod::Stored
        );
    }

    #[test]
    fn snapshot_is_consistent_and_reads_the_schema_version() {
        let d = tempfile::tempdir().expect("tempdir");
        let src = d.path().join("live.sqlite3");
        let live = rusqlite::Connection::open(&src).expect("open");
        live.execute_batch(
            "PRAGMA journal_mode=WAL; CREATE TABLE t(x); INSERT INTO t VALUES (1), (2);",
        )
        .expect("setup");
        // No schema_migrations table: no version, not an error.
        let dst = d.path().join("snap1");
        assert_eq!(snapshot_db(&src, &dst).expect("snapshot"), None);
        live.execute_batch(
            "CREATE TABLE schema_migrations(version INTEGER PRIMARY KEY); INSERT INTO schema_migrations VALUES (1), (7); INSERT INTO t VALUES (3);",
        )
        .expect("more");
        // The live connection stays open (its WAL holds the last writes).
        let dst = d.path().join("snap2");
        assert_eq!(snapshot_db(&src, &dst).expect("snapshot"), Some(7));
        let snap = rusqlite::Connection::open(&dst).expect("open snap");
        let n: i64 = snap
            .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .expect("count");
        assert_eq!(n, 3);
    }

    #[test]
    fn sidecar_relative_under_root_absolute_elsewhere() {
        let line = sidecar_line(Path::new("/p"), Path::new("/p/backups/dhash_x.zip"), "ab");
        assert_eq!(line, "ab  backups/dhash_x.zip\n");
        let line = sidecar_line(Path::new("/p"), Path::new("/q/dhash_x.zip"), "ab");
        assert_eq!(line, "ab  /q/dhash_x.zip\n");
    }
}
