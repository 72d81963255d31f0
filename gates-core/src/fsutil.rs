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
        // A rewrite keeps the file's mode: a 0600 file must not come back
        // with the umask's 0644.
        if let Ok(meta) = fs::metadata(path) {
            f.set_permissions(meta.permissions())
                .with_context(|| format!("setting the mode of {}", tmp.display()))?;
        }
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

/// Appends one line with a single `write` on an `O_APPEND` handle, under
/// an exclusive lock on the file, so concurrent writers to one file never
/// interleave partial lines.
/// If the file ends in a torn line (a crash or a full disk mid-append), a
/// newline goes first in the same write, so the new record stays a line of
/// its own instead of being glued onto the torn one and lost with it.
pub fn append_line(path: &Path, line: &str, sync: bool) -> anyhow::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut f = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    // The end is read and written under an exclusive lock on the file: a
    // buffered write grows the size page by page, so without it another
    // writer's half-copied line would look torn and get a newline it lacks.
    f.lock()
        .with_context(|| format!("locking {}", path.display()))?;
    let len = f
        .metadata()
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    let mut torn = false;
    if len > 0 {
        let mut last = [0u8; 1];
        f.seek(SeekFrom::Start(len - 1))
            .and_then(|_| f.read_exact(&mut last))
            .with_context(|| format!("reading the end of {}", path.display()))?;
        torn = last[0] != b'\n';
    }
    let mut buf = String::with_capacity(line.len() + 2);
    if torn {
        buf.push('\n');
    }
    buf.push_str(line.trim_end_matches('\n'));
    buf.push('\n');
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

/// How a file-system object is named in messages: "a FIFO (named pipe)",
/// "a directory", "a socket", ... ("a regular file" for a plain file).
pub fn describe_file_type(ft: &fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if ft.is_socket() {
            return "a socket";
        }
        if ft.is_char_device() {
            return "a character device";
        }
        if ft.is_block_device() {
            return "a block device";
        }
    }
    if ft.is_dir() {
        "a directory"
    } else if ft.is_symlink() {
        "a symbolic link"
    } else if ft.is_file() {
        "a regular file"
    } else {
        "not a regular file"
    }
}

/// Why `path` cannot be opened as a regular file, from `stat` (never blocks).
/// `what` names the role, e.g. "the backup"; None when it is a regular file.
fn not_regular_reason(path: &Path, what: &str) -> Option<String> {
    match fs::metadata(path) {
        Ok(m) if m.is_file() => None,
        Ok(m) => Some(format!(
            "{what} {} is {}, not a regular file",
            path.display(),
            describe_file_type(&m.file_type())
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            match (fs::symlink_metadata(path), fs::read_link(path)) {
                (Ok(l), Ok(target)) if l.file_type().is_symlink() => Some(format!(
                    "{what} {} does not exist (it is a symbolic link to {}, which does not exist)",
                    path.display(),
                    target.display()
                )),
                _ => Some(format!("{what} {} does not exist", path.display())),
            }
        }
        Err(e) => Some(format!("cannot read {what} {}: {e}", path.display())),
    }
}

/// Refuses anything but a regular file (symbolic links are followed): a FIFO,
/// directory, socket or device gets an error saying what the path is, e.g.
/// "the backup /x.zip is a FIFO (named pipe), not a regular file", and a
/// missing path "... does not exist". Never blocks (only `stat`). Use
/// [`open_regular`] to open the file: it closes the check-then-open race.
pub fn require_regular_file(path: &Path, what: &str) -> anyhow::Result<()> {
    match not_regular_reason(path, what) {
        None => Ok(()),
        Some(why) => Err(anyhow::anyhow!(why)),
    }
}

/// Opens `path` for reading if, and only if, it is a regular file (symbolic
/// links followed), with the messages of [`require_regular_file`]. The open
/// itself never blocks (`O_NONBLOCK`, so a FIFO without a writer cannot hang
/// the caller) and the type is checked again with `fstat` on the opened
/// handle, so a path swapped for a FIFO between the check and the open is
/// refused too. The returned handle is in ordinary blocking mode.
pub fn open_regular(path: &Path, what: &str) -> anyhow::Result<File> {
    if let Some(why) = not_regular_reason(path, what) {
        anyhow::bail!(why);
    }
    let mut opts = OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
    }
    let f = match opts.open(path) {
        Ok(f) => f,
        Err(e) => {
            // Swapped since the check (e.g. ENXIO on a socket): say what it is now.
            if let Some(why) = not_regular_reason(path, what) {
                anyhow::bail!(why);
            }
            return Err(anyhow::anyhow!(
                "cannot open {what} {}: {e}",
                path.display()
            ));
        }
    };
    let meta = f
        .metadata()
        .with_context(|| format!("reading {what} {}", path.display()))?;
    if !meta.is_file() {
        anyhow::bail!(
            "{what} {} is {}, not a regular file",
            path.display(),
            describe_file_type(&meta.file_type())
        );
    }
    #[cfg(unix)]
    {
        use nix::fcntl::{fcntl, FcntlArg, OFlag};
        let flags = fcntl(&f, FcntlArg::F_GETFL)
            .with_context(|| format!("reading the flags of {}", path.display()))?;
        let flags = OFlag::from_bits_truncate(flags) & !OFlag::O_NONBLOCK;
        fcntl(&f, FcntlArg::F_SETFL(flags))
            .with_context(|| format!("setting the flags of {}", path.display()))?;
    }
    Ok(f)
}

/// SHA-256 of a regular file, streamed, as lowercase hex.
pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut f = open_regular(path, "the file")?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// SHA-256 of bytes in memory, as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

