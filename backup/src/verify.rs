//! Verifying and extracting backups. Nothing is trusted: the sidecar hash, the
//! zip's CRCs, every manifest hash, and every entry name (no absolute paths,
//! no `..`, no links, no duplicates, only `data/`, `release/`, `config/` and
//! `manifest.json`) are checked. The database snapshot must pass SQLite's
//! `PRAGMA integrity_check` and hold the schema version the manifest states,
//! so a backup that would leave production down on restore never verifies.
//! Only regular files are opened (a FIFO, directory or socket is refused with
//! a message saying what it is, never waited on).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::{Component, Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use gates_core::fsutil::{open_regular, require_regular_file};
use sha2::{Digest, Sha256};

use crate::names::sidecar_of;
use crate::{FileEntry, Manifest, FORMAT, MANIFEST};

const BUF: usize = 256 * 1024;
/// The most a manifest may take (bounded memory on crafted input).
const MANIFEST_LIMIT: u64 = 256 * 1024 * 1024;
/// The most a sidecar may take (one line; bounded memory on a hostile file).
const SIDECAR_LIMIT: u64 = 64 * 1024;

/// SHA-256 of a file, streamed (one definition: [`gates_core::fsutil::sha256_file`]).
pub use gates_core::fsutil::sha256_file;

/// Undoes GNU sha256sum's escaping of a file name (`\\` and `\n`), used
/// when its line starts with a backslash.
fn unescape_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut chars = name.chars();
    while let Some(c) = chars.next() {
        match (c, chars.clone().next()) {
            ('\\', Some('n')) => {
                out.push('\n');
                chars.next();
            }
            ('\\', Some('\\')) => {
                out.push('\\');
                chars.next();
            }
            _ => out.push(c),
        }
    }
    out
}

/// Reads `<zip>.sha256` (GNU format `<hex>  <name>` or `<hex> *<name>`):
/// returns the hex digest and the name it gives.
pub fn read_sidecar(zip: &Path) -> anyhow::Result<(String, String)> {
    let path = sidecar_of(zip);
    if fs::symlink_metadata(&path).is_err_and(|e| e.kind() == io::ErrorKind::NotFound) {
        bail!(
            "no sidecar {}: a zip without its sidecar is not a backup",
            path.display()
        )
    }
    let mut bytes = Vec::new();
    open_regular(&path, "the sidecar")?
        .take(SIDECAR_LIMIT)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading the sidecar {}", path.display()))?;
    let text = String::from_utf8_lossy(&bytes);
    let line = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim_end();
    let (escaped, line) = match line.strip_prefix('\\') {
        Some(rest) => (true, rest),
        None => (false, line),
    };
    let (hex, rest) = line.split_at(line.find(' ').unwrap_or(line.len()));
    let name = rest
        .strip_prefix("  ")
        .or_else(|| rest.strip_prefix(" *"))
        .unwrap_or("");
    let name = if escaped {
        unescape_name(name)
    } else {
        name.to_string()
    };
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) || name.is_empty() {
        bail!(
            "the sidecar {} is not in sha256sum format (\"<64 hex>  <file>\"): {line:?}",
            path.display()
        );
    }
    Ok((hex.to_ascii_lowercase(), name))
}

/// Checks the sidecar against the zip: it must name this zip and its hash
/// must match the file's. Returns the hash.
pub fn verify_sidecar(zip: &Path) -> anyhow::Result<String> {
    let (expected, named) = read_sidecar(zip)?;
    let zip_name = zip.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let named_file = Path::new(&named)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    if named_file != zip_name {
        bail!(
            "the sidecar of {} names another file ({named})",
            zip.display()
        );
    }
    let actual = sha256_file(zip)?;
    if actual != expected {
        bail!(
            "checksum mismatch for {}: the sidecar says {expected}, the file hashes to {actual} (corrupt or altered)",
            zip.display()
        );
    }
    Ok(actual)
}

