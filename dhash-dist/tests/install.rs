//! install.sh into a temporary prefix, then everything from there with cargo
//! removed from PATH: each tool's `--help`, a real backup through an installed
//! drop-in script, the bash completions (`complete -p`) and every man page
//! (`man -l`). And scripts/lib/run-tool's freshness rule in a checkout.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const TOOLS: &[&str] = &[
    "backup_dhash",
    "deploy_dhash",
    "migrate_dhash",
    "rollback_dhash",
    "monitor_dhash",
    "notify",
    "deploy-notify",
    "smoke_tests",
    "validate_logging",
    "report_dhash",
    "dhash-service",
    "check_performance",
];

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {:?}\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// The caller's PATH without every folder that holds a `cargo` (or
/// `rustc`), the installed bin folder first.
fn path_without_cargo(bin: &Path) -> String {
    let current = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![bin.to_path_buf()];
    dirs.extend(
        std::env::split_paths(&current)
            .filter(|d| !d.join("cargo").exists() && !d.join("rustc").exists()),
    );
    let joined = std::env::join_paths(dirs).expect("PATH folders hold no separator");
    joined.to_string_lossy().into_owned()
}

/// A command run from `dir` with the cargo-less PATH and no hint of the
/// checkout (DHASH_ROOT, the cargo variables).
fn installed(program: impl AsRef<std::ffi::OsStr>, dir: &Path, path: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(dir)
        .env("PATH", path)
        .env_remove("DHASH_ROOT")
        .env_remove("CARGO")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO_TARGET_DIR")
        .stdin(std::process::Stdio::null());
    cmd
}

fn install(prefix: &Path) {
    for t in TOOLS {
        testkit::bin_path(t);
    }
    let out = Command::new("bash")
        .arg(testkit::workspace_root().join("install.sh"))
        .args(["--profile", "debug", "--no-build", "--prefix"])
        .arg(prefix)
        .env("CARGO_TARGET_DIR", testkit::target_dir())
        .output()
        .expect("bash runs install.sh");
    ok(&out, "install.sh");
}

#[test]
fn installed_tools_run_without_cargo_with_completions_and_man_pages() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let prefix = tmp.path().join("prefix");
    install(&prefix);
    let bin = prefix.join("bin");
    let path = path_without_cargo(&bin);
    let probe = installed("bash", tmp.path(), &path)
        .args(["-c", "command -v cargo rustc"])
        .output()
        .expect("bash runs");
    assert!(
        !probe.status.success(),
        "cargo still on PATH: {}",
        text(&probe.stdout)
    );

    for t in TOOLS {
        let out = installed(bin.join(t), tmp.path(), &path)
            .arg("--help")
            .output()
            .expect("installed tool runs");
        ok(&out, &format!("{t} --help"));
        assert!(
            text(&out.stdout).contains("Usage:"),
            "{t} --help: {}",
            text(&out.stdout)
        );
    }
    real_backup_through_installed_script(tmp.path(), &prefix, &path);
    bash_completions_load(&prefix, &path);
    man_pages_render(&prefix, &path);
}

/// A project folder made from the installed templates; the installed
/// drop-in script takes a real backup there and the installed tool verifies it.
fn real_backup_through_installed_script(tmp: &Path, prefix: &Path, path: &str) {
    let project = tmp.join("project");
    fs::create_dir_all(&project).expect("project dir");
    for f in ["environments.json", "quality-gates-config.json"] {
        fs::copy(prefix.join("share/dhash/config").join(f), project.join(f)).expect("template");
    }
    let script = prefix.join("share/dhash/scripts/backup_dhash.sh");
    let out = installed(&script, &project, path)
        .args(["--env", "staging"])
        .output()
        .expect("installed backup_dhash.sh runs");
    ok(&out, "installed backup_dhash.sh --env staging");
    let events = testkit::events(&out.stdout);
    let verified = events
        .iter()
        .find(|e| e["event"] == "backup.verified")
        .unwrap_or_else(|| panic!("no backup.verified in {}", text(&out.stdout)));
    let zip = verified["path"]
        .as_str()
        .expect("backup.verified has a path");
    assert!(
        zip.starts_with(&*project.to_string_lossy()),
        "backup outside the project: {zip}"
    );
    let out = installed(prefix.join("bin/backup_dhash"), &project, path)
        .args(["--verify", zip])
        .output()
        .expect("installed backup_dhash runs");
    ok(&out, "installed backup_dhash --verify");
}