/// Whether two paths name the same file: canonical paths when both exist,
/// else the absolute paths.
pub fn same_path(a: &Path, b: &Path) -> bool {
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => absolute(a) == absolute(b),
    }
}

/// `path` made absolute against the working directory (unchanged if that fails).
pub fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Moves `src` to `dst`, which must not exist: a rename, or across
/// filesystems a copy under a temporary name, renamed into place, then the
/// source removed. Both parents are synced.
pub fn move_path(src: &Path, dst: &Path) -> anyhow::Result<()> {
    if let Some(parent) = dst.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    match fs::rename(src, dst) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => {
            let tmp = temp_path_for(dst);
            let _ = fs::remove_dir_all(&tmp);
            copy_tree(src, &tmp)
                .with_context(|| format!("copying {} to {}", src.display(), tmp.display()))?;
            fs::rename(&tmp, dst)
                .with_context(|| format!("renaming {} to {}", tmp.display(), dst.display()))?;
            if src.is_dir() {
                fs::remove_dir_all(src)
            } else {
                fs::remove_file(src)
            }
            .with_context(|| format!("removing {}", src.display()))?;
        }
        Err(e) => {
            return Err(e).with_context(|| format!("moving {} to {}", src.display(), dst.display()))
        }
    }
    if let Some(parent) = dst.parent() {
        fsync_dir(parent).with_context(|| format!("syncing {}", parent.display()))?;
    }
    if let Some(parent) = src.parent() {
        let _ = fsync_dir(parent);
    }
    Ok(())
}

/// Copies a tree (files synced, symlinks kept as links).
fn copy_tree(src: &Path, dst: &Path) -> anyhow::Result<()> {
    let meta = fs::symlink_metadata(src)?;
    if meta.is_dir() {
        fs::create_dir_all(dst)?;
        for e in fs::read_dir(src)? {
            let e = e?;
            copy_tree(&e.path(), &dst.join(e.file_name()))?;
        }
    } else if meta.file_type().is_symlink() {
        #[cfg(unix)]
        std::os::unix::fs::symlink(fs::read_link(src)?, dst)?;
    } else {
        fs::copy(src, dst)?;
        File::open(dst)?.sync_all()?;
    }
    Ok(())
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

    #[test]
    fn concurrent_appends_stay_whole_lines_with_no_blank_ones() {
        // Long lines span pages: the torn-line check must not mistake another
        // writer's half-copied line for a torn one.
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("c.log");
        let filler = "x".repeat(3000);
        std::thread::scope(|s| {
            for t in 0..6 {
                let (p, filler) = (&p, &filler);
                s.spawn(move || {
                    for i in 0..150 {
                        append_line(p, &format!("{t}:{i}:{filler}"), false).expect("append");
                    }
                });
            }
        });
        let text = fs::read_to_string(&p).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 6 * 150, "blank or glued lines");
        assert!(lines
            .iter()
            .all(|l| l.ends_with(&filler) && l.split(':').count() == 3));
    }

    #[test]
    fn append_after_a_torn_line_starts_a_new_line() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("l.jsonl");
        fs::write(&p, "{\"a\":1}\n{\"a\":\"to").expect("torn");
        append_line(&p, "{\"a\":2}", false).expect("append");
        append_line(&p, "{\"a\":3}", false).expect("append");
        assert_eq!(
            fs::read_to_string(&p).expect("read"),
            "{\"a\":1}\n{\"a\":\"to\n{\"a\":2}\n{\"a\":3}\n"
        );
    }

    #[cfg(unix)]
    #[test]
    fn only_regular_files_open_and_nothing_blocks() {
        let d = tempfile::tempdir().expect("tempdir");
        let file = d.path().join("b.zip");
        fs::write(&file, b"zip").expect("write");
        let mut f = open_regular(&file, "the backup").expect("regular file opens");
        let mut text = String::new();
        std::io::Read::read_to_string(&mut f, &mut text).expect("read");
        assert_eq!(text, "zip");
        require_regular_file(&file, "the backup").expect("regular");

        let link = d.path().join("alias.zip");
        std::os::unix::fs::symlink("b.zip", &link).expect("symlink");
        open_regular(&link, "the backup").expect("a link to a file is followed");

        let fifo = d.path().join("fifo.zip");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .expect("mkfifo");
        let started = std::time::Instant::now();
        let e = format!("{:#}", open_regular(&fifo, "the backup").expect_err("fifo"));
        assert!(e.contains("is a FIFO") && e.contains("fifo.zip"), "{e}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        let e = format!(
            "{:#}",
            require_regular_file(&fifo, "the backup").expect_err("fifo")
        );
        assert!(e.contains("is a FIFO"), "{e}");

        let e = format!(
            "{:#}",
            open_regular(d.path(), "the backup").expect_err("dir")
        );
        assert!(e.contains("is a directory"), "{e}");

        let sock = d.path().join("s.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
        let e = format!(
            "{:#}",
            open_regular(&sock, "the backup").expect_err("socket")
        );
        assert!(e.contains("is a socket"), "{e}");

        let e = format!(
            "{:#}",
            open_regular(&d.path().join("nope.zip"), "the backup").expect_err("missing")
        );
        assert!(e.contains("nope.zip does not exist"), "{e}");

        let dangling = d.path().join("dangling.zip");
        std::os::unix::fs::symlink("gone.zip", &dangling).expect("symlink");
        let e = format!(
            "{:#}",
            open_regular(&dangling, "the backup").expect_err("dangling")
        );
        assert!(
            e.contains("does not exist") && e.contains("gone.zip"),
            "{e}"
        );

        let e = format!(
            "{:#}",
            open_regular(Path::new("/dev/null"), "the bundle").expect_err("dev")
        );
        assert!(e.contains("is a character device"), "{e}");
    }
}