/// Whether a zip entry name is acceptable in a backup. `Err` says why not.
pub fn check_entry_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty entry name".into());
    }
    if name.contains('\0') {
        return Err(format!("entry name {name:?} contains a NUL byte"));
    }
    if name.contains('\\') {
        return Err(format!("entry name {name:?} contains a backslash"));
    }
    if name.starts_with('/') {
        return Err(format!("entry {name:?} has an absolute path"));
    }
    if name.len() >= 2 && name.as_bytes()[1] == b':' {
        return Err(format!("entry {name:?} has a drive-letter path"));
    }
    let is_dir = name.ends_with('/');
    let trimmed = name.strip_suffix('/').unwrap_or(name);
    let comps: Vec<&str> = trimmed.split('/').collect();
    for c in &comps {
        match *c {
            "" => return Err(format!("entry {name:?} has an empty path component")),
            ".." => return Err(format!("entry {name:?} climbs out of the target with `..`")),
            "." => return Err(format!("entry {name:?} has a `.` component")),
            _ => {}
        }
    }
    if trimmed == MANIFEST && !is_dir {
        return Ok(());
    }
    let ok = match comps[0] {
        "data" | "config" => comps.len() >= 2 || is_dir,
        "release" => comps.len() >= 3 || is_dir,
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "entry {name:?} is not under data/, release/<id>/ or config/, nor manifest.json"
        ))
    }
}

/// Whether a link at `entry` pointing to `target` stays inside the extraction root.
fn link_stays_inside(entry: &str, target: &str) -> bool {
    if target.starts_with('/') || target.contains('\\') || target.contains('\0') {
        return false;
    }
    let mut depth: i64 = entry.trim_end_matches('/').split('/').count() as i64 - 1;
    for c in Path::new(target).components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            Component::CurDir => {}
            _ => return false,
        }
    }
    true
}

/// Reads the manifest of a backup without verifying anything (a quick look,
/// e.g. at its environment before a full verification).
pub fn read_manifest(path: &Path) -> anyhow::Result<Manifest> {
    let file = open_regular(path, "the backup")?;
    let mut zip = zip::ZipArchive::new(BufReader::new(file))
        .with_context(|| format!("{} is not a readable zip", path.display()))?;
    let entry = zip
        .by_name(MANIFEST)
        .map_err(|_| anyhow!("{} has no {MANIFEST}", path.display()))?;
    let mut text = Vec::new();
    entry
        .take(MANIFEST_LIMIT)
        .read_to_end(&mut text)
        .context("reading the manifest")?;
    serde_json::from_slice(&text)
        .with_context(|| format!("the manifest of {} is not valid", path.display()))
}

/// Options of [`extract`].
#[derive(Debug, Clone, Default)]
pub struct ExtractOptions {
    /// Emergency: do not check the sidecar nor compare manifest hashes
    /// (entry names are still checked; the zip's CRCs still are, by the reader).
    pub skip_validation: bool,
}

/// The result of [`extract`].
#[derive(Debug, Clone)]
pub struct Extracted {
    pub manifest: Manifest,
    /// The zip's SHA-256 (None with `skip_validation`).
    pub sha256: Option<String>,
    pub files: usize,
    pub bytes: u64,
}

/// Verifies a backup: sidecar, zip structure and CRCs, every manifest hash,
/// safe names, and the database snapshot (SQLite integrity check and schema
/// version, on a temporary copy). Reads the whole file twice (the sidecar hash runs in parallel).
pub fn verify(path: &Path) -> anyhow::Result<Manifest> {
    require_regular_file(path, "the backup")?;
    let (sidecar, scanned) = std::thread::scope(|s| {
        let h = s.spawn(|| verify_sidecar(path));
        let scanned = scan(path, None, false);
        let sidecar = h
            .join()
            .unwrap_or_else(|_| Err(anyhow!("the hashing thread panicked")));
        (sidecar, scanned)
    });
    combine(path, sidecar, scanned).map(|(m, _, _, _)| m)
}

