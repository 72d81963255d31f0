//! Backup file names: `dhash_<env>_<YYYYMMDDTHHMMSSmmmZ>.zip` (UTC, sortable),
//! and their aliases `dhash-<env>-<ts>.zip` (symbolic links to the backup, for
//! the runbooks that glob `dhash-production-*.zip`).

use std::path::{Path, PathBuf};

/// Length of the timestamp part, e.g. `20261123T093000123Z`.
pub(crate) const TS_LEN: usize = 19;

/// The current UTC time as a backup timestamp.
pub fn timestamp_now() -> String {
    chrono::Utc::now().format("%Y%m%dT%H%M%S%3fZ").to_string()
}

/// `<zip>.sha256`: the GNU `sha256sum` sidecar of a backup (or of an alias).
pub(crate) fn sidecar_of(zip: &Path) -> PathBuf {
    PathBuf::from(format!("{}.sha256", zip.display()))
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

pub fn backup_file_name(env: &str, ts: &str) -> String {
    format!("dhash_{env}_{ts}.zip")
}

pub(crate) fn is_timestamp(ts: &str) -> bool {
    let b = ts.as_bytes();
    b.len() == TS_LEN
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[9..18].iter().all(u8::is_ascii_digit)
        && b[18] == b'Z'
}

/// Splits `dhash_<env>_<ts>.zip` into `(env, ts)`; None for any other name.
pub fn parse_backup_name(name: &str) -> Option<(String, String)> {
    split_name(name, '_')
}

/// Splits `dhash<sep><env><sep><ts>.zip` into `(env, ts)`.
fn split_name(name: &str, sep: char) -> Option<(String, String)> {
    let stem = name
        .strip_prefix("dhash")?
        .strip_prefix(sep)?
        .strip_suffix(".zip")?;
    if stem.len() < TS_LEN + 2 {
        return None;
    }
    // `get`, not `split_at`: a name is input, and may cut a character in two.
    let cut = stem.len() - TS_LEN;
    let (env_sep, ts) = (stem.get(..cut)?, stem.get(cut..)?);
    let env = env_sep.strip_suffix(sep)?;
    if env.is_empty() || !is_timestamp(ts) {
        return None;
    }
    Some((env.to_string(), ts.to_string()))
}

/// The alias of a backup: `dhash-<env>-<ts>.zip` (a symbolic link beside it).
pub fn alias_file_name(env: &str, ts: &str) -> String {
    format!("dhash-{env}-{ts}.zip")
}

/// Splits `dhash-<env>-<ts>.zip` into `(env, ts)`; None for any other name.
pub fn parse_alias_name(name: &str) -> Option<(String, String)> {
    split_name(name, '-')
}

/// Whether `name` is a temporary file of a backup run of `env`:
/// `.dhash_<env>_<ts>.<anything>.<pid>.partial`. Returns the pid.
pub(crate) fn parse_partial_name(name: &str, env: &str) -> Option<u32> {
    let rest = name.strip_prefix('.')?.strip_suffix(".partial")?;
    let (rest, pid) = rest.rsplit_once('.')?;
    let pid: u32 = pid.parse().ok()?;
    let after = rest.strip_prefix(&format!("dhash_{env}_"))?;
    let ts = after.get(..TS_LEN)?;
    if !is_timestamp(ts) || !after[TS_LEN..].starts_with('.') {
        return None;
    }
    Some(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecar_relative_under_root_absolute_elsewhere() {
        let line = sidecar_line(Path::new("/p"), Path::new("/p/backups/dhash_x.zip"), "ab");
        assert_eq!(line, "ab  backups/dhash_x.zip\n");
        let line = sidecar_line(Path::new("/p"), Path::new("/q/dhash_x.zip"), "ab");
        assert_eq!(line, "ab  /q/dhash_x.zip\n");
    }

    #[test]
    fn names_round_trip_and_env_prefixes_do_not_collide() {
        let ts = timestamp_now();
        assert!(is_timestamp(&ts), "{ts}");
        let n = backup_file_name("production", &ts);
        assert_eq!(
            parse_backup_name(&n),
            Some(("production".into(), ts.clone()))
        );
        assert_eq!(
            parse_backup_name("dhash_prod_x_20261123T093000123Z.zip"),
            Some(("prod_x".into(), "20261123T093000123Z".into()))
        );
        assert_eq!(parse_backup_name("dhash_production_2026.zip"), None);
        assert_eq!(
            parse_backup_name("dhash-production-20261123T093000123Z.zip"),
            None
        );
        let a = alias_file_name("production", &ts);
        assert_eq!(a, format!("dhash-production-{ts}.zip"));
        assert_eq!(
            parse_alias_name(&a),
            Some(("production".into(), ts.clone()))
        );
        assert_eq!(parse_alias_name(&n), None);
        assert_eq!(
            parse_alias_name("dhash-pre-prod-20261123T093000123Z.zip"),
            Some(("pre-prod".into(), "20261123T093000123Z".into()))
        );
        assert_eq!(parse_alias_name("dhash--20261123T093000123Z.zip"), None);
        assert_eq!(parse_alias_name("dhash-production-2026.zip"), None);
        // A multi-byte character where the timestamp should start: no panic.
        let cut = format!("dhash_x_\u{e9}{}.zip", "1".repeat(18));
        assert_eq!(parse_backup_name(&cut), None);
        assert_eq!(parse_alias_name(&cut.replace('_', "-")), None);
        let p = ".dhash_prod_20261123T093000123Z.zip.4242.partial";
        assert_eq!(parse_partial_name(p, "prod"), Some(4242));
        assert_eq!(
            parse_partial_name(".dhash_prod_x_20261123T093000123Z.zip.1.partial", "prod"),
            None
        );
        assert_eq!(
            parse_partial_name(
                ".dhash_prod_20261123T093000123Z.zip.sha256.7.partial",
                "prod"
            ),
            Some(7)
        );
    }
}
