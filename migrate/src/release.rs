//! Release bundles (`dist/dhash-<tag>/release.json`) and installed releases
//! (`<install_root>/releases/<id>/`): reading their manifest and finding them.
//! Shared by migrate (where migrations come from) and deploy.

use std::fs;
use std::path::{Path, PathBuf};

use gates_core::config::EnvConfig;

pub use gates_core::release::{ReleaseManifest, MANIFEST};
pub const BUNDLE_PREFIX: &str = "dhash-";

/// A bundle found in a dist folder.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub manifest: ReleaseManifest,
}

/// Every readable bundle `dist/dhash-*/release.json`, oldest first (by
/// created_at, then tag). Folders without a readable manifest are skipped.
pub fn list_bundles(dist: &Path) -> Vec<Bundle> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dist) else {
        return out;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if !name.starts_with(BUNDLE_PREFIX) || !entry.path().is_dir() {
            continue;
        }
        if let Ok(manifest) = ReleaseManifest::read(&entry.path()) {
            out.push(Bundle {
                dir: entry.path(),
                manifest,
            });
        }
    }
    out.sort_by(|a, b| {
        (
            a.manifest.created(),
            &a.manifest.created_at,
            &a.manifest.tag,
        )
            .cmp(&(
                b.manifest.created(),
                &b.manifest.created_at,
                &b.manifest.tag,
            ))
    });
    out
}

/// The tags available in `dist`, for error messages.
pub fn available_tags(dist: &Path) -> String {
    let tags: Vec<String> = list_bundles(dist)
        .into_iter()
        .map(|b| b.manifest.tag)
        .collect();
    if tags.is_empty() {
        format!(
            "none (no {BUNDLE_PREFIX}*/{MANIFEST} in {})",
            dist.display()
        )
    } else {
        tags.join(", ")
    }
}

/// The bundle of `tag`: `dist/dhash-<tag>/`.
pub fn bundle_for_tag(dist: &Path, tag: &str) -> anyhow::Result<Bundle> {
    let dir = dist.join(format!("{BUNDLE_PREFIX}{tag}"));
    if !dir.join(MANIFEST).is_file() {
        return Err(gates_core::exit::usage_error(format!(
            "no release bundle for tag {tag:?} ({} has no {MANIFEST}); available tags: {}",
            dir.display(),
            available_tags(dist)
        )));
    }
    let manifest = ReleaseManifest::read(&dir)?;
    Ok(Bundle { dir, manifest })
}

/// The newest bundle in `dist` by created_at.
pub fn newest_bundle(dist: &Path) -> Option<Bundle> {
    list_bundles(dist).pop()
}

/// The release `current` points at, if any: (folder, manifest).
pub fn current_release(env: &EnvConfig) -> Option<(PathBuf, ReleaseManifest)> {
    let link = env.current_link();
    let target = fs::canonicalize(&link).ok()?;
    let manifest = ReleaseManifest::read(&target).ok()?;
    Some((target, manifest))
}

/// Where migrations come from when the operator says `--release X`, or not.
#[derive(Debug, Clone)]
pub struct MigrationSource {
    pub migrations_dir: PathBuf,
    /// The release id when known.
    pub release: Option<String>,
    /// How it was chosen, in words.
    pub why: String,
}

/// Resolves `--release TAG|DIR`:
/// - a folder (a bundle or release folder holding `migrations/`, or a
///   migrations folder itself);
/// - else a tag: `dist/dhash-<tag>/migrations`;
/// - none given: the env's current release, else the newest bundle in dist.
pub fn resolve_migrations(
    env: &EnvConfig,
    dist: &Path,
    release: Option<&str>,
) -> anyhow::Result<MigrationSource> {
    match release {
        Some(r) => {
            let p = PathBuf::from(r);
            if p.is_dir() {
                let p = std::path::absolute(&p).unwrap_or(p);
                let manifest = ReleaseManifest::read(&p).ok();
                let dir = if p.join("migrations").is_dir() {
                    p.join("migrations")
                } else {
                    p.clone()
                };
                return Ok(MigrationSource {
                    migrations_dir: dir,
                    release: manifest.map(|m| m.id),
                    why: format!("--release {}", p.display()),
                });
            }
            if r.contains('/') {
                return Err(gates_core::exit::usage_error(format!(
                    "--release {r}: no such folder (give a folder or a tag; available tags: {})",
                    available_tags(dist)
                )));
            }
            let b = bundle_for_tag(dist, r)?;
            Ok(MigrationSource {
                migrations_dir: b.dir.join("migrations"),
                release: Some(b.manifest.id),
                why: format!("bundle {} (--release {r})", b.dir.display()),
            })
        }
        None => {
            if let Some((dir, m)) = current_release(env) {
                return Ok(MigrationSource {
                    migrations_dir: dir.join("migrations"),
                    release: Some(m.id.clone()),
                    why: format!(
                        "the current release {} ({})",
                        m.id,
                        env.current_link().display()
                    ),
                });
            }
            if let Some(b) = newest_bundle(dist) {
                return Ok(MigrationSource {
                    migrations_dir: b.dir.join("migrations"),
                    release: Some(b.manifest.id.clone()),
                    why: format!(
                        "no current release in {}; the newest bundle {} (created {})",
                        env.install_root.display(),
                        b.dir.display(),
                        b.manifest.created_at
                    ),
                });
            }
            Err(gates_core::exit::usage_error(format!(
                "no migrations to use: {} has no current release and {} holds no bundle; pass --release TAG|DIR or build one with `dhash-service bundle --tag TAG`",
                env.install_root.display(),
                dist.display()
            )))
        }
    }
}