fn combine(
    path: &Path,
    sidecar: anyhow::Result<String>,
    scanned: anyhow::Result<(Manifest, usize, u64)>,
) -> anyhow::Result<(Manifest, Option<String>, usize, u64)> {
    match (sidecar, scanned) {
        (Ok(sha), Ok((m, files, bytes))) => Ok((m, Some(sha), files, bytes)),
        (Err(e), Ok(_)) => Err(e),
        (Ok(_), Err(e)) => Err(e.context(format!("{} is not a valid backup", path.display()))),
        (Err(e), Err(e2)) => Err(e.context(format!("also: {e2:#}"))),
    }
}

/// Extracts a backup into the empty (or absent) folder `dest`, verifying as it
/// goes: on any error `dest` may hold a partial extraction the caller removes.
/// Entry names are all checked before the first byte is written. The
/// extracted database is checked ([`check_database`]) before this returns,
/// with `skip_validation` too: a database SQLite cannot read is never restored.
pub fn extract(path: &Path, dest: &Path, opts: &ExtractOptions) -> anyhow::Result<Extracted> {
    require_regular_file(path, "the backup")?;
    fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
    if opts.skip_validation {
        let (manifest, files, bytes) = scan(path, Some(dest), true)?;
        return Ok(Extracted {
            manifest,
            sha256: None,
            files,
            bytes,
        });
    }
    let (sidecar, scanned) = std::thread::scope(|s| {
        let h = s.spawn(|| verify_sidecar(path));
        let scanned = scan(path, Some(dest), false);
        let sidecar = h
            .join()
            .unwrap_or_else(|_| Err(anyhow!("the hashing thread panicked")));
        (sidecar, scanned)
    });
    let (manifest, sha256, files, bytes) = combine(path, sidecar, scanned)?;
    Ok(Extracted {
        manifest,
        sha256,
        files,
        bytes,
    })
}

struct EntryMeta {
    index: usize,
    name: String,
    is_dir: bool,
    mode: Option<u32>,
}

type Archive = zip::ZipArchive<BufReader<File>>;

/// Reads the zip: checks names and structure, reads the manifest, then streams
/// every file (to `dest` when given) comparing its hash with the manifest,
/// then checks the database. Returns the manifest, the file count and bytes.
fn scan(
    path: &Path,
    dest: Option<&Path>,
    skip_hashes: bool,
) -> anyhow::Result<(Manifest, usize, u64)> {
    let file = open_regular(path, "the backup")?;
    let mut zip = zip::ZipArchive::new(BufReader::with_capacity(BUF, file))
        .with_context(|| format!("{} is not a readable zip", path.display()))?;
    if zip.has_duplicate_names() {
        bail!("the zip has duplicate entry names");
    }
    // Names and kinds are all checked before anything is written.
    let metas = entry_metas(&mut zip)?;
    let manifest = zip_manifest(&mut zip)?;
    let expected = expected_files(&manifest)?;
    let files = files_matching(&metas, &expected, &manifest)?;
    // Verify and restore read every byte of the backup: the display counts them.
    let what = if dest.is_some() { "restore" } else { "verify" };
    let size: u64 = files.iter().map(|m| expected[m.name.as_str()].bytes).sum();
    let mut stream = Stream {
        progress: gates_core::progress::bytes(what, size),
        dest,
        skip_hashes,
        database: manifest.database.as_deref(),
        buf: vec![0u8; BUF],
        dirs: BTreeSet::new(),
        db_copy: None,
    };
    let mut total = 0u64;
    for m in &files {
        total += stream.entry(&mut zip, m, expected[m.name.as_str()])?;
    }
    stream.progress.finish();
    if let Some(d) = dest {
        sync_extracted(d, stream.dirs)?;
    }
    // The database must be one SQLite can use, at the stated schema version.
    if let Some(db) = &manifest.database {
        let copy = match (dest, &stream.db_copy) {
            (Some(d), _) => d.join(db),
            (None, Some(tmp)) => tmp.path().to_path_buf(),
            (None, None) => bail!("the manifest's database {db:?} was not found in the zip"),
        };
        check_database(&copy, db, manifest.schema_version)?;
    }
    Ok((manifest, files.len(), total))
}

