//! Helpers shared by the backup and rollback integration tests (the rollback
//! crate includes this file with `#[path]`).
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};
use testkit::TestProject;

/// Where cached bundles live (kept between runs; rebuilt when the service binary changes).
fn cache_root() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dhash-backup-tests")
}

/// A release bundle built by the real `dhash-service bundle`, slimmed for test
/// speed: `bin/dhash-service` is a two-line wrapper that `exec`s the workspace's
/// debug `dhash-service` (the same program; the process's command line still
/// names dhash-service). Backups of a 90 MB debug binary take ~25 s in a debug
/// build, which would make these tests minutes long. Cached per tag + faults.
pub fn slim_bundle(tag: &str, faults: &[(&str, &str)]) -> PathBuf {
    static LOCK: Mutex<()> = Mutex::new(());
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let service = BUILT
        .get_or_init(|| testkit::bin_path("dhash-service"))
        .clone();
    let stamp = fs::metadata(&service)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let key: String = faults.iter().map(|(k, v)| format!("_{k}-{v}")).collect();
    let dir = cache_root().join(format!("{stamp}-{tag}{key}"));
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let bundle = dir.join(format!("dhash-{tag}"));
    if bundle.join("release.json").is_file() {
        return bundle;
    }
    let tmp = cache_root().join(format!(
        ".{stamp}-{tag}{key}.{}.partial",
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).unwrap();
    let mut cmd = Command::new(&service);
    cmd.args(["bundle", "--tag", tag, "--out"])
        .arg(&tmp)
        .stdin(Stdio::null());
    for (k, v) in faults {
        cmd.arg("--fault").arg(format!("{k}={v}"));
    }
    let out = cmd.output().expect("running dhash-service bundle");
    assert!(
        out.status.success(),
        "bundle failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bin = tmp.join(format!("dhash-{tag}")).join("bin/dhash-service");
    fs::write(
        &bin,
        format!("#!/bin/sh\nexec '{}' \"$@\"\n", service.display()),
    )
    .unwrap();
    set_mode(&bin, 0o755);
    let _ = fs::remove_dir_all(&dir);
    // Bundles of older service binaries are of no use any more.
    for e in fs::read_dir(cache_root()).into_iter().flatten().flatten() {
        let n = e.file_name().to_string_lossy().to_string();
        if !n.starts_with('.') && !n.starts_with(&format!("{stamp}-")) {
            let _ = fs::remove_dir_all(e.path());
        }
    }
    fs::create_dir_all(dir.parent().unwrap()).unwrap();
    fs::rename(&tmp, &dir).unwrap();
    bundle
}

pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A test project whose `staging` runs release `v1` (started when `start`).
pub fn project_with_release(start: bool) -> (TestProject, String) {
    let tp = TestProject::new();
    let bundle = slim_bundle("v1", &[]);
    let id = if start {
        tp.install_and_start("staging", &bundle)
    } else {
        tp.install("staging", &bundle)
    };
    (tp, id)
}

/// A golden PNG of a bundle.
pub fn golden_png(bundle: &Path, n: usize) -> Vec<u8> {
    let mut pngs: Vec<PathBuf> = fs::read_dir(bundle.join("golden"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    pngs.sort();
    fs::read(&pngs[n % pngs.len()]).unwrap()
}

/// POSTs a PNG to the environment's hash endpoint (a real request): returns the row id.
pub fn post_image(tp: &TestProject, env: &str, png: &[u8]) -> i64 {
    let url = format!("{}/api/dhash/hash", tp.base_url(env));
    let a = gates_core::probe::post(&url, "image/png", png, Duration::from_secs(10)).expect("POST");
    assert_eq!(a.status, 200, "POST {url}: {}", a.body);
    let v: Value = serde_json::from_str(&a.body).expect("json answer");
    v["id"].as_i64().expect("id")
}

/// Every row of every table, as text, per table (ordered by rowid).
pub fn db_rows(db: &Path) -> BTreeMap<String, Vec<String>> {
    let conn = rusqlite::Connection::open_with_flags(
        db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .unwrap_or_else(|e| panic!("opening {}: {e}", db.display()));
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut out = BTreeMap::new();
    for t in tables {
        let mut stmt = conn
            .prepare(&format!("SELECT * FROM \"{t}\" ORDER BY rowid"))
            .unwrap();
        let n = stmt.column_count();
        let rows: Vec<String> = stmt
            .query_map([], |r| {
                let mut cells = Vec::with_capacity(n);
                for i in 0..n {
                    let v: rusqlite::types::Value = r.get(i)?;
                    cells.push(format!("{v:?}"));
                }
                Ok(cells.join("|"))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        out.insert(t, rows);
    }
    out
}

/// SHA-256 of every file under `dir`, by relative path.
pub fn tree_hashes(dir: &Path) -> BTreeMap<String, String> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for e in fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                let rel = p.strip_prefix(base).unwrap().to_string_lossy().to_string();
                out.insert(rel, hex::encode(Sha256::digest(fs::read(&p).unwrap())));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Runs a command, returns its output (stdout events parsed by the caller).
pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("running the command")
}

pub fn events(out: &Output) -> Vec<Value> {
    testkit::events(&out.stdout)
}

pub fn event<'a>(evs: &'a [Value], name: &str) -> Option<&'a Value> {
    evs.iter().find(|e| e["event"] == name)
}

pub fn show(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `backup_dhash --env <env>` and returns the new zip's absolute path.
pub fn make_backup(tp: &TestProject, env: &str) -> PathBuf {
    let out = run(tp.cmd("backup_dhash").args(["--env", env]));
    assert!(out.status.success(), "backup failed: {}", show(&out));
    let evs = events(&out);
    let v = event(&evs, "backup.verified")
        .unwrap_or_else(|| panic!("no backup.verified: {}", show(&out)));
    PathBuf::from(v["path"].as_str().unwrap())
}

/// The seeds' command, run from the project root:
/// `LATEST_BACKUP=$(ls -1 backups/dhash_*.zip | sort -r | head -n1); sha256sum -c "${LATEST_BACKUP}.sha256"`.
pub fn seed_verify_latest(root: &Path) -> (bool, String) {
    let out = Command::new("bash")
        .arg("-c")
        .arg(r#"LATEST_BACKUP=$(ls -1 backups/dhash_*.zip | sort -r | head -n1); echo "$LATEST_BACKUP"; sha256sum -c "${LATEST_BACKUP}.sha256""#)
        .current_dir(root)
        .stdin(Stdio::null())
        .output()
        .expect("bash");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// (Re)writes the sidecar of a zip the way backup_dhash does.
pub fn write_sidecar(root: &Path, zip: &Path) {
    let hash = hex::encode(Sha256::digest(fs::read(zip).unwrap()));
    let shown = zip
        .strip_prefix(root)
        .map(Path::to_path_buf)
        .unwrap_or_else(|_| zip.to_path_buf());
    fs::write(
        format!("{}.sha256", zip.display()),
        format!("{hash}  {}\n", shown.display()),
    )
    .unwrap();
}

/// Flips one bit in the middle of a file.
pub fn flip_bit(path: &Path, at: Option<u64>) {
    let mut bytes = fs::read(path).unwrap();
    let i = at.map(|a| a as usize).unwrap_or(bytes.len() / 2);
    bytes[i] ^= 0x10;
    fs::write(path, bytes).unwrap();
}

/// Names in a folder matching `dhash_*.zip` (the seeds' glob).
pub fn seed_glob(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    let n = p.file_name().unwrap().to_string_lossy();
                    n.starts_with("dhash_") && n.ends_with(".zip")
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Every file name in a folder.
pub fn names(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Builds a zip with the zip crate: (name, content, symlink?) entries, plus a
/// manifest listing the regular files (so only the crafted part is wrong).
pub fn craft_zip(path: &Path, env: &str, entries: &[(&str, &[u8], bool)]) {
    use zip::write::SimpleFileOptions;
    let f = fs::File::create(path).unwrap();
    let mut z = zip::ZipWriter::new(f);
    let mut files = Vec::new();
    for (name, content, link) in entries {
        if *link {
            z.add_symlink(
                *name,
                String::from_utf8_lossy(content),
                SimpleFileOptions::default(),
            )
            .unwrap();
        } else {
            z.start_file(*name, SimpleFileOptions::default()).unwrap();
            z.write_all(content).unwrap();
            files.push(serde_json::json!({"path": name, "bytes": content.len(),
                "sha256": hex::encode(Sha256::digest(content))}));
        }
    }
    let manifest = serde_json::json!({
        "format": 1, "env": env, "release": "v1-00000000", "schema_version": 1,
        "created_at": "2026-01-01T00:00:00.000Z", "tool": "test", "tool_version": "0",
        "database": null, "files": files,
    });
    z.start_file("manifest.json", SimpleFileOptions::default())
        .unwrap();
    z.write_all(manifest.to_string().as_bytes()).unwrap();
    z.finish().unwrap();
}

/// A zip with two entries of the same name: written as `data/aa` and `data/ab`,
/// then the second name is patched to `data/aa` in the local and central headers
/// (the zip crate refuses to write duplicates itself).
pub fn craft_duplicate_zip(path: &Path, env: &str) {
    craft_zip(
        path,
        env,
        &[("data/aa", b"first", false), ("data/ab", b"second", false)],
    );
    let mut bytes = fs::read(path).unwrap();
    let (from, to) = (b"data/ab", b"data/aa");
    let mut i = 0;
    let mut patched = 0;
    while i + from.len() <= bytes.len() {
        if &bytes[i..i + from.len()] == from {
            bytes[i..i + from.len()].copy_from_slice(to);
            patched += 1;
        }
        i += 1;
    }
    // Local header + central directory; the manifest JSON too.
    assert!(patched >= 2, "patched {patched}");
    fs::write(path, bytes).unwrap();
}
