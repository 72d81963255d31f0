//! `dhash-service bundle`: builds `dist/dhash-<tag>/` (SPEC.md "Release bundle").
//!
//! The bundle is assembled in a temporary folder beside the final one
//! (`.dhash-<tag>.<pid>.partial`), every file synced, then renamed into place,
//! so a half-built bundle never carries the final name. An existing bundle of
//! the same tag is refused unless `force` (then replaced by a rename too).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;
use gates_core::exit::usage_error;
use gates_core::fsutil::fsync_dir;
use gates_core::{Emitter, Exit, Level, ToolError};
use serde_json::json;

use crate::config::ServiceConfig;
use crate::db::BUILTIN_MIGRATIONS;
use crate::{dhash, images};

#[derive(Debug, Clone, Default)]
pub struct BundleOptions {
    pub tag: String,
    /// Parent folder of the bundle; `None` = the project's dist dir.
    pub out: Option<PathBuf>,
    pub faults: Vec<(String, String)>,
    /// Folder of `NNNN_name.up.sql` / `.down.sql`; `None` = built-in ones.
    pub migrations: Option<PathBuf>,
    /// Overrides the schema version (default: highest migration version).
    pub schema_version: Option<i64>,
    pub force: bool,
    /// Check the inputs and emit `bundle.planned`; write nothing.
    pub dry_run: bool,
    /// The service binary to ship; `None` = this executable.
    pub binary: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct BundleInfo {
    pub path: PathBuf,
    pub id: String,
    pub tag: String,
    pub schema_version: i64,
    pub files: BTreeMap<String, String>,
}

pub use gates_core::fsutil::sha256_hex;

/// Release id: `<tag>-<first 8 hex of sha256 over the sorted "path sha\n" lines>`.
pub fn release_id(tag: &str, files: &BTreeMap<String, String>) -> String {
    let mut text = String::new();
    for (path, sha) in files {
        text.push_str(&format!("{path} {sha}\n"));
    }
    format!("{tag}-{}", &sha256_hex(text.as_bytes())[..8])
}

pub use gates_core::release::validate_tag;

/// A migration file name: `NNNN_name.up.sql` or `NNNN_name.down.sql`.
pub fn parse_migration_name(file: &str) -> Option<(i64, bool)> {
    let (stem, up) = if let Some(s) = file.strip_suffix(".up.sql") {
        (s, true)
    } else {
        (file.strip_suffix(".down.sql")?, false)
    };
    let (num, name) = stem.split_once('_')?;
    if num.is_empty() || !num.chars().all(|c| c.is_ascii_digit()) || name.is_empty() {
        return None;
    }
    Some((num.parse().ok()?, up))
}

/// The migrations to ship: (file name, bytes), and the highest up version.
/// Migration files to ship: (file name, contents).
type MigrationFiles = Vec<(String, Vec<u8>)>;

fn migrations(dir: Option<&Path>) -> anyhow::Result<(MigrationFiles, i64)> {
    let mut files: MigrationFiles = match dir {
        None => BUILTIN_MIGRATIONS
            .iter()
            .map(|(n, sql)| (n.to_string(), sql.as_bytes().to_vec()))
            .collect(),
        Some(dir) => {
            let entries = fs::read_dir(dir).map_err(|e| {
                usage_error(format!("cannot read --migrations {}: {e}", dir.display()))
            })?;
            let mut v = Vec::new();
            for entry in entries {
                let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
                let name = entry.file_name().to_string_lossy().to_string();
                if !name.ends_with(".sql") {
                    continue;
                }
                if parse_migration_name(&name).is_none() {
                    return Err(usage_error(format!(
                        "{}: migration files must be named NNNN_name.up.sql or NNNN_name.down.sql",
                        entry.path().display()
                    )));
                }
                let bytes = fs::read(entry.path())
                    .with_context(|| format!("reading {}", entry.path().display()))?;
                v.push((name, bytes));
            }
            v
        }
    };
    files.sort();
    let top = files
        .iter()
        .filter_map(|(n, _)| parse_migration_name(n))
        .filter(|(_, up)| *up)
        .map(|(v, _)| v)
        .max();
    let Some(top) = top else {
        let from = dir
            .map(|d| d.display().to_string())
            .unwrap_or_else(|| "built-in".into());
        return Err(usage_error(format!(
            "no NNNN_name.up.sql migration in {from}"
        )));
    };
    Ok((files, top))
}

fn write_file(
    root: &Path,
    rel: &str,
    bytes: &[u8],
    files: &mut BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let path = root.join(rel);
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut f = fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    std::io::Write::write_all(&mut f, bytes)
        .with_context(|| format!("writing {}", path.display()))?;
    f.sync_all()
        .with_context(|| format!("syncing {}", path.display()))?;
    files.insert(rel.to_string(), sha256_hex(bytes));
    Ok(())
}

fn assemble(
    tmp: &Path,
    opts: &BundleOptions,
    binary: &Path,
) -> anyhow::Result<(String, i64, BTreeMap<String, String>)> {
    let mut files = BTreeMap::new();

    let mut config = ServiceConfig::default();
    config.faults.apply(&opts.faults).map_err(usage_error)?;
    let config_text = serde_json::to_string_pretty(&config)? + "\n";
    write_file(tmp, "config.json", config_text.as_bytes(), &mut files)?;

    let (migs, top) = migrations(opts.migrations.as_deref())?;
    for (name, bytes) in &migs {
        write_file(tmp, &format!("migrations/{name}"), bytes, &mut files)?;
    }
    let schema_version = opts.schema_version.unwrap_or(top);

    // The cheap inputs are checked; now the (large) binary.
    let size = fs::metadata(binary).map(|m| m.len()).unwrap_or(0);
    let progress = gates_core::progress::bytes("bundle", size);
    progress.set_message("bin/dhash-service");
    let exe = fs::read(binary)
        .with_context(|| format!("reading the service binary {}", binary.display()))?;
    write_file(tmp, "bin/dhash-service", &exe, &mut files)?;
    progress.set_position(size);
    progress.finish();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let p = tmp.join("bin/dhash-service");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod {}", p.display()))?;
    }