/// Every entry's name (safe, unique) and kind; links are refused.
fn entry_metas(zip: &mut Archive) -> anyhow::Result<Vec<EntryMeta>> {
    let mut metas = Vec::with_capacity(zip.len());
    let mut seen = BTreeSet::new();
    for i in 0..zip.len() {
        let entry = zip
            .by_index_raw(i)
            .with_context(|| format!("reading entry #{i}"))?;
        let name = std::str::from_utf8(entry.name_raw())
            .map_err(|_| anyhow!("entry #{i} has a name that is not UTF-8"))?
            .to_string();
        check_entry_name(&name).map_err(|e| anyhow!("unsafe entry: {e}"))?;
        let key = name.trim_end_matches('/').to_string();
        if !seen.insert(key) {
            bail!("the zip has duplicate entry names ({name:?})");
        }
        let is_symlink = entry.is_symlink();
        let is_dir = entry.is_dir();
        let mode = entry.unix_mode();
        drop(entry);
        if is_symlink {
            let mut target = String::new();
            zip.by_index(i)?.take(4096).read_to_string(&mut target).ok();
            if link_stays_inside(&name, &target) {
                bail!("unsafe entry: {name:?} is a symbolic link (to {target:?}); backups hold regular files only");
            }
            bail!(
                "unsafe entry: {name:?} is a symbolic link to {target:?}, which leaves the target"
            );
        }
        metas.push(EntryMeta {
            index: i,
            name,
            is_dir,
            mode,
        });
    }
    Ok(metas)
}

/// The manifest inside the zip, of a format this version reads.
fn zip_manifest(zip: &mut Archive) -> anyhow::Result<Manifest> {
    let manifest: Manifest = {
        let entry = zip
            .by_name(MANIFEST)
            .map_err(|_| anyhow!("the zip has no {MANIFEST}"))?;
        if entry.size() > MANIFEST_LIMIT {
            bail!("{MANIFEST} is implausibly large ({} bytes)", entry.size());
        }
        let mut text = Vec::new();
        entry
            .take(MANIFEST_LIMIT)
            .read_to_end(&mut text)
            .context("reading the manifest")?;
        serde_json::from_slice(&text).context("the manifest is not valid")?
    };
    if manifest.format > FORMAT {
        bail!(
            "the manifest has format {}, newer than this tool reads ({FORMAT}); use a newer backup_dhash",
            manifest.format
        );
    }
    Ok(manifest)
}

/// The manifest's files by path: safe names, each once, release files under
/// the backup's release.
fn expected_files(manifest: &Manifest) -> anyhow::Result<BTreeMap<&str, &FileEntry>> {
    let mut expected: BTreeMap<&str, &FileEntry> = BTreeMap::new();
    for f in &manifest.files {
        check_entry_name(&f.path).map_err(|e| anyhow!("manifest: {e}"))?;
        if f.path == MANIFEST
            || f.path.ends_with('/')
            || expected.insert(f.path.as_str(), f).is_some()
        {
            bail!("the manifest lists {:?} twice or as a non-file", f.path);
        }
        if let Some(rest) = f.path.strip_prefix("release/") {
            let id = rest.split('/').next().unwrap_or_default();
            if manifest.release.as_deref() != Some(id) {
                bail!(
                    "manifest entry {:?} is not under the backup's release {:?}",
                    f.path,
                    manifest.release
                );
            }
        }
    }
    Ok(expected)
}

/// The zip's files, which must be exactly the manifest's (and hold its database).
fn files_matching<'m>(
    metas: &'m [EntryMeta],
    expected: &BTreeMap<&str, &FileEntry>,
    manifest: &Manifest,
) -> anyhow::Result<Vec<&'m EntryMeta>> {
    let files: Vec<&EntryMeta> = metas
        .iter()
        .filter(|m| !m.is_dir && m.name != MANIFEST)
        .collect();
    for m in &files {
        if !expected.contains_key(m.name.as_str()) {
            bail!(
                "the zip holds {:?}, which the manifest does not list",
                m.name
            );
        }
    }
    if files.len() != expected.len() {
        let present: BTreeSet<&str> = files.iter().map(|m| m.name.as_str()).collect();
        let missing: Vec<&&str> = expected.keys().filter(|k| !present.contains(**k)).collect();
        bail!("the manifest lists files missing from the zip: {missing:?}");
    }
    if let Some(db) = &manifest.database {
        if !expected.contains_key(db.as_str()) || !db.starts_with("data/") {
            bail!("the manifest's database {db:?} is not a data/ file of the backup");
        }
    }
    Ok(files)
}

