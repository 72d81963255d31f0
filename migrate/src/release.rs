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
    let dir = gates_core::install::current_release(env)?.dir;
    let manifest = ReleaseManifest::read(&dir).ok()?;
    Some((dir, manifest))
}

/// Which release's migrations the operator asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want {
    /// `--release TAG|DIR`: a folder (a bundle or release folder holding
    /// `migrations/`, or a migrations folder), else a tag.
    Release(String),
    /// `--tag T`: the release of tag `T` (`dist/dhash-T/`, or built from the
    /// git tag `T`), as deploy_dhash --tag T deploys it.
    Tag(String),
    /// `--installed`: the release `current` points at.
    Installed,
    /// Nothing named: the checkout's release, as deploy_dhash without --tag
    /// deploys it (its bundle reused, or built).
    Checkout,
}

/// Where migrations come from.
#[derive(Debug)]
pub struct MigrationSource {
    pub migrations_dir: PathBuf,
    /// The release id when known.
    pub release: Option<String>,
    /// How it was chosen, in words.
    pub why: String,
    /// Keeps a planned (temporary) bundle alive while its migrations are read.
    pub resolved: Option<crate::source::Resolved>,
}

/// Resolves what the operator asked for (see [`Want`]). `plan`: a dry run or
/// `--status`, which builds a missing bundle into a temporary folder, never
/// into dist/.
pub fn resolve_migrations(
    project: &gates_core::project::Project,
    env: &EnvConfig,
    want: &Want,
    plan: bool,
    em: &gates_core::Emitter,
) -> anyhow::Result<MigrationSource> {
    let from_bundle = |tag: Option<&str>, label: String| -> anyhow::Result<MigrationSource> {
        let r = crate::source::resolve(project, tag, plan, em)?;
        Ok(MigrationSource {
            migrations_dir: r.bundle.dir.join("migrations"),
            release: Some(r.bundle.manifest.id.clone()),
            why: format!("{label}: {}", r.how),
            resolved: Some(r),
        })
    };
    match want {
        Want::Release(r) => {
            let p = PathBuf::from(r);
            if p.is_dir() {
                let p = gates_core::fsutil::absolute(&p);
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
                    resolved: None,
                });
            }
            if r.contains('/') {
                return Err(gates_core::exit::usage_error(format!(
                    "--release {r}: no such folder (give a folder or a tag; available tags: {})",
                    available_tags(project.dist_dir())
                )));
            }
            from_bundle(Some(r), format!("--release {r}"))
        }
        Want::Tag(t) => from_bundle(Some(t), format!("--tag {t}")),
        Want::Checkout => from_bundle(None, "the release being deployed (no --tag)".into()),
        Want::Installed => match current_release(env) {
            Some((dir, m)) => Ok(MigrationSource {
                migrations_dir: dir.join("migrations"),
                release: Some(m.id.clone()),
                why: format!(
                    "--installed: the current release {} ({})",
                    m.id,
                    env.current_link().display()
                ),
                resolved: None,
            }),
            None => Err(gates_core::exit::usage_error(format!(
                "--installed: nothing is deployed on {} ({} does not point at a release); drop --installed to use the checkout's release, or pass --tag TAG",
                env.name,
                env.current_link().display()
            ))),
        },
    }
}
