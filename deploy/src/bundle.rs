//! Verifying a release folder (a bundle in dist/ or an installed release)
//! against its `release.json`, and copying one.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use dhash_migrate::release::{ReleaseManifest, MANIFEST};
use sha2::{Digest, Sha256};

/// The result of a successful verification.
#[derive(Debug, Clone)]
pub struct Verified {
    pub manifest: ReleaseManifest,
    pub files: usize,
    /// Bytes of every file, release.json included.
    pub bytes: u64,
}

pub use gates_core::fsutil::sha256_file;

/// The id's hash part: first 8 hex of SHA-256 over the sorted
/// `"<path> <sha>\n"` lines of `files` (SPEC "Release bundle").
pub fn id_hash(manifest: &ReleaseManifest) -> String {
    let mut h = Sha256::new();
    for (path, sha) in &manifest.files {
        h.update(format!("{path} {sha}\n").as_bytes());
    }
    hex::encode(h.finalize())[..8].to_string()
}

/// Every regular file under `dir`, as `/`-separated relative paths.
fn walk(dir: &Path, rel: &str, out: &mut Vec<(String, PathBuf)>) -> anyhow::Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("reading {}", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().to_string();
        let rel_path = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        let ft = e
            .file_type()
            .with_context(|| format!("reading {}", e.path().display()))?;
        if ft.is_symlink() {
            bail!(
                "{} is a symbolic link; a release holds regular files only",
                e.path().display()
            );
        } else if ft.is_dir() {
            walk(&e.path(), &rel_path, out)?;
        } else if ft.is_file() {
            out.push((rel_path, e.path()));
        } else {
            // A FIFO would block the reader forever, a device read garbage.
            bail!(
                "{} is {}; a release holds regular files only",
                e.path().display(),
                gates_core::fsutil::describe_file_type(&ft)
            );
        }
    }
    Ok(())
}

/// Checks a release folder: every file listed in release.json exists with
/// its SHA-256, no file is unlisted, and the id matches the listed hashes.
/// The error lists every difference found.
pub fn verify_release(dir: &Path) -> anyhow::Result<Verified> {
    let manifest = ReleaseManifest::read(dir)?;
    let mut problems = Vec::new();
    let mut found = Vec::new();
    walk(dir, "", &mut found)?;
    let mut bytes = 0u64;
    let mut seen = BTreeSet::new();
    for (rel, path) in &found {
        bytes += fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        if rel == MANIFEST {
            continue;
        }
        seen.insert(rel.clone());
        match manifest.files.get(rel) {
            None => problems.push(format!("{rel}: not listed in {MANIFEST}")),
            Some(want) => {
                let have = sha256_file(path)?;
                if !have.eq_ignore_ascii_case(want) {
                    problems.push(format!("{rel}: sha256 {have}, {MANIFEST} says {want}"));
                }
            }
        }
    }
    for rel in manifest.files.keys() {
        if !seen.contains(rel) {
            problems.push(format!("{rel}: listed in {MANIFEST} but missing"));
        }
    }
    let expected_id = format!("{}-{}", manifest.tag, id_hash(&manifest));
    if manifest.id != expected_id {
        problems.push(format!(
            "id {:?} does not match its files (expected {expected_id:?}): {MANIFEST} was edited",
            manifest.id
        ));
    }
    for required in ["bin/dhash-service", "config.json"] {
        if !manifest.files.contains_key(required) {
            problems.push(format!("{required}: missing from the release"));
        }
    }
    if !problems.is_empty() {
        bail!(
            "{} failed verification: {}",
            dir.display(),
            problems.join("; ")
        );
    }
    Ok(Verified {
        files: manifest.files.len(),
        manifest,
        bytes,
    })
}

/// Copies a release folder file by file (permissions kept, each file
/// synced), hashing what it copies: a file that does not match `expected`
/// (release.json's `files`) fails the copy, so a bundle changed after its
/// verification is never installed. One read of every byte.
pub fn copy_release(from: &Path, to: &Path, expected: &ReleaseManifest) -> anyhow::Result<()> {
    let mut files = Vec::new();
    walk(from, "", &mut files)?;
    fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    // On a terminal only: bytes copied, rate, time left.
    let size = files
        .iter()
        .filter_map(|(_, src)| fs::metadata(src).ok())
        .map(|m| m.len())
        .sum();
    let progress = gates_core::progress::bytes("install", size);
    for (rel, src) in files {
        progress.set_message(rel.as_str());
        let dst = to.join(&rel);
        if let Some(parent) = dst.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        let mut input = gates_core::fsutil::open_regular(&src, "the release file")?;
        let mut output =
            File::create(&dst).with_context(|| format!("creating {}", dst.display()))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = input
                .read(&mut buf)
                .with_context(|| format!("reading {}", src.display()))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            output
                .write_all(&buf[..n])
                .with_context(|| format!("writing {}", dst.display()))?;
            progress.inc(n as u64);
        }
        let perms = input
            .metadata()
            .with_context(|| format!("reading {}", src.display()))?
            .permissions();
        output
            .set_permissions(perms)
            .with_context(|| format!("setting permissions of {}", dst.display()))?;
        output
            .sync_all()
            .with_context(|| format!("syncing {}", dst.display()))?;
        let have = hex::encode(h.finalize());
        if rel != MANIFEST {
            match expected.files.get(&rel) {
                Some(want) if want.eq_ignore_ascii_case(&have) => {}
                Some(want) => bail!(
                    "{} changed while being installed: sha256 {have}, release.json says {want}",
                    src.display()
                ),
                None => bail!("{} is not listed in release.json", src.display()),
            }
        }
    }
    progress.finish();
    if ReleaseManifest::read(to)? != *expected {
        bail!(
            "{} changed while being installed",
            from.join(MANIFEST).display()
        );
    }
    for rel in expected.files.keys() {
        if !to.join(rel).is_file() {
            bail!("{rel} is missing from {}", from.display());
        }
    }
    Ok(())
}

/// The active (non-default) faults of a bundle's config.json, for warnings.
pub fn active_faults(dir: &Path) -> anyhow::Result<Vec<String>> {
    let path = dir.join("config.json");
    let mut text = String::new();
    gates_core::fsutil::open_regular(&path, "the service config")?
        .read_to_string(&mut text)
        .with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))?;
    if !v.is_object() {
        bail!("{}: expected a JSON object", path.display());
    }
    let mut out = Vec::new();
    if let Some(faults) = v.get("faults").and_then(|f| f.as_object()) {
        for (k, val) in faults {
            let on = match val {
                serde_json::Value::Bool(b) => *b,
                serde_json::Value::Number(n) => n.as_f64().is_some_and(|x| x != 0.0),
                serde_json::Value::Null => false,
                _ => true,
            };
            if on {
                out.push(format!("{k}={val}"));
            }
        }
    }
    Ok(out)
}