/// Streaming the zip's files: the reader checks each entry's CRC at its end.
/// Without a destination, the database is copied to a temporary file for its
/// SQLite checks (the bytes checked are the bytes hashed).
struct Stream<'a> {
    progress: gates_core::progress::Bar,
    dest: Option<&'a Path>,
    skip_hashes: bool,
    /// The manifest's database entry.
    database: Option<&'a str>,
    buf: Vec<u8>,
    /// Folders created under `dest` (synced at the end).
    dirs: BTreeSet<PathBuf>,
    db_copy: Option<tempfile::NamedTempFile>,
}

impl Stream<'_> {
    /// Streams one entry (to its output, if any), checks it against the
    /// manifest, and returns its size.
    fn entry(&mut self, zip: &mut Archive, m: &EntryMeta, want: &FileEntry) -> anyhow::Result<u64> {
        let mut entry = zip
            .by_index(m.index)
            .with_context(|| format!("reading {}", m.name))?;
        self.progress.set_message(m.name.as_str());
        let mut out = self.output(&m.name)?;
        let mut hasher = Sha256::new();
        let mut bytes = 0u64;
        loop {
            let n = match entry.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(anyhow!("{}: {e} (the zip is corrupt)", m.name)),
            };
            if !self.skip_hashes {
                hasher.update(&self.buf[..n]);
            }
            if let Some(o) = out.as_mut() {
                o.write_all(&self.buf[..n])
                    .with_context(|| format!("writing {}", m.name))?;
            }
            bytes += n as u64;
            self.progress.inc(n as u64);
        }
        if !self.skip_hashes {
            let got = hex::encode(hasher.finalize());
            if got != want.sha256 || bytes != want.bytes {
                bail!(
                    "{}: content does not match the manifest (manifest: {} bytes, sha256 {}; zip: {bytes} bytes, sha256 {got})",
                    m.name,
                    want.bytes,
                    want.sha256
                );
            }
        }
        match (out, self.dest) {
            (Some(o), None) => o
                .sync_all()
                .context("writing the temporary copy of the database")?,
            (Some(o), Some(_)) => finish_extracted(&o, &m.name, want.mode.or(m.mode))?,
            (None, _) => {}
        }
        Ok(bytes)
    }

    /// Where an entry's bytes go: its file under `dest`, the temporary copy
    /// of the database, or nowhere.
    fn output(&mut self, name: &str) -> anyhow::Result<Option<File>> {
        if let Some(d) = self.dest {
            let target = d.join(name);
            if let Some(parent) = target.parent() {
                fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
                self.dirs.insert(parent.to_path_buf());
            }
            let f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&target)
                .with_context(|| format!("creating {}", target.display()))?;
            return Ok(Some(f));
        }
        if self.database != Some(name) {
            return Ok(None);
        }
        let tmp = tempfile::Builder::new()
            .prefix(".dhash-verify-")
            .suffix(".sqlite3")
            .tempfile()
            .context("creating a temporary copy of the database to check it (set TMPDIR to a folder with room)")?;
        let f = tmp
            .as_file()
            .try_clone()
            .context("opening the temporary copy of the database")?;
        self.db_copy = Some(tmp);
        Ok(Some(f))
    }
}

/// An extracted file gets its recorded mode and is synced.
fn finish_extracted(o: &File, name: &str, mode: Option<u32>) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = mode.unwrap_or(0o644) & 0o777;
        o.set_permissions(fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting the mode of {name}"))?;
    }
    #[cfg(not(unix))]
    let _ = mode;
    o.sync_all().with_context(|| format!("syncing {name}"))
}

