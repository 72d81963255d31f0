//! Crash-safe file operations: a file appears complete or not at all.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// Flushes a directory entry to disk (after a rename or create inside it).
pub fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// A temporary name beside `path` that no glob of the final names matches:
/// it starts with a dot and ends with `.partial`.
pub fn temp_path_for(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    dir.join(format!(".{name}.{}.partial", std::process::id()))
}

/// Writes `bytes` to `path` atomically: temp file, fsync, rename, fsync dir.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = temp_path_for(path);
    let result = (|| -> anyhow::Result<()> {
        let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(bytes)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.sync_all()
            .with_context(|| format!("syncing {}", tmp.display()))?;
        fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        fsync_dir(dir).with_context(|| format!("syncing {}", dir.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Appends one line with a single `write` on an `O_APPEND` handle, so
/// concurrent writers to one file never interleave partial lines.
pub fn append_line(path: &Path, line: &str, sync: bool) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut buf = String::with_capacity(line.len() + 1);
    buf.push_str(line.trim_end_matches('\n'));
    buf.push('\n');
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    f.write_all(buf.as_bytes())
        .with_context(|| format!("appending to {}", path.display()))?;
    if sync {
        f.sync_data()
            .with_context(|| format!("syncing {}", path.display()))?;
    }
    Ok(())
}

/// Points the symlink `link` at `target` atomically: a new link under a
/// temporary name renamed over the old one, so a crash at any instant leaves
/// `link` on either the old or the new target.
#[cfg(unix)]
pub fn switch_symlink(target: &Path, link: &Path) -> anyhow::Result<()> {
    let dir = link.parent().unwrap_or_else(|| Path::new("."));
    let tmp = temp_path_for(link);
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)
        .with_context(|| format!("creating link {}", tmp.display()))?;
    fs::rename(&tmp, link).with_context(|| format!("switching {}", link.display()))?;
    fsync_dir(dir).with_context(|| format!("syncing {}", dir.display()))?;
    Ok(())
}

/// Renaming a new link over an old one is not atomic on Windows, so the
/// release switch is refused there rather than done unsafely.
#[cfg(not(unix))]
pub fn switch_symlink(_target: &Path, link: &Path) -> anyhow::Result<()> {
    anyhow::bail!(
        "cannot switch {} atomically: releases need a unix host (symlink renamed over the old one)",
        link.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_leaves_no_partial() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("a/b.json");
        write_atomic(&p, b"{}").expect("write");
        assert_eq!(fs::read(&p).expect("read"), b"{}");
        let leftovers: Vec<_> = fs::read_dir(d.path().join("a"))
            .expect("dir")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[cfg(unix)]
    #[test]
    fn switch_symlink_replaces_the_link() {
        let d = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(d.path().join("r1")).expect("r1");
        fs::create_dir_all(d.path().join("r2")).expect("r2");
        let link = d.path().join("current");
        switch_symlink(Path::new("r1"), &link).expect("switch1");
        switch_symlink(Path::new("r2"), &link).expect("switch2");
        assert_eq!(fs::read_link(&link).expect("link"), Path::new("r2"));
    }

    #[test]
    fn append_lines() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("l.jsonl");
        append_line(&p, "{\"a\":1}", true).expect("a");
        append_line(&p, "{\"a\":2}\n", false).expect("b");
        assert_eq!(
            fs::read_to_string(&p).expect("read"),
            "{\"a\":1}\n{\"a\":2}\n"
        );
    }
}