    let mut manifest = Vec::new();
    for g in images::golden_set().context("generating the golden images")? {
        let rel = format!("golden/{}.png", g.name);
        let r = dhash::hash_bytes(&g.png).with_context(|| format!("hashing golden image {rel}"))?;
        write_file(tmp, &rel, &g.png, &mut files)?;
        manifest.push(json!({"file": rel, "dhash": r.hex(), "confidence": r.confidence}));
    }
    let manifest_text = serde_json::to_string_pretty(&json!({"images": manifest}))? + "\n";
    write_file(
        tmp,
        "golden/manifest.json",
        manifest_text.as_bytes(),
        &mut files,
    )?;

    let id = release_id(&opts.tag, &files);
    let release = json!({
        "id": id,
        "tag": opts.tag,
        "schema_version": schema_version,
        "created_at": gates_core::event::now_rfc3339(),
        "files": files,
        "faults": config.faults.active(),
    });
    let mut ignored = BTreeMap::new();
    write_file(
        tmp,
        "release.json",
        (serde_json::to_string_pretty(&release)? + "\n").as_bytes(),
        &mut ignored,
    )?;
    for d in ["bin", "migrations", "golden", ""] {
        fsync_dir(&tmp.join(d)).with_context(|| format!("syncing {}", tmp.join(d).display()))?;
    }
    Ok((id, schema_version, files))
}