/// The three top folders always exist after an extraction; every folder
/// written to is synced.
fn sync_extracted(d: &Path, mut dirs: BTreeSet<PathBuf>) -> anyhow::Result<()> {
    for sub in ["data", "release", "config"] {
        fs::create_dir_all(d.join(sub))
            .with_context(|| format!("creating {}", d.join(sub).display()))?;
        dirs.insert(d.join(sub));
    }
    dirs.insert(d.to_path_buf());
    for dir in &dirs {
        gates_core::fsutil::fsync_dir(dir).with_context(|| format!("syncing {}", dir.display()))?;
    }
    Ok(())
}

/// `file:` URI of a path for SQLite (everything but unreserved bytes and `/`
/// percent-encoded).
fn sqlite_uri(path: &Path) -> String {
    let mut out = String::from("file:");
    for b in path.as_os_str().as_encoded_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(b) {
            out.push(*b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Checks a database snapshot of a backup (`entry` is its path inside the
/// zip, for messages): SQLite opens it read-only and immutable (nothing is
/// written beside it), `PRAGMA integrity_check` says `ok`, and the highest
/// version in its `schema_migrations` table equals `schema_version` (None: no
/// such table, or no rows).
pub fn check_database(file: &Path, entry: &str, schema_version: Option<i64>) -> anyhow::Result<()> {
    use rusqlite::{Connection, OpenFlags};
    let conn = Connection::open_with_flags(
        format!("{}?immutable=1", sqlite_uri(file)),
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| anyhow!("the database {entry} in the backup cannot be opened by SQLite: {e}"))?;
    let rows = (|| -> rusqlite::Result<Vec<String>> {
        let mut stmt = conn.prepare("PRAGMA integrity_check(20)")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.collect()
    })()
    .map_err(|e| {
        anyhow!("the database {entry} in the backup is not a valid SQLite database: {e}")
    })?;
    if rows != ["ok"] {
        bail!(
            "the database {entry} in the backup fails SQLite's integrity check: {}",
            rows.join("; ")
        );
    }
    let found = crate::snapshot::schema_version(&conn).map_err(|e| {
        anyhow!("the database {entry} in the backup has an unreadable schema_migrations table: {e}")
    })?;
    if found != schema_version {
        let show = |v: Option<i64>| v.map_or_else(|| "none".to_string(), |v| v.to_string());
        bail!(
            "the database {entry} in the backup is at schema version {} (its schema_migrations table), but the manifest says {}: the snapshot is not the one the manifest describes",
            show(found),
            show(schema_version)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names() {
        for ok in [
            "manifest.json",
            "data/dhash.sqlite3",
            "release/v1-abc/bin/x",
            "config/a.json",
            "data/",
            "data/sub/",
        ] {
            assert!(check_entry_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "../x",
            "/abs",
            "data/../../x",
            "data/./x",
            "data//x",
            "x.txt",
            "release/only",
            "C:/x",
            "data\\x",
            "",
            "manifest.json/",
        ] {
            assert!(check_entry_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn database_checks_integrity_and_schema_version() {
        let d = tempfile::tempdir().expect("tempdir");
        // A folder name SQLite's URI syntax would otherwise misread.
        let dir = d.path().join("a b?#%x");
        fs::create_dir_all(&dir).expect("dir");
        let live = dir.join("live.sqlite3");
        let conn = rusqlite::Connection::open(&live).expect("open");
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; CREATE TABLE schema_migrations(version INTEGER PRIMARY KEY);
             INSERT INTO schema_migrations VALUES (1), (2); CREATE TABLE t(x); INSERT INTO t VALUES (1);",
        )
        .expect("setup");
        // A snapshot taken the way backup_dhash takes it (a WAL-mode file).
        let snap = dir.join("snap.sqlite3");
        {
            let mut dst = rusqlite::Connection::open(&snap).expect("dst");
            let b = rusqlite::backup::Backup::new(&conn, &mut dst).expect("backup");
            b.step(-1).expect("step");
        }
        let listing = || -> Vec<String> {
            let mut v: Vec<String> = fs::read_dir(&dir)
                .expect("dir")
                .flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect();
            v.sort();
            v
        };
        let before = listing();
        let snap_bytes = fs::read(&snap).expect("read");
        check_database(&snap, "data/dhash.sqlite3", Some(2)).expect("a good snapshot passes");
        assert_eq!(listing(), before, "the check creates nothing beside it");
        assert_eq!(fs::read(&snap).expect("read"), snap_bytes, "nor changes it");

        let e = format!(
            "{:#}",
            check_database(&snap, "data/dhash.sqlite3", Some(3)).expect_err("schema")
        );
        assert!(
            e.contains("schema version 2") && e.contains("manifest says 3"),
            "{e}"
        );
        let e = format!(
            "{:#}",
            check_database(&snap, "data/dhash.sqlite3", None).expect_err("schema")
        );
        assert!(e.contains("manifest says none"), "{e}");

        let garbage = dir.join("garbage.sqlite3");
        fs::write(
            &garbage,
            b"this is not a database at all, just text. ".repeat(200),
        )
        .expect("write");
        let e = format!(
            "{:#}",
            check_database(&garbage, "data/dhash.sqlite3", Some(2)).expect_err("garbage")
        );
        assert!(
            e.contains("data/dhash.sqlite3") && e.contains("not a valid SQLite database"),
            "{e}"
        );

        // A valid header with damaged pages.
        let mut bytes = fs::read(&snap).expect("read");
        let len = bytes.len();
        for b in &mut bytes[len / 2..] {
            *b = 0x5a;
        }
        let broken = dir.join("broken.sqlite3");
        fs::write(&broken, &bytes).expect("write");
        assert!(check_database(&broken, "data/dhash.sqlite3", Some(2)).is_err());

        // No schema_migrations table: version none.
        let plain = dir.join("plain.sqlite3");
        rusqlite::Connection::open(&plain)
            .expect("open")
            .execute_batch("CREATE TABLE t(x);")
            .expect("plain");
        check_database(&plain, "data/x", None).expect("no table, no version");
    }

    #[test]
    fn sidecar_names_in_gnu_escaped_form() {
        assert_eq!(unescape_name("a\\\\b\\nc"), "a\\b\nc");
        let d = tempfile::tempdir().expect("tempdir");
        let zip = d.path().join("x.zip");
        fs::write(
            d.path().join("x.zip.sha256"),
            format!("\\{}  /p/a\\\\b/x.zip\n", "a".repeat(64)),
        )
        .expect("write");
        let (hex, name) = read_sidecar(&zip).expect("read");
        assert_eq!(hex, "a".repeat(64));
        assert_eq!(name, "/p/a\\b/x.zip");
    }

    #[test]
    fn links() {
        assert!(link_stays_inside("data/a/link", "../b"));
        assert!(!link_stays_inside("data/link", "../../etc/passwd"));
        assert!(!link_stays_inside("data/link", "/etc/passwd"));
    }
}

/// Property tests (issue 13): a backup's bytes, or the manifest inside a
/// well-formed zip, can be anything; reading them is an error value, never a
/// panic.
#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;
    use std::io::Write;

    fn zip_with_manifest(text: &[u8]) -> Vec<u8> {
        let mut zw = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        zw.start_file(MANIFEST, zip::write::SimpleFileOptions::default())
            .expect("start");
        zw.write_all(text).expect("write");
        zw.finish().expect("finish").into_inner()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn arbitrary_bytes_are_not_a_backup(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("dhash_production_x.zip");
            std::fs::write(&path, &bytes).expect("write");
            prop_assert!(read_manifest(&path).is_err());
        }

        #[test]
        fn any_manifest_text_is_parsed_or_refused(text in prop_oneof![
            "\\PC{0,200}",
            prop::collection::btree_map("[a-z_]{1,10}", "\\PC{0,12}", 0..6)
                .prop_map(|m| serde_json::to_string(&m).expect("json")),
        ]) {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("dhash_production_x.zip");
            std::fs::write(&path, zip_with_manifest(text.as_bytes())).expect("write");
            let _ = read_manifest(&path);
        }
    }
}