fn bash_completions_load(prefix: &Path, path: &str) {
    let dir = prefix.join("share/bash-completion/completions");
    let script = format!(
        "set -e; for f in {}/*; do source \"$f\"; done; complete -p",
        dir.display()
    );
    let out = installed("bash", prefix, path)
        .args(["--norc", "-c", &script])
        .output()
        .expect("bash runs");
    ok(&out, "sourcing the bash completions");
    let listed = text(&out.stdout);
    for t in TOOLS {
        assert!(
            listed
                .lines()
                .any(|l| l.starts_with("complete ") && l.ends_with(&format!(" {t}"))),
            "complete -p lists no completion of {t}:\n{listed}"
        );
    }
    // zsh and fish are not needed to install; their files must name the options.
    for (sub, name, option) in [
        ("zsh/site-functions", "_backup_dhash", "--keep"),
        ("fish/vendor_completions.d", "backup_dhash.fish", "-l keep"),
    ] {
        let f = prefix.join("share").join(sub).join(name);
        let body = fs::read_to_string(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert!(
            body.contains(option),
            "{} does not complete --keep:\n{body}",
            f.display()
        );
    }
}

fn man_pages_render(prefix: &Path, path: &str) {
    let dir = prefix.join("share/man/man1");
    let mut pages: Vec<PathBuf> = fs::read_dir(&dir)
        .expect("man1 exists")
        .flatten()
        .map(|e| e.path())
        .collect();
    pages.sort();
    for t in TOOLS {
        assert!(dir.join(format!("{t}.1")).is_file(), "no man page for {t}");
    }
    for page in &pages {
        let out = installed("man", prefix, path)
            .args(["-P", "cat", "-l"])
            .arg(page)
            .env("MANWIDTH", "80")
            .output()
            .unwrap_or_else(|e| {
                panic!("`man` cannot run ({e}): install Debian's man-db (.ci/run must install it)")
            });
        ok(&out, &format!("man -l {}", page.display()));
        let shown = text(&out.stdout);
        let stem = page
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        assert!(
            shown.contains("NAME") && shown.contains("SYNOPSIS") && shown.contains(&stem),
            "man -l {} renders no page:\n{shown}",
            page.display()
        );
    }
}

/// A fake checkout around the real scripts/lib/run-tool: its tools are
/// small scripts and its `cargo` records each call, so the rule "cargo only
/// when a source is newer than the last build" is observed directly.
struct Checkout {
    root: tempfile::TempDir,
    path: String,
}

impl Checkout {
    fn new() -> Checkout {
        let root = tempfile::tempdir().expect("temp dir");
        let r = root.path();
        let lib = r.join("scripts/lib");
        fs::create_dir_all(&lib).expect("scripts/lib");
        fs::copy(
            testkit::workspace_root().join("scripts/lib/run-tool"),
            lib.join("run-tool"),
        )
        .expect("copy run-tool");
        fs::create_dir_all(r.join("backup/src")).expect("crate");
        fs::create_dir_all(r.join("tests/tests")).expect("e2e crate");
        for (f, body) in [
            ("Cargo.toml", "[workspace]\n"),
            ("Cargo.lock", ""),
            ("backup/Cargo.toml", "[package]\n"),
            ("backup/src/lib.rs", ""),
            ("tests/Cargo.toml", "[package]\n"),
            ("tests/tests/e2e.rs", ""),
        ] {
            fs::write(r.join(f), body).expect("checkout file");
        }
        let fake = r.join("fakebin");
        fs::create_dir_all(&fake).expect("fakebin");
        let tools = TOOLS.join(" ");
        let cargo = format!(
            "#!/bin/sh\necho \"$*\" >> '{log}'\nmkdir -p '{out}'\nfor t in {tools}; do printf '#!/bin/sh\\necho ran $0 \"$@\"\\n' > '{out}'/$t; chmod +x '{out}'/$t; done\n",
            log = r.join("cargo.log").display(),
            out = r.join("target/debug").display(),
        );
        fs::write(fake.join("cargo"), cargo).expect("fake cargo");
        chmod_x(&fake.join("cargo"));
        let path = format!("{}:/usr/bin:/bin", fake.display());
        Checkout { root, path }
    }

    /// Runs `run-tool backup_dhash --list`; returns how many cargo calls so far.
    fn run(&self) -> usize {
        let out = Command::new("bash")
            .arg(self.root.path().join("scripts/lib/run-tool"))
            .args(["backup_dhash", "--list"])
            .env("PATH", &self.path)
            .env("DHASH_PROFILE", "debug")
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("DHASH_NO_BUILD")
            .env_remove("DHASH_ROOT")
            .output()
            .expect("run-tool runs");
        ok(&out, "run-tool");
        assert!(
            text(&out.stdout).contains("backup_dhash --list"),
            "{}",
            text(&out.stdout)
        );
        let log = fs::read_to_string(self.root.path().join("cargo.log")).unwrap_or_default();
        log.lines().count()
    }

    /// Edits a file's contents and gives it the modification time `mtime`
    /// (None: now), as an editor, `cp -p` or `tar` would.
    fn edit(&self, rel: &str, mtime: Option<std::time::SystemTime>) {
        let path = self.root.path().join(rel);
        let mut body = fs::read(&path).expect("file to edit");
        body.extend_from_slice(b"// edited\n");
        fs::write(&path, body).expect("edit");
        if let Some(t) = mtime {
            let file = fs::File::options().write(true).open(&path).expect("file");
            file.set_modified(t).expect("set mtime");
        }
    }
}

fn chmod_x(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, fs::Permissions::from_mode(0o755)).expect("chmod");
}

