//! Migration files as a release bundle ships them:
//! `migrations/NNNN_name.up.sql` and `migrations/NNNN_name.down.sql`
//! (`NNNN` = the zero-padded version).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// One versioned migration read from a migrations folder.
#[derive(Debug, Clone, PartialEq)]
pub struct Migration {
    pub version: i64,
    pub name: String,
    pub up_path: PathBuf,
    pub up_sql: String,
    /// `None` when the `.down.sql` file is missing (backward refuses it).
    pub down_path: Option<PathBuf>,
    pub down_sql: Option<String>,
    /// SHA-256 (hex) of the `.up.sql` bytes, stored when applied.
    pub checksum: String,
}

impl Migration {
    /// `0002_add_source` (the file stem without `.up.sql`).
    pub fn label(&self) -> String {
        format!("{:04}_{}", self.version, self.name)
    }
}

pub use gates_core::fsutil::sha256_hex;

/// Splits `0002_add_source.up.sql` into (2, "add_source", "up").
fn parse_file_name(name: &str) -> Option<(i64, String, &'static str)> {
    let (stem, kind) = if let Some(s) = name.strip_suffix(".up.sql") {
        (s, "up")
    } else if let Some(s) = name.strip_suffix(".down.sql") {
        (s, "down")
    } else {
        return None;
    };
    let (num, rest) = stem.split_once('_')?;
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) || rest.is_empty() {
        return None;
    }
    let version = num.parse::<i64>().ok()?;
    Some((version, rest.to_string(), kind))
}

/// Reads every migration of a folder, ordered by version. Files that do not
/// look like migrations are ignored; two different names for one version,
/// or a `.down.sql` without its `.up.sql`, are errors.
pub fn load_dir(dir: &Path) -> anyhow::Result<Vec<Migration>> {
    if !dir.is_dir() {
        bail!("no migrations folder at {}", dir.display());
    }
    struct Parts {
        name: String,
        up: Option<PathBuf>,
        down: Option<PathBuf>,
    }
    let mut by_version: BTreeMap<i64, Parts> = BTreeMap::new();
    let entries = fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let file_name = entry.file_name().to_string_lossy().to_string();
        let Some((version, name, kind)) = parse_file_name(&file_name) else {
            continue;
        };
        let parts = by_version.entry(version).or_insert_with(|| Parts {
            name: name.clone(),
            up: None,
            down: None,
        });
        if parts.name != name {
            bail!(
                "{}: version {version} has two names ({:?} and {:?}); each version needs exactly one migration",
                dir.display(),
                parts.name,
                name
            );
        }
        match kind {
            "up" => parts.up = Some(entry.path()),
            _ => parts.down = Some(entry.path()),
        }
    }
    let mut out = Vec::new();
    for (version, parts) in by_version {
        let Some(up_path) = parts.up else {
            bail!(
                "{}: {:04}_{}.down.sql has no matching .up.sql",
                dir.display(),
                version,
                parts.name
            );
        };
        let up_bytes =
            fs::read(&up_path).with_context(|| format!("reading {}", up_path.display()))?;
        let up_sql = String::from_utf8(up_bytes.clone())
            .with_context(|| format!("{} is not UTF-8 text", up_path.display()))?;
        let down_sql = match &parts.down {
            Some(p) => {
                Some(fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)
            }
            None => None,
        };
        out.push(Migration {
            version,
            name: parts.name,
            checksum: sha256_hex(&up_bytes),
            up_path,
            up_sql,
            down_path: parts.down,
            down_sql,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names() {
        assert_eq!(
            parse_file_name("0001_create_hashes.up.sql"),
            Some((1, "create_hashes".into(), "up"))
        );
        assert_eq!(
            parse_file_name("0012_x_y.down.sql"),
            Some((12, "x_y".into(), "down"))
        );
        assert_eq!(parse_file_name("README.md"), None);
        assert_eq!(parse_file_name("abc_x.up.sql"), None);
        assert_eq!(parse_file_name("0001_.up.sql"), None);
    }

    #[test]
    fn load_orders_and_checks() {
        let d = tempfile::tempdir().expect("tempdir");
        fs::write(d.path().join("0002_b.up.sql"), "SELECT 2;").expect("w");
        fs::write(d.path().join("0001_a.up.sql"), "SELECT 1;").expect("w");
        fs::write(d.path().join("0001_a.down.sql"), "SELECT -1;").expect("w");
        fs::write(d.path().join("notes.txt"), "x").expect("w");
        let ms = load_dir(d.path()).expect("load");
        assert_eq!(ms.iter().map(|m| m.version).collect::<Vec<_>>(), vec![1, 2]);
        assert!(ms[0].down_sql.is_some());
        assert!(ms[1].down_sql.is_none());
        assert_eq!(ms[0].checksum, sha256_hex(b"SELECT 1;"));

        fs::write(d.path().join("0003_c.down.sql"), "x").expect("w");
        assert!(load_dir(d.path())
            .expect_err("orphan")
            .to_string()
            .contains("no matching"));
        fs::remove_file(d.path().join("0003_c.down.sql")).expect("rm");
        fs::write(d.path().join("0002_other.up.sql"), "x").expect("w");
        assert!(load_dir(d.path())
            .expect_err("dup")
            .to_string()
            .contains("two names"));
    }
}
