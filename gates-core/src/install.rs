//! Facts about an environment's install root, in one place: which release
//! is current, and the names of the journals the tools leave behind while
//! they change it. Every tool asks these questions the same way.
//!
//! ```text
//! <install_root>/
//!   current -> releases/<id>     the release in service
//!   releases/<id>/release.json   one folder per installed release
//!   deploy.journal.json          a deploy in progress (deploy_dhash)
//!   rollback.journal             a rollback in progress (rollback_dhash)
//!   .rollback.partial/           a rollback's verified extraction
//! ```

use std::fs;
use std::path::PathBuf;

use anyhow::bail;

use crate::config::EnvConfig;

/// A deploy in progress: written before the first change, removed when done.
pub const DEPLOY_JOURNAL: &str = "deploy.journal.json";
/// A rollback in progress: written before the swap begins, removed when done.
pub const ROLLBACK_JOURNAL: &str = "rollback.journal";
/// A rollback's extraction folder (verified backup contents).
pub const ROLLBACK_STAGE: &str = ".rollback.partial";

/// The release in service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentRelease {
    /// The release id: the folder `current` points at under `releases/`.
    pub id: String,
    /// That folder.
    pub dir: PathBuf,
}

/// The release `current` points at, when it is an installed release folder.
/// None: no link yet, or a link to a folder that is not there (a dangling
/// link is no release; [`current_release_checked`] says so as an error).
/// Deploy and rollback always point `current` at `releases/<id>`, so the
/// folder name is the id.
pub fn current_release(env: &EnvConfig) -> Option<CurrentRelease> {
    current_release_checked(env).ok().flatten()
}

/// [`current_release`], with a broken `current` as an error: a link that
/// cannot be read, or one that points at no installed release folder.
/// Ok(None): there is no `current` yet (nothing deployed).
pub fn current_release_checked(env: &EnvConfig) -> anyhow::Result<Option<CurrentRelease>> {
    let link = env.current_link();
    let target = match fs::read_link(&link) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => bail!("reading the link {}: {e}", link.display()),
    };
    let id = target
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string);
    let dir = id.as_ref().map(|id| env.releases_dir().join(id));
    match (id, dir) {
        (Some(id), Some(dir)) if dir.is_dir() => Ok(Some(CurrentRelease { id, dir })),
        _ => bail!(
            "{} points at {}, which is not an installed release folder: the environment is broken; fix or redeploy",
            link.display(),
            target.display()
        ),
    }
}

/// The id of [`current_release`].
pub fn current_release_id(env: &EnvConfig) -> Option<String> {
    current_release(env).map(|c| c.id)
}

/// `<install_root>/deploy.journal.json`.
pub fn deploy_journal(env: &EnvConfig) -> PathBuf {
    env.install_root.join(DEPLOY_JOURNAL)
}

/// `<install_root>/rollback.journal`.
pub fn rollback_journal(env: &EnvConfig) -> PathBuf {
    env.install_root.join(ROLLBACK_JOURNAL)
}