#[test]
fn run_tool_builds_only_when_the_sources_changed() {
    let c = Checkout::new();
    assert_eq!(c.run(), 1, "first run builds");
    assert_eq!(c.run(), 1, "an unchanged checkout runs no cargo");
    c.edit("tests/tests/e2e.rs", None);
    assert_eq!(c.run(), 1, "the end-to-end tests build no tool");
    c.edit("backup/src/lib.rs", None);
    assert_eq!(c.run(), 2, "an edited source builds");
    assert_eq!(c.run(), 2, "built once, current again");
    c.edit("Cargo.lock", None);
    assert_eq!(c.run(), 3, "a changed Cargo.lock builds");
    // Contents count, not times: a file restored with an older time (cp -p,
    // tar) and a stamp from a clock that was ahead both still build.
    let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_577_836_800);
    c.edit("backup/src/lib.rs", Some(old));
    assert_eq!(c.run(), 4, "an edit with an older time builds");
    let stamp = c.root.path().join("target/debug/.run-tool-built");
    let ahead = std::time::SystemTime::now() + std::time::Duration::from_secs(86_400);
    fs::File::options()
        .write(true)
        .open(&stamp)
        .and_then(|f| f.set_modified(ahead))
        .expect("stamp a day ahead");
    c.edit("backup/src/lib.rs", None);
    assert_eq!(c.run(), 5, "a stamp from the future does not hide an edit");
    // DHASH_NO_BUILD=1 runs what is there, and says it is not current.
    c.edit("backup/src/lib.rs", None);
    let out = Command::new("bash")
        .arg(c.root.path().join("scripts/lib/run-tool"))
        .args(["backup_dhash", "--list"])
        .env("PATH", &c.path)
        .env("DHASH_PROFILE", "debug")
        .env("DHASH_NO_BUILD", "1")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("DHASH_ROOT")
        .output()
        .expect("run-tool runs");
    ok(&out, "run-tool with DHASH_NO_BUILD=1");
    assert!(
        text(&out.stderr).contains("not built from the current sources"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(c.run(), 6, "and the next ordinary run builds");
}

#[test]
fn a_relative_prefix_is_the_callers_folder_even_with_cdpath_set() {
    for t in TOOLS {
        testkit::bin_path(t);
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let (cwd, elsewhere) = (tmp.path().join("cwd"), tmp.path().join("elsewhere"));
    fs::create_dir_all(elsewhere.join("pfx")).expect("a same-named folder on CDPATH");
    fs::create_dir_all(&cwd).expect("cwd");
    let out = Command::new("bash")
        .arg(testkit::workspace_root().join("install.sh"))
        .args(["--profile", "debug", "--no-build", "--prefix", "pfx"])
        .current_dir(&cwd)
        .env("CDPATH", &elsewhere)
        .env("CARGO_TARGET_DIR", testkit::target_dir())
        .output()
        .expect("bash runs install.sh");
    ok(&out, "install.sh --prefix pfx with CDPATH set");
    assert!(
        cwd.join("pfx/bin/backup_dhash").is_file(),
        "{}",
        text(&out.stderr)
    );
    let stray: Vec<_> = fs::read_dir(&elsewhere)
        .expect("elsewhere")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    assert_eq!(stray, ["pfx"], "nothing installed beside CDPATH's folder");
    assert_eq!(
        fs::read_dir(elsewhere.join("pfx")).expect("pfx").count(),
        0,
        "CDPATH's pfx left empty"
    );
    // A prefix with a newline in it is refused before anything is written.
    let out = Command::new("bash")
        .arg(testkit::workspace_root().join("install.sh"))
        .args(["--profile", "debug", "--no-build", "--prefix", "a\nb"])
        .current_dir(&cwd)
        .env("CARGO_TARGET_DIR", testkit::target_dir())
        .output()
        .expect("bash runs install.sh");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(!cwd.join("a\nb").exists());
}