/// Builds the bundle and emits `bundle.created`.
pub fn build(opts: &BundleOptions, em: &Emitter) -> anyhow::Result<BundleInfo> {
    validate_tag(&opts.tag).map_err(usage_error)?;
    let out = output_dir(opts)?;
    let final_dir = out.join(format!("dhash-{}", opts.tag));
    if final_dir.exists() && !opts.force {
        return Err(ToolError::new(
            Exit::Failed,
            anyhow::anyhow!(
                "bundle {} already exists; use a new --tag or --force to replace it",
                final_dir.display()
            ),
        )
        .into());
    }
    if opts.dry_run {
        return plan(opts, final_dir, em);
    }
    let binary = match &opts.binary {
        Some(b) => b.clone(),
        None => std::env::current_exe().context("cannot find this executable to ship it")?,
    };
    let pid = std::process::id();
    let tmp = out.join(format!(".dhash-{}.{pid}.partial", opts.tag));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let (id, schema_version, files) = match assemble(&tmp, opts, &binary) {
        Ok(v) => v,
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    let old = out.join(format!(".dhash-{}.{pid}.old.partial", opts.tag));
    let replaced = place(&tmp, &final_dir, &old, &out)?;
    em.emit(
        "bundle.created",
        Level::Info,
        format!("bundle {} ({id}) created", final_dir.display()),
        json!({
            "path": final_dir,
            "id": id,
            "tag": opts.tag,
            "schema_version": schema_version,
            "files": files.len(),
            "faults": opts.faults.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
            "replaced": replaced,
        }),
    );
    Ok(BundleInfo {
        path: final_dir,
        id,
        tag: opts.tag.clone(),
        schema_version,
        files,
    })
}

/// The folder the bundle goes in, absolute: created for a real build,
/// never for a dry run.
fn output_dir(opts: &BundleOptions) -> anyhow::Result<PathBuf> {
    let out = match &opts.out {
        Some(o) => o.clone(),
        None => gates_core::project::Project::discover()?
            .dist_dir()
            .to_path_buf(),
    };
    if opts.dry_run {
        std::path::absolute(&out).with_context(|| format!("resolving {}", out.display()))
    } else {
        fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
        out.canonicalize()
            .with_context(|| format!("resolving {}", out.display()))
    }
}

/// The dry run: checks every input, writes nothing, emits `bundle.planned`.
fn plan(opts: &BundleOptions, final_dir: PathBuf, em: &Emitter) -> anyhow::Result<BundleInfo> {
    let mut config = ServiceConfig::default();
    config.faults.apply(&opts.faults).map_err(usage_error)?;
    let (migs, top) = migrations(opts.migrations.as_deref())?;
    let schema_version = opts.schema_version.unwrap_or(top);
    em.emit(
        "bundle.planned",
        Level::Info,
        format!("would create bundle {} (dry run)", final_dir.display()),
        json!({
            "path": final_dir,
            "tag": opts.tag,
            "schema_version": schema_version,
            "migrations": migs.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
            "faults": config.faults.active(),
            "dry_run": true,
        }),
    );
    Ok(BundleInfo {
        path: final_dir,
        id: String::new(),
        tag: opts.tag.clone(),
        schema_version,
        files: BTreeMap::new(),
    })
}

/// Renames the assembled `tmp` to `final_dir`, an existing bundle moved
/// aside to `old` first and removed after (put back if the rename fails).
/// Returns whether a bundle was replaced.
fn place(tmp: &Path, final_dir: &Path, old: &Path, out: &Path) -> anyhow::Result<bool> {
    let replaced = final_dir.exists();
    let placed = (|| -> anyhow::Result<()> {
        if replaced {
            fs::rename(final_dir, old)
                .with_context(|| format!("moving the old {} aside", final_dir.display()))?;
        }
        fs::rename(tmp, final_dir)
            .with_context(|| format!("renaming {} to {}", tmp.display(), final_dir.display()))?;
        fsync_dir(out).with_context(|| format!("syncing {}", out.display()))?;
        Ok(())
    })();
    if let Err(e) = placed {
        let _ = fs::remove_dir_all(tmp);
        if replaced && !final_dir.exists() {
            let _ = fs::rename(old, final_dir);
        }
        return Err(e);
    }
    if replaced {
        let _ = fs::remove_dir_all(old);
    }
    Ok(replaced)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_tags_and_ids() {
        assert_eq!(
            parse_migration_name("0001_create_hashes.up.sql"),
            Some((1, true))
        );
        assert_eq!(parse_migration_name("0012_x.down.sql"), Some((12, false)));
        assert_eq!(parse_migration_name("x_1.up.sql"), None);
        assert_eq!(parse_migration_name("0001.up.sql"), None);
        assert!(validate_tag("v1.2.3-rc_1").is_ok());
        assert!(validate_tag("../evil").is_err());
        assert!(validate_tag("").is_err());
        let mut files = BTreeMap::new();
        files.insert("a".to_string(), "00".to_string());
        let expected = format!("v1-{}", &sha256_hex(b"a 00\n")[..8]);
        assert_eq!(release_id("v1", &files), expected);
    }

    #[test]
    fn builtin_migrations_reach_the_builtin_version() {
        let (files, top) = migrations(None).unwrap();
        assert_eq!(top, crate::db::BUILTIN_SCHEMA_VERSION);
        assert_eq!(files.len(), 4);
    }

    #[test]
    fn golden_images_are_confident_and_stable() {
        let a = images::golden_set().unwrap();
        let b = images::golden_set().unwrap();
        for (x, y) in a.iter().zip(b.iter()) {
            assert_eq!(x.png, y.png, "{} is deterministic", x.name);
            let r = dhash::hash_bytes(&x.png).unwrap();
            assert!(
                r.confidence >= dhash::DEFAULT_LOW_CONFIDENCE,
                "{} confidence {}",
                x.name,
                r.confidence
            );
        }
    }
}
