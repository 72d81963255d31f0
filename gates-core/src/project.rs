//! Finding the project: the folder holding `environments.json` (the topology)
//! and `quality-gates-config.json`. `DHASH_ROOT` names it explicitly (the
//! drop-in scripts set it to their own checkout); otherwise the current folder
//! and its parents are searched, so seed 004's session folders work too.

use std::path::{Path, PathBuf};

use crate::config::{ConfigError, EnvConfig, GatesFile, Topology};

pub const TOPOLOGY_FILE: &str = "environments.json";
pub const GATES_FILE: &str = "quality-gates-config.json";
pub const ROOT_VAR: &str = "DHASH_ROOT";

#[derive(Debug, Clone)]
pub struct Project {
    pub root: PathBuf,
    pub topology: Topology,
}

impl Project {
    /// Finds and loads the project's topology.
    pub fn discover() -> Result<Project, ConfigError> {
        let root = find_root()?;
        Self::open(&root)
    }

    pub fn open(root: &Path) -> Result<Project, ConfigError> {
        let topology = Topology::load(&root.join(TOPOLOGY_FILE))?;
        Ok(Project {
            root: topology.root.clone(),
            topology,
        })
    }

    pub fn env(&self, name: &str) -> Result<&EnvConfig, ConfigError> {
        self.topology.env(name)
    }

    pub fn gates_path(&self) -> PathBuf {
        self.root.join(GATES_FILE)
    }

    /// The gates file: `custom` when given (relative to the current folder,
    /// as an operator types it), else the project's.
    pub fn gates(&self, custom: Option<&Path>) -> Result<GatesFile, ConfigError> {
        GatesFile::load(custom.unwrap_or(&self.gates_path()))
    }

    /// What the post-deploy watch of `env` would run with: the environment,
    /// its monitor settings overridden by the gates file's
    /// `environments.<env>.monitoring` when there is one, and the gates file,
    /// which is sure to have gates for `env` ([`GatesFile::require_env`]).
    /// Deploy's preflight calls it before anything changes, so a deploy whose
    /// watch could not start is refused (exit 2), naming the file and path.
    pub fn watch_setup(
        &self,
        env: &str,
        custom: Option<&Path>,
    ) -> Result<(EnvConfig, GatesFile), ConfigError> {
        let mut env_config = self.env(env)?.clone();
        let gates = self.gates(custom)?;
        gates.require_env(env)?;
        gates.apply_monitoring(&mut env_config);
        Ok((env_config, gates))
    }

    pub fn dist_dir(&self) -> &Path {
        &self.topology.dist_dir
    }
}

fn find_root() -> Result<PathBuf, ConfigError> {
    if let Some(root) = std::env::var_os(ROOT_VAR).filter(|v| !v.is_empty()) {
        let root = PathBuf::from(root);
        if root.join(TOPOLOGY_FILE).is_file() {
            return Ok(root);
        }
        return Err(ConfigError::new(
            &root.join(TOPOLOGY_FILE),
            "",
            format!(
                "{ROOT_VAR} points at {} but it holds no {TOPOLOGY_FILE}",
                root.display()
            ),
        ));
    }
    let cwd = std::env::current_dir()
        .map_err(|e| ConfigError::new(Path::new("."), "", format!("no current folder: {e}")))?;
    for dir in cwd.ancestors() {
        if dir.join(TOPOLOGY_FILE).is_file() {
            return Ok(dir.to_path_buf());
        }
    }
    Err(ConfigError::new(
        &cwd.join(TOPOLOGY_FILE),
        "",
        format!(
            "no {TOPOLOGY_FILE} here or in any parent folder; run from the project, or set {ROOT_VAR}"
        ),
    ))
}
