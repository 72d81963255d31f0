//! backup_dhash against real environments: the real binary, the real
//! service, real SQLite, the system's `sha256sum -c` and `unzip -t`.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use testkit::TestProject;

/// Writes a crafted zip at the given path.
type Maker = Box<dyn Fn(&Path)>;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_backup_dhash"))
}

fn backup_cmd(tp: &TestProject) -> Command {
    tp.cmd_path(bin())
}

fn backups(tp: &TestProject) -> PathBuf {
    tp.root().join("backups")
}

#[test]
fn invalid_arguments_exit_2_and_help_lists_exit_codes() {
    let tp = TestProject::new();
    for args in [
        vec!["--bogus"],
        vec![],
        vec!["--env", "nosuch"],
        vec!["--env", "staging", "--keep", "0"],
        vec!["--env", "staging", "--keep", "-1"],
        vec!["--env", "staging", "--keep", "ten"],
        vec!["--env", "staging", "--keep", "10001"],
        vec!["--env", "staging", "--list", "--dry-run"],
    ] {
        let out = run(backup_cmd(&tp).args(&args));
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", show(&out));
        assert!(
            out.stdout.is_empty() || !events(&out).is_empty(),
            "stdout is JSON lines only"
        );
    }
    let out = run(backup_cmd(&tp).arg("--help"));
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for want in [
        "--dry-run",
        "--verify",
        "--list",
        "--keep",
        "Exit codes",
        "75",
    ] {
        assert!(help.contains(want), "help lacks {want}: {help}");
    }
}

#[test]
fn backup_of_running_env_is_consistent_and_passes_the_seed_checks() {
    let (tp, id) = project_with_release(true);
    let env = tp.env("staging");
    let bundle = slim_bundle("v1", &[]);
    for i in 0..4 {
        post_image(&tp, "staging", &golden_png(&bundle, i));
    }
    let rows_live = db_rows(&env.database);
    assert!(rows_live["hashes"].len() >= 4);

    let out = run(backup_cmd(&tp).args(["--env", "staging"]));
    assert!(out.status.success(), "{}", show(&out));
    let evs = events(&out);
    let names: Vec<&str> = evs.iter().filter_map(|e| e["event"].as_str()).collect();
    assert_eq!(
        names,
        ["backup.started", "backup.created", "backup.verified"],
        "{}",
        show(&out)
    );
    let v = event(&evs, "backup.verified").unwrap();
    let zip = PathBuf::from(v["path"].as_str().unwrap());
    assert!(zip.is_absolute() && zip.is_file());
    assert_eq!(zip.parent().unwrap(), backups(&tp));
    let sha = v["sha256"].as_str().unwrap();
    assert_eq!(sha.len(), 64);
    assert_eq!(
        v["bytes"].as_u64().unwrap(),
        fs::metadata(&zip).unwrap().len()
    );
    assert_eq!(v["release"], id.as_str());
    assert!(v["files"].as_u64().unwrap() >= 6);
    for e in &evs {
        for k in ["ts", "tool", "env", "event", "level", "msg"] {
            assert!(e.get(k).is_some(), "envelope lacks {k}: {e}");
        }
    }
    let name = zip.file_name().unwrap().to_string_lossy().to_string();
    assert!(
        dhash_backup::parse_backup_name(&name).is_some_and(|(e, _)| e == "staging"),
        "{name}"
    );
    let sidecar = fs::read_to_string(format!("{}.sha256", zip.display())).unwrap();
    assert_eq!(sidecar, format!("{sha}  backups/{name}\n"));

    // The seeds' commands, as written, from the project root.
    let (ok, text) = seed_verify_latest(tp.root());
    assert!(ok, "sha256sum -c failed: {text}");
    assert!(text.contains(": OK"), "{text}");
    let unzip = Command::new("unzip")
        .arg("-t")
        .arg(&zip)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        unzip.status.success(),
        "unzip -t: {}",
        String::from_utf8_lossy(&unzip.stdout)
    );

    // The manifest and the layout.
    let m = dhash_backup::verify(&zip).expect("verifies");
    assert_eq!(m.env, "staging");
    assert_eq!(m.release.as_deref(), Some(id.as_str()));
    assert_eq!(
        m.schema_version,
        Some(2),
        "the bundle's two migrations are applied"
    );
    assert_eq!(m.database.as_deref(), Some("data/dhash.sqlite3"));
    assert!(!m.tool_version.is_empty() && !m.created_at.is_empty());
    let paths: Vec<&str> = m.files.iter().map(|f| f.path.as_str()).collect();
    for want in [
        "data/dhash.sqlite3".to_string(),
        format!("release/{id}/release.json"),
        format!("release/{id}/bin/dhash-service"),
        "config/environments.json".to_string(),
        "config/quality-gates-config.json".to_string(),
    ] {
        assert!(
            paths.contains(&want.as_str()),
            "missing {want} in {paths:?}"
        );
    }
    assert!(
        !paths
            .iter()
            .any(|p| p.ends_with("-wal") || p.ends_with("-shm")),
        "{paths:?}"
    );

    // Row-level: the snapshot in the zip equals the live DB at backup time;
    // release files are byte-identical.
    let x = tempfile::tempdir().unwrap();
    let dest = x.path().join("x");
    dhash_backup::extract(&zip, &dest, &Default::default()).expect("extract");
    assert_eq!(db_rows(&dest.join("data/dhash.sqlite3")), rows_live);
    assert_eq!(
        tree_hashes(&dest.join("release").join(&id)),
        tree_hashes(&env.current_link())
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(dest.join("release").join(&id).join("bin/dhash-service"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0o111, "executable bit kept");

    // Ledger and no leftovers.
    let recs = env.ledger().records("backup").unwrap();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0]["path"], zip.to_string_lossy().as_ref());
    assert!(!names_in(&backups(&tp))
        .iter()
        .any(|n| n.ends_with(".partial")));
}

fn names_in(dir: &Path) -> Vec<String> {
    names(dir).into_iter().collect()
}

#[test]
fn dry_run_reports_counts_and_writes_nothing() {
    let (tp, id) = project_with_release(false);
    let env = tp.env("staging");
    let out = run(backup_cmd(&tp).args(["--env", "staging", "--dry-run"]));
    assert!(out.status.success(), "{}", show(&out));
    let evs = events(&out);
    assert_eq!(evs.len(), 1, "{}", show(&out));
    let v = &evs[0];
    assert_eq!(v["event"], "backup.planned");
    assert!(v["files"].as_u64().unwrap() >= 5);
    assert!(v["bytes"].as_u64().unwrap() > 0);
    assert_eq!(v["release"], id.as_str());
    assert!(!backups(&tp).exists(), "a dry run creates no backup folder");
    assert!(
        !env.lock_path().exists(),
        "a dry run does not even take the lock"
    );
}

#[test]
fn list_and_verify_report_each_backup_and_refuse_corrupt_ones() {
    let (tp, _) = project_with_release(false);
    let env = tp.env("staging");
    let a = make_backup(&tp, "staging");
    let b = make_backup(&tp, "staging");
    let c = make_backup(&tp, "staging");
    flip_bit(&b, None);
    fs::remove_file(format!("{}.sha256", a.display())).unwrap();

    let out = run(backup_cmd(&tp).args(["--env", "staging", "--list"]));
    assert!(out.status.success(), "{}", show(&out));
    let evs = events(&out);
    let listed: Vec<(String, bool)> = evs
        .iter()
        .filter(|e| e["event"] == "backup.listed")
        .map(|e| {
            (
                e["path"].as_str().unwrap().to_string(),
                e["verified"].as_bool().unwrap(),
            )
        })
        .collect();
    let want: Vec<(String, bool)> = vec![
        (c.to_string_lossy().into(), true),
        (b.to_string_lossy().into(), false),
        (a.to_string_lossy().into(), false),
    ];
    assert_eq!(listed, want);
    assert!(
        evs[1]["error"]
            .as_str()
            .unwrap()
            .contains("checksum mismatch"),
        "{}",
        evs[1]
    );
    assert!(
        evs[2]["error"].as_str().unwrap().contains("sidecar"),
        "{}",
        evs[2]
    );

    let ok = run(backup_cmd(&tp).arg("--verify").arg(&c));
    assert!(ok.status.success(), "{}", show(&ok));
    assert_eq!(events(&ok)[0]["event"], "backup.verified");
    assert_eq!(events(&ok)[0]["env"], "staging");
    let bad = run(backup_cmd(&tp).arg("--verify").arg(&b));
    assert_eq!(bad.status.code(), Some(1), "{}", show(&bad));
    assert_eq!(events(&bad)[0]["event"], "backup.rejected");
    let wrong_env = run(backup_cmd(&tp)
        .args(["--env", "production", "--verify"])
        .arg(&c));
    assert_eq!(wrong_env.status.code(), Some(1), "{}", show(&wrong_env));

    // newest_verified: the newest that verifies; none left → an error naming the skipped ones.
    let em = gates_core::Emitter::sink("t", "staging");
    assert_eq!(dhash_backup::newest_verified(&env, &em).unwrap(), c);
    flip_bit(&c, Some(100));
    let err = format!(
        "{:#}",
        dhash_backup::newest_verified(&env, &em).unwrap_err()
    );
    for p in [&a, &b, &c] {
        assert!(
            err.contains(&p.file_name().unwrap().to_string_lossy().to_string()),
            "{err}"
        );
    }
}

#[test]
fn verification_catches_tampering_and_crafted_zips() {
    let (tp, _) = project_with_release(false);
    let root = tp.root().to_path_buf();
    let good = make_backup(&tp, "staging");
    let dir = backups(&tp);
    let copy = |name: &str| -> PathBuf {
        let p = dir.join(name);
        fs::copy(&good, &p).unwrap();
        fs::copy(
            format!("{}.sha256", good.display()),
            format!("{}.sha256", p.display()),
        )
        .unwrap();
        write_sidecar(&root, &p);
        p
    };
    let err = |p: &Path| {
        format!(
            "{:#}",
            dhash_backup::verify(p).expect_err("must not verify")
        )
    };

    // Bit flip, sidecar untouched.
    let p = copy("dhash_staging_20000101T000000001Z.zip");
    flip_bit(&p, None);
    assert!(err(&p).contains("checksum mismatch"), "{}", err(&p));

    // Edited sidecar (another hash) and a sidecar naming another file.
    let p = copy("dhash_staging_20000101T000000002Z.zip");
    fs::write(
        format!("{}.sha256", p.display()),
        format!(
            "{}  backups/{}\n",
            "0".repeat(64),
            p.file_name().unwrap().to_string_lossy()
        ),
    )
    .unwrap();
    assert!(err(&p).contains("checksum mismatch"), "{}", err(&p));
    let p = copy("dhash_staging_20000101T000000003Z.zip");
    let text = fs::read_to_string(format!("{}.sha256", p.display())).unwrap();
    fs::write(
        format!("{}.sha256", p.display()),
        text.replace("000000003Z", "000000009Z"),
    )
    .unwrap();
    assert!(err(&p).contains("names another file"), "{}", err(&p));

    // Bit flip inside the data with a matching sidecar: the zip's CRC or the manifest catches it.
    let p = copy("dhash_staging_20000101T000000004Z.zip");
    flip_bit(&p, Some(200));
    write_sidecar(&root, &p);
    let e = err(&p);
    assert!(!e.contains("checksum mismatch for"), "{e}");

    // Manifest mismatch: same files, one manifest hash altered, sidecar consistent.
    let p = dir.join("dhash_staging_20000101T000000005Z.zip");
    rewrite_manifest(&good, &p, |m| {
        let f = m["files"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .find(|f| f["path"] == "config/environments.json")
            .unwrap();
        f["sha256"] = "ab".repeat(32).into();
    });
    write_sidecar(&root, &p);
    let e = err(&p);
    assert!(
        e.contains("config/environments.json") && e.contains("does not match the manifest"),
        "{e}"
    );

    // A manifest listing a file the zip lacks.
    let p = dir.join("dhash_staging_20000101T000000006Z.zip");
    rewrite_manifest(&good, &p, |m| {
        m["files"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"path": "data/ghost", "bytes": 1, "sha256": "00"}));
    });
    write_sidecar(&root, &p);
    assert!(err(&p).contains("missing from the zip"), "{}", err(&p));

    // No sidecar at all.
    let p = dir.join("dhash_staging_20000101T000000007Z.zip");
    fs::copy(&good, &p).unwrap();
    assert!(err(&p).contains("no sidecar"), "{}", err(&p));

    // Crafted zips (valid sidecars): traversal, absolute, escaping link, duplicates, foreign top folder.
    let cases: Vec<(&str, Maker, &str)> = vec![
        (
            "08",
            Box::new(|p: &Path| {
                craft_zip(
                    p,
                    "staging",
                    &[("data/ok", b"x", false), ("../x", b"evil", false)],
                )
            }),
            "`..`",
        ),
        (
            "09",
            Box::new(|p: &Path| craft_zip(p, "staging", &[("/abs", b"evil", false)])),
            "absolute",
        ),
        (
            "10",
            Box::new(|p: &Path| {
                craft_zip(p, "staging", &[("data/link", b"../../../etc/passwd", true)])
            }),
            "leaves the target",
        ),
        (
            "11",
            Box::new(|p: &Path| craft_duplicate_zip(p, "staging")),
            "duplicate",
        ),
        (
            "12",
            Box::new(|p: &Path| craft_zip(p, "staging", &[("other/x", b"x", false)])),
            "not under",
        ),
        (
            "13",
            Box::new(|p: &Path| craft_zip(p, "staging", &[("data/a/../../../x", b"x", false)])),
            "`..`",
        ),
    ];
    for (n, make, want) in cases {
        let p = dir.join(format!("dhash_staging_20000101T0000000{n}Z.zip"));
        make(&p);
        write_sidecar(&root, &p);
        let e = err(&p);
        assert!(e.contains(want), "case {n}: {e}");
        // Extraction refuses before writing anything, anywhere.
        let x = tempfile::tempdir().unwrap();
        let dest = x.path().join("a/b/stage");
        assert!(dhash_backup::extract(&p, &dest, &Default::default()).is_err());
        assert!(
            !x.path().join("x").exists()
                && !x.path().join("a/x").exists()
                && !Path::new("/abs").exists()
        );
        let out = run(backup_cmd(&tp).arg("--verify").arg(&p));
        assert_eq!(out.status.code(), Some(1), "case {n}: {}", show(&out));
    }
    // The good one still verifies.
    dhash_backup::verify(&good).expect("good");
}

/// Copies a backup, altering its manifest.
fn rewrite_manifest(from: &Path, to: &Path, mut edit: impl FnMut(&mut serde_json::Value)) {
    use std::io::{Read, Write};
    let mut src = zip::ZipArchive::new(fs::File::open(from).unwrap()).unwrap();
    let mut dst = zip::ZipWriter::new(fs::File::create(to).unwrap());
    for i in 0..src.len() {
        let mut e = src.by_index(i).unwrap();
        let name = e.name().unwrap().to_string();
        let mut buf = Vec::new();
        e.read_to_end(&mut buf).unwrap();
        if name == "manifest.json" {
            let mut m: serde_json::Value = serde_json::from_slice(&buf).unwrap();
            edit(&mut m);
            buf = serde_json::to_vec(&m).unwrap();
        }
        dst.start_file(name, zip::write::SimpleFileOptions::default())
            .unwrap();
        dst.write_all(&buf).unwrap();
    }
    dst.finish().unwrap();
}

#[test]
fn retention_keeps_the_newest_n_and_never_the_one_just_made() {
    let (tp, _) = project_with_release(false);
    let mut made = Vec::new();
    for _ in 0..3 {
        made.push(make_backup(&tp, "staging"));
    }
    // A production backup in the same folder is not counted nor touched.
    let prod = tp
        .root()
        .join("backups/dhash_production_20000101T000000000Z.zip");
    fs::write(&prod, b"not mine").unwrap();
    let out = run(backup_cmd(&tp).args(["--env", "staging", "--keep", "2"]));
    assert!(out.status.success(), "{}", show(&out));
    // Both environments back up into backups/ here: the operator is told.
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("shares the backup folder"),
        "{}",
        show(&out)
    );
    let evs = events(&out);
    let newest = PathBuf::from(
        event(&evs, "backup.verified").unwrap()["path"]
            .as_str()
            .unwrap(),
    );
    let pruned: Vec<&str> = evs
        .iter()
        .filter(|e| e["event"] == "backup.pruned")
        .filter_map(|e| e["path"].as_str())
        .collect();
    assert_eq!(pruned.len(), 2, "{}", show(&out));
    let left = seed_glob(&backups(&tp));
    assert_eq!(left, vec![prod.clone(), made[2].clone(), newest.clone()]);
    for p in &made[..2] {
        assert!(
            !Path::new(&format!("{}.sha256", p.display())).exists(),
            "sidecar of a pruned backup removed"
        );
    }
    // --keep 1: only the one just made survives.
    let out = run(backup_cmd(&tp).args(["--env", "staging", "--keep", "1"]));
    assert!(out.status.success(), "{}", show(&out));
    let newest2 = PathBuf::from(
        event(&events(&out), "backup.verified").unwrap()["path"]
            .as_str()
            .unwrap(),
    );
    assert_eq!(seed_glob(&backups(&tp)), vec![prod, newest2]);
}

#[test]
fn a_pending_rollback_is_not_backed_up() {
    let (tp, _) = project_with_release(false);
    let env = tp.env("staging");
    fs::write(env.install_root.join("rollback.journal"), b"{}").unwrap();
    let out = run(backup_cmd(&tp).args(["--env", "staging"]));
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("interrupted rollback"),
        "{}",
        show(&out)
    );
    assert!(seed_glob(&backups(&tp)).is_empty());
}

#[test]
fn a_second_run_on_a_locked_environment_exits_75() {
    let (tp, _) = project_with_release(false);
    let env = tp.env("staging");
    let lock =
        gates_core::lock::EnvLock::acquire(&env.lock_path(), "staging", "deploy_dhash").unwrap();
    let out = run(backup_cmd(&tp).args(["--env", "staging"]));
    assert_eq!(out.status.code(), Some(75), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("deploy_dhash"),
        "names the holder: {}",
        show(&out)
    );
    assert!(seed_glob(&backups(&tp)).is_empty());
    drop(lock);
    make_backup(&tp, "staging");
}

#[test]
fn write_errors_fail_without_leaving_a_backup() {
    let (tp, _) = project_with_release(false);
    let env = tp.env("staging");

    // The backup folder cannot be created (a file is in the way).
    fs::write(tp.root().join("blocker"), b"a file").unwrap();
    tp.edit_topology(|t| t["environments"]["staging"]["backup_dir"] = "blocker/backups".into());
    let out = run(backup_cmd(&tp).args(["--env", "staging"]));
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("blocker"),
        "{}",
        show(&out)
    );
    tp.edit_topology(|t| t["environments"]["staging"]["backup_dir"] = "backups".into());

    // The disk "fills up" mid-write: a file-size limit (EFBIG) hits while the
    // zip is written (4 MiB of random data cannot fit in 1 MiB).
    let mut noise = vec![0u8; 4 << 20];
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    for b in noise.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = (x >> 32) as u8;
    }
    fs::write(env.data_dir.join("noise.bin"), &noise).unwrap();
    let out = Command::new("bash")
        .arg("-c")
        .arg(r#"trap "" XFSZ; ulimit -f 1024; exec "$0" --env staging"#)
        .arg(bin())
        .current_dir(tp.root())
        .env("DHASH_ROOT", tp.root())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("too large") || err.contains("File too large") || err.contains("writing"),
        "{err}"
    );
    // Issue 14 (c): the full disk is a `backup.failed` naming the zip it was making.
    let evs = events(&out);
    let failed = event(&evs, "backup.failed").unwrap_or_else(|| panic!("{}", show(&out)));
    let started = event(&evs, "backup.started").unwrap_or_else(|| panic!("{}", show(&out)));
    assert_eq!(failed["level"], "error");
    assert_eq!(failed["path"], started["path"]);
    assert!(
        seed_glob(&backups(&tp)).is_empty(),
        "no backup left: {:?}",
        names(&backups(&tp))
    );
    assert!(
        names(&backups(&tp)).is_empty(),
        "no partial or sidecar left: {:?}",
        names(&backups(&tp))
    );
    // Without the limit it works.
    make_backup(&tp, "staging");
}

/// Every file matching `dhash_*.zip` has its sidecar and verifies.
fn assert_only_good_backups(dir: &Path) {
    for z in seed_glob(dir) {
        if z.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("dhash_production")
        {
            continue;
        }
        dhash_backup::verify(&z)
            .unwrap_or_else(|e| panic!("{} passes as a backup but: {e:#}", z.display()));
    }
}

#[test]
fn kill_9_during_backup_never_leaves_a_false_backup() {
    let (tp, _) = project_with_release(false);
    let env = tp.env("staging");
    let dir = backups(&tp);
    // Each run first removes what the previous crash left.
    for (point, left) in [
        ("backup-renamed", None),
        ("backup-snapshot", Some(".sqlite3.")),
        ("backup-zip-written", Some(".zip.")),
        ("backup-sidecar-written", Some(".zip.")),
    ] {
        let out = run(backup_cmd(&tp)
            .args(["--env", "staging"])
            .env("DHASH_TEST_CRASH_AT", point));
        assert_eq!(out.status.signal(), Some(9), "{point}: {}", show(&out));
        assert_only_good_backups(&dir);
        if let Some(frag) = left {
            let leftovers = names(&dir);
            assert!(
                leftovers
                    .iter()
                    .any(|n| n.starts_with(".dhash_staging_") && n.contains(frag)),
                "{point} left {leftovers:?}"
            );
        }
    }
    // The last crash left a sidecar whose zip never appeared (an orphan) and the partial zip.
    let orphan = names(&dir)
        .into_iter()
        .filter(|n| n.ends_with(".zip.sha256"))
        .find(|n| !dir.join(n.trim_end_matches(".sha256")).exists());
    assert!(orphan.is_some(), "{:?}", names(&dir));
    // Another environment's partial is not this run's business.
    let foreign = dir.join(".dhash_production_20000101T000000000Z.zip.1.partial");
    fs::write(&foreign, b"x").unwrap();

    // A real kill -9 in the middle of writing a larger backup.
    let mut noise = vec![0u8; 48 << 20];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for b in noise.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = (x >> 32) as u8;
    }
    fs::write(env.data_dir.join("big.bin"), &noise).unwrap();
    drop(noise);
    let mut child = backup_cmd(&tp)
        .args(["--env", "staging"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let partial_zip = loop {
        let found = names(&dir)
            .into_iter()
            .find(|n| n.ends_with(".partial") && n.contains(&format!(".zip.{}.", child.id())));
        if let Some(f) = found {
            if fs::metadata(dir.join(&f)).map(|m| m.len()).unwrap_or(0) > 1 << 20 {
                break f;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no partial zip appeared"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(9));
    assert!(dir.join(&partial_zip).exists());
    assert_only_good_backups(&dir);

    // The next run cleans up this environment's leftovers and succeeds.
    fs::remove_file(env.data_dir.join("big.bin")).unwrap();
    let out = run(backup_cmd(&tp).args(["--env", "staging"]));
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        events(&out)
            .iter()
            .any(|e| e["event"] == "backup.discarded"),
        "{}",
        show(&out)
    );
    let left = names(&dir);
    let partials: Vec<&String> = left
        .iter()
        .filter(|n| n.ends_with(".partial") || n.contains("-journal"))
        .collect();
    assert_eq!(
        partials,
        vec![&".dhash_production_20000101T000000000Z.zip.1.partial".to_string()],
        "{left:?}"
    );
    for n in &left {
        if let Some(z) = n.strip_suffix(".sha256") {
            assert!(left.contains(z), "orphan sidecar {n} removed: {left:?}");
        }
    }
    assert_only_good_backups(&dir);
    let (ok, text) = seed_verify_latest(tp.root());
    assert!(ok, "{text}");
}

// ---------------------------------------------------------------------------
// Issue 12: backup names every seed's glob finds; issue 13: special files,
// broken databases, retention 0.

/// Runs a bash script in `dir` against the test project; `$BACKUP` and
/// `$ROLLBACK` name the real binaries.
fn bash_in(tp: &TestProject, dir: &Path, script: &str) -> std::process::Output {
    fs::create_dir_all(dir).unwrap();
    Command::new("bash")
        .arg("-c")
        .arg(format!("set -euo pipefail\n{script}"))
        .current_dir(dir)
        .env("DHASH_ROOT", tp.root())
        .env("BACKUP", bin())
        .env("ROLLBACK", testkit::bin_path("rollback_dhash"))
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A project laid out as the shipped environments.json: production backs up
/// into `backups/`, staging into `backups/staging/`; both have release v1.
fn shipped_layout() -> TestProject {
    let tp = TestProject::new();
    tp.edit_topology(|t| {
        t["environments"]["staging"]["backup_dir"] = "backups/staging".into();
    });
    let bundle = slim_bundle("v1", &[]);
    tp.install("staging", &bundle);
    tp.install("production", &bundle);
    tp
}

fn backup_with(tp: &TestProject, args: &[&str]) -> PathBuf {
    let out = run(backup_cmd(tp).args(args));
    assert!(out.status.success(), "{args:?}: {}", show(&out));
    let evs = events(&out);
    PathBuf::from(
        event(&evs, "backup.verified").unwrap_or_else(|| panic!("{}", show(&out)))["path"]
            .as_str()
            .unwrap(),
    )
}

fn file_name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().to_string()
}

fn listed(tp: &TestProject, env: &str) -> Vec<serde_json::Value> {
    let out = run(backup_cmd(tp).args(["--env", env, "--list"]));
    assert!(out.status.success(), "{}", show(&out));
    events(&out)
        .into_iter()
        .filter(|e| e["event"] == "backup.listed")
        .collect()
}

#[test]
fn shipped_environments_give_each_environment_its_own_backup_folder() {
    let path = testkit::workspace_root().join("environments.json");
    let t: serde_json::Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    let envs = t["environments"].as_object().unwrap();
    assert_eq!(
        envs["production"]["backup_dir"], "backups",
        "the seeds look for production's backups in backups/"
    );
    let mut dirs: Vec<&str> = envs
        .values()
        .map(|e| e["backup_dir"].as_str().unwrap_or("backups"))
        .collect();
    dirs.sort();
    let n = dirs.len();
    dirs.dedup();
    assert_eq!(dirs.len(), n, "one backup folder per environment: {dirs:?}");
}

#[test]
fn every_seed_glob_finds_the_newest_production_backup_with_staging_backups_present() {
    let tp = shipped_layout();
    let root = tp.root().to_path_buf();
    let s1 = backup_with(&tp, &["--env", "staging"]);
    let p1 = backup_with(&tp, &["--env", "production"]);
    let s2 = backup_with(&tp, &["--env", "staging"]);
    let p2 = backup_with(&tp, &["--env", "production"]);
    let s3 = backup_with(&tp, &["--env", "staging"]);
    assert_eq!(p2.parent().unwrap(), root.join("backups"));
    assert_eq!(s3.parent().unwrap(), root.join("backups/staging"));

    // Seeds 000/001: the plain glob, from the project root.
    let out = bash_in(
        &tp,
        &root,
        r#"LATEST_BACKUP=$(ls -1 backups/dhash_*.zip | sort -r | head -n1)
echo "$LATEST_BACKUP"
sha256sum -c "${LATEST_BACKUP}.sha256""#,
    );
    assert!(out.status.success(), "{}", show(&out));
    let t = text(&out);
    assert_eq!(
        t.lines().next(),
        Some(format!("backups/{}", file_name(&p2)).as_str()),
        "{t}"
    );
    assert!(t.contains(": OK"), "{t}");

    // Seed 002/003 and the README: the production glob.
    let out = bash_in(
        &tp,
        &root,
        r#"LATEST_BACKUP=$(ls -1 backups/dhash_production_*.zip | sort -r | head -n1)
echo "$LATEST_BACKUP"
sha256sum -c "${LATEST_BACKUP}.sha256""#,
    );
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(
        text(&out).lines().next(),
        Some(format!("backups/{}", file_name(&p2)).as_str())
    );

    // Seed 004, from a session folder, then `--verify` of that same relative path.
    let session = root.join("sessions/deploy-20261202-010203");
    let out = bash_in(
        &tp,
        &session,
        r#"LATEST_BACKUP=$(ls -1t ../../backups/dhash-production-*.zip | head -1)
echo "Latest backup: $LATEST_BACKUP"
sha256sum -c "${LATEST_BACKUP}.sha256"
"$BACKUP" --verify "$LATEST_BACKUP" --env production"#,
    );
    assert!(out.status.success(), "{}", show(&out));
    let t = text(&out);
    let (_, ts) = dhash_backup::parse_backup_name(&file_name(&p2)).unwrap();
    assert!(
        t.contains(&format!(
            "Latest backup: ../../backups/dhash-production-{ts}.zip"
        )),
        "{t}"
    );
    assert!(t.contains(": OK"), "{t}");
    let v = events(&out);
    assert_eq!(v.last().unwrap()["event"], "backup.verified", "{t}");
    assert_eq!(v.last().unwrap()["manifest_env"], "production");

    // The alias's check passes from anywhere (its sidecar names it absolutely).
    let elsewhere = tempfile::tempdir().unwrap();
    let alias = dhash_backup::alias_of(&p2).unwrap();
    let out = Command::new("sha256sum")
        .arg("-c")
        .arg(format!("{}.sha256", alias.display()))
        .current_dir(elsewhere.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(
        fs::read_link(&alias).unwrap(),
        PathBuf::from(file_name(&p2))
    );

    // Staging's own globs, in its folder.
    let out = bash_in(
        &tp,
        &root,
        r#"LATEST_BACKUP=$(ls -1 backups/staging/dhash_*.zip | sort -r | head -n1)
echo "$LATEST_BACKUP"
sha256sum -c "${LATEST_BACKUP}.sha256"
ls -1t backups/staging/dhash-staging-*.zip | head -1"#,
    );
    assert!(out.status.success(), "{}", show(&out));
    let t = text(&out);
    assert_eq!(
        t.lines().next(),
        Some(format!("backups/staging/{}", file_name(&s3)).as_str())
    );
    assert!(
        t.trim_end().ends_with(&format!(
            "dhash-staging-{}.zip",
            dhash_backup::parse_backup_name(&file_name(&s3)).unwrap().1
        )),
        "{t}"
    );

    // --list and the newest lookup: backups only, aliases never counted.
    let prod: Vec<String> = listed(&tp, "production")
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(prod, [p2.to_string_lossy(), p1.to_string_lossy()]);
    let stag = listed(&tp, "staging");
    assert_eq!(stag.len(), 3);
    for (e, p) in stag.iter().zip([&s3, &s2, &s1]) {
        assert_eq!(e["path"], p.to_string_lossy().as_ref());
        assert_eq!(e["verified"], true);
        assert_eq!(
            e["alias"],
            dhash_backup::alias_of(p)
                .unwrap()
                .to_string_lossy()
                .as_ref()
        );
    }
    let em = gates_core::Emitter::sink("t", "production");
    assert_eq!(
        dhash_backup::newest_verified(&tp.env("production"), &em).unwrap(),
        p2
    );
}

#[test]
fn seed_004_emergency_rollback_from_a_session_folder_restores_the_newest_production_backup() {
    let tp = TestProject::new();
    tp.edit_topology(|t| {
        t["environments"]["staging"]["backup_dir"] = "backups/staging".into();
    });
    let bundle = slim_bundle("v1", &[]);
    tp.install_and_start("production", &bundle);
    tp.install("staging", &bundle);
    let env = tp.env("production");
    post_image(&tp, "production", &golden_png(&bundle, 0));
    post_image(&tp, "production", &golden_png(&bundle, 1));
    backup_with(&tp, &["--env", "production"]);
    post_image(&tp, "production", &golden_png(&bundle, 2));
    let at_backup = db_rows(&env.database);
    let newest = backup_with(&tp, &["--env", "production"]);
    backup_with(&tp, &["--env", "staging"]);
    // Production moves on after the backup.
    post_image(&tp, "production", &golden_png(&bundle, 3));
    let before_rollback = db_rows(&env.database);
    assert_ne!(before_rollback, at_backup);

    let session = tp.root().join("sessions/deploy-x");
    let out = bash_in(
        &tp,
        &session,
        r#"LATEST_BACKUP=$(ls -1t ../../backups/dhash-production-*.zip | head -1)
echo "Latest backup: $LATEST_BACKUP"
if sha256sum -c "${LATEST_BACKUP}.sha256"; then
    echo "integrity verified"
else
    echo "integrity check failed"; exit 9
fi
"$ROLLBACK" --backup "$LATEST_BACKUP" --env production --force | tee rollback.log"#,
    );
    assert!(out.status.success(), "{}", show(&out));
    let t = text(&out);
    assert!(t.contains("integrity verified"), "{t}");
    let evs = events(&out);
    let done = event(&evs, "rollback.completed").unwrap_or_else(|| panic!("{}", show(&out)));
    let (_, ts) = dhash_backup::parse_backup_name(&file_name(&newest)).unwrap();
    assert!(
        done["backup"]
            .as_str()
            .unwrap()
            .ends_with(&format!("dhash-production-{ts}.zip")),
        "{done}"
    );
    // Row for row: every row of the backup is back, every row written after
    // it is gone (the post-rollback smoke tests add rows of their own).
    let rows = db_rows(&env.database);
    for (table, want) in &at_backup {
        let have = &rows[table];
        for r in want {
            assert!(have.contains(r), "{table}: backup row {r} missing");
        }
        for r in &before_rollback[table] {
            assert!(
                want.contains(r) || !have.contains(r),
                "{table}: row {r} written after the backup survived"
            );
        }
    }
    assert_eq!(rows["schema_migrations"], at_backup["schema_migrations"]);
    assert!(session.join("rollback.log").is_file());
}

#[test]
fn weekly_cleanup_leaves_ten_backups_each_with_its_sidecar_and_tools_offer_only_those() {
    let tp = shipped_layout();
    let root = tp.root().to_path_buf();
    let mut made = Vec::new();
    for _ in 0..12 {
        made.push(backup_with(&tp, &["--env", "production", "--keep", "50"]));
    }
    backup_with(&tp, &["--env", "staging"]);
    // Seed 003's weekly maintenance, verbatim.
    let out = bash_in(
        &tp,
        &root,
        r#"ls -1t backups/dhash_production_*.zip | tail -n +11 | xargs rm -f
ls -1t backups/dhash_production_*.sha256 | tail -n +11 | xargs rm -f"#,
    );
    assert!(out.status.success(), "{}", show(&out));
    let kept: Vec<PathBuf> = made[2..].iter().rev().cloned().collect();
    let list = listed(&tp, "production");
    let paths: Vec<PathBuf> = list
        .iter()
        .map(|e| PathBuf::from(e["path"].as_str().unwrap()))
        .collect();
    assert_eq!(paths, kept, "exactly the 10 newest");
    for e in &list {
        assert_eq!(e["verified"], true, "{e}");
        assert_eq!(e["has_sidecar"], true, "{e}");
    }
    // Every remaining backup and alias passes the system's check.
    let out = bash_in(
        &tp,
        &root,
        r#"for f in backups/dhash_production_*.zip; do sha256sum -c "$f.sha256"; done
n=0; for f in backups/dhash-production-*.zip; do [ -e "$f" ] || continue; sha256sum -c "$f.sha256"; n=$((n+1)); done; echo "aliases: $n""#,
    );
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(text(&out).matches(": OK").count(), 20, "{}", text(&out));
    // Seed 004's lookup still lands on the newest.
    let out = bash_in(
        &tp,
        &root.join("sessions/s"),
        r#"LATEST_BACKUP=$(ls -1t ../../backups/dhash-production-*.zip | head -1); echo "$LATEST_BACKUP"; sha256sum -c "${LATEST_BACKUP}.sha256""#,
    );
    assert!(out.status.success(), "{}", show(&out));
    let (_, ts) = dhash_backup::parse_backup_name(&file_name(&made[11])).unwrap();
    assert!(text(&out).starts_with(&format!("../../backups/dhash-production-{ts}.zip")));

    // An orphaned sidecar (its zip deleted by hand) is never offered and is
    // removed, with the aliases of deleted backups, by the next run.
    fs::remove_file(&made[2]).unwrap();
    let em = gates_core::Emitter::sink("t", "production");
    assert_eq!(listed(&tp, "production").len(), 9);
    let newest = backup_with(&tp, &["--env", "production", "--keep", "50"]);
    assert_eq!(
        dhash_backup::newest_verified(&tp.env("production"), &em).unwrap(),
        newest
    );
    let dir = root.join("backups");
    let n = names(&dir);
    for gone in &made[..3] {
        let name = file_name(gone);
        let alias = file_name(&dhash_backup::alias_of(gone).unwrap());
        for left in [
            name.clone(),
            format!("{name}.sha256"),
            alias.clone(),
            format!("{alias}.sha256"),
        ] {
            assert!(!n.contains(&left), "{left} left behind: {n:?}");
        }
    }
    let aliases = n
        .iter()
        .filter(|x| x.starts_with("dhash-production-") && x.ends_with(".zip"))
        .count();
    let sidecars = n
        .iter()
        .filter(|x| x.starts_with("dhash-production-") && x.ends_with(".zip.sha256"))
        .count();
    assert_eq!((aliases, sidecars), (10, 10), "{n:?}");
    assert_eq!(listed(&tp, "production").len(), 10);
}

#[test]
fn aliases_recreated_later_keep_the_backups_time_order() {
    let tp = shipped_layout();
    let root = tp.root().to_path_buf();
    let a = backup_with(&tp, &["--env", "production"]);
    let b = backup_with(&tp, &["--env", "production"]);
    // Aliases lost (e.g. backups copied in from an older version of the tool).
    for p in [&a, &b] {
        let alias = dhash_backup::alias_of(p).unwrap();
        fs::remove_file(&alias).unwrap();
        fs::remove_file(format!("{}.sha256", alias.display())).unwrap();
    }
    std::thread::sleep(Duration::from_millis(20));
    let c = backup_with(&tp, &["--env", "production"]);
    let out = bash_in(
        &tp,
        &root,
        "ls -1t backups/dhash-production-*.zip; echo --; ls -1t backups/dhash_production_*.zip",
    );
    assert!(out.status.success(), "{}", show(&out));
    let t = text(&out);
    let (aliases, backups) = t.split_once("--\n").unwrap();
    let want: Vec<String> = [&c, &b, &a]
        .iter()
        .map(|p| format!("backups/{}", file_name(&dhash_backup::alias_of(p).unwrap())))
        .collect();
    assert_eq!(aliases.lines().collect::<Vec<_>>(), want);
    assert_eq!(backups.lines().count(), 3);
}

#[test]
fn retention_counts_backups_not_aliases_and_refuses_zero() {
    let tp = shipped_layout();
    let dir = tp.root().join("backups");
    for _ in 0..3 {
        backup_with(&tp, &["--env", "production"]);
    }
    let newest = backup_with(&tp, &["--env", "production", "--keep", "2"]);
    let n = names(&dir);
    let count = |pre: &str, suf: &str| {
        n.iter()
            .filter(|x| x.starts_with(pre) && x.ends_with(suf))
            .count()
    };
    assert_eq!(count("dhash_production_", ".zip"), 2, "{n:?}");
    assert_eq!(count("dhash_production_", ".zip.sha256"), 2, "{n:?}");
    assert_eq!(count("dhash-production-", ".zip"), 2, "{n:?}");
    assert_eq!(count("dhash-production-", ".zip.sha256"), 2, "{n:?}");
    assert_eq!(
        listed(&tp, "production")[0]["path"],
        newest.to_string_lossy().as_ref()
    );

    // --keep 0 is a usage error before anything is written.
    let before = names(&dir);
    let out = run(backup_cmd(&tp).args(["--env", "production", "--keep", "0"]));
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert_eq!(names(&dir), before);

    // retention.backups 0 in environments.json: refused (exit 2, naming the
    // field), nothing pruned.
    tp.edit_topology(|t| {
        t["environments"]["production"]["retention"]["backups"] = 0.into();
    });
    let out = run(backup_cmd(&tp).args(["--env", "production"]));
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("retention.backups"),
        "{}",
        show(&out)
    );
    assert_eq!(names(&dir), before);
    tp.edit_topology(|t| {
        t["environments"]["production"]["retention"]["backups"] = 10.into();
    });

    // retention.backups 0 reaching the library is refused the same way
    // (exit 2), never taken as 1.
    let mut env = tp.env("production");
    env.retention.backups = 0;
    let lock = gates_core::lock::EnvLock::acquire(&env.lock_path(), "production", "test").unwrap();
    let em = gates_core::Emitter::sink("t", "production");
    let err = dhash_backup::create(&tp.project(), &env, &lock, &Default::default(), &em)
        .expect_err("retention 0");
    assert_eq!(
        gates_core::exit::exit_for(&err),
        gates_core::exit::Exit::Usage
    );
    assert!(
        format!("{err:#}").contains("retention.backups is 0"),
        "{err:#}"
    );
    assert_eq!(names(&dir), before, "nothing written, nothing pruned");
    let err = dhash_backup::prune(&env, 0, Path::new("/none"), &em).expect_err("prune 0");
    assert!(format!("{err:#}").contains("keep at least 1"));
    assert_eq!(names(&dir), before);
}

/// Runs a command that must end within `secs`; kills it (and fails) otherwise.
fn run_bounded(cmd: &mut Command, secs: u64) -> std::process::Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("still running after {secs} s (blocked?): {}", show(&out));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn fifos_directories_sockets_and_missing_paths_are_refused_promptly() {
    let (tp, _) = project_with_release(false);
    let dir = backups(&tp);
    let good = make_backup(&tp, "staging");
    let mode = nix::sys::stat::Mode::from_bits_truncate(0o600);

    // A FIFO under a backup name, with a valid-looking sidecar.
    let fifo = dir.join("dhash_staging_20000101T000000001Z.zip");
    nix::unistd::mkfifo(&fifo, mode).unwrap();
    fs::write(
        format!("{}.sha256", fifo.display()),
        format!("{}  backups/{}\n", "0".repeat(64), file_name(&fifo)),
    )
    .unwrap();
    let out = run_bounded(backup_cmd(&tp).arg("--verify").arg(&fifo), 20);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is a FIFO"), "{err}");
    assert_eq!(events(&out)[0]["event"], "backup.rejected");

    // A good zip whose sidecar is a FIFO.
    let z = dir.join("dhash_staging_20000101T000000002Z.zip");
    fs::copy(&good, &z).unwrap();
    nix::unistd::mkfifo(&PathBuf::from(format!("{}.sha256", z.display())), mode).unwrap();
    let out = run_bounded(backup_cmd(&tp).arg("--verify").arg(&z), 20);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("sidecar"),
        "{}",
        show(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is a FIFO"),
        "{}",
        show(&out)
    );

    // A directory, a socket, a missing path, a dangling alias.
    let out = run_bounded(backup_cmd(&tp).arg("--verify").arg(&dir), 20);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is a directory"),
        "{}",
        show(&out)
    );
    let sock = dir.join("dhash_staging_20000101T000000003Z.zip");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let out = run_bounded(backup_cmd(&tp).arg("--verify").arg(&sock), 20);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is a socket"),
        "{}",
        show(&out)
    );
    let out = run_bounded(
        backup_cmd(&tp).arg("--verify").arg(dir.join("nope.zip")),
        20,
    );
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not exist"),
        "{}",
        show(&out)
    );
    let dangling = dir.join("dhash-staging-20000101T000000004Z.zip");
    std::os::unix::fs::symlink("dhash_staging_20000101T000000004Z.zip", &dangling).unwrap();
    let out = run_bounded(backup_cmd(&tp).arg("--verify").arg(&dangling), 20);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not exist (it is a symbolic link"),
        "{}",
        show(&out)
    );

    // --list and the next backup run do not hang on them either; the special
    // files are never offered as backups.
    let list = run_bounded(backup_cmd(&tp).args(["--env", "staging", "--list"]), 60);
    assert!(list.status.success(), "{}", show(&list));
    let paths: Vec<String> = events(&list)
        .iter()
        .filter(|e| e["event"] == "backup.listed")
        .map(|e| e["path"].as_str().unwrap().to_string())
        .collect();
    assert!(paths.contains(&good.to_string_lossy().to_string()));
    assert!(
        !paths.contains(&fifo.to_string_lossy().to_string()),
        "{paths:?}"
    );
    assert!(
        !paths.contains(&sock.to_string_lossy().to_string()),
        "{paths:?}"
    );
    let out = run_bounded(backup_cmd(&tp).args(["--env", "staging"]), 60);
    assert!(out.status.success(), "{}", show(&out));
    let em = gates_core::Emitter::sink("t", "staging");
    let newest = dhash_backup::newest_verified(&tp.env("staging"), &em).unwrap();
    assert!(newest.is_file() && newest != fifo);
}

/// Copies a backup, replacing the content of some entries; the manifest's
/// hashes and sizes are rebuilt to match (then `edit` may alter it further),
/// so only the content itself is wrong.
fn rebuild_backup(
    from: &Path,
    to: &Path,
    replace: &[(&str, Vec<u8>)],
    mut edit: impl FnMut(&mut serde_json::Value),
) {
    use sha2::Digest;
    use std::io::{Read, Write};
    let mut src = zip::ZipArchive::new(fs::File::open(from).unwrap()).unwrap();
    let mut entries = Vec::new();
    let mut manifest = serde_json::Value::Null;
    for i in 0..src.len() {
        let mut e = src.by_index(i).unwrap();
        let name = e.name().unwrap().to_string();
        let mut buf = Vec::new();
        e.read_to_end(&mut buf).unwrap();
        if name == "manifest.json" {
            manifest = serde_json::from_slice(&buf).unwrap();
        } else {
            if let Some((_, content)) = replace.iter().find(|(n, _)| *n == name) {
                buf = content.clone();
            }
            entries.push((name, buf));
        }
    }
    for f in manifest["files"].as_array_mut().unwrap() {
        let (_, buf) = entries
            .iter()
            .find(|(n, _)| f["path"] == n.as_str())
            .unwrap();
        f["bytes"] = buf.len().into();
        f["sha256"] = hex::encode(sha2::Sha256::digest(buf)).into();
    }
    edit(&mut manifest);
    let mut dst = zip::ZipWriter::new(fs::File::create(to).unwrap());
    for (name, buf) in &entries {
        dst.start_file(name.as_str(), zip::write::SimpleFileOptions::default())
            .unwrap();
        dst.write_all(buf).unwrap();
    }
    dst.start_file("manifest.json", zip::write::SimpleFileOptions::default())
        .unwrap();
    dst.write_all(&serde_json::to_vec(&manifest).unwrap())
        .unwrap();
    dst.finish().unwrap();
}

#[test]
fn a_backup_whose_database_sqlite_cannot_use_never_verifies_nor_restores() {
    let (tp, _) = project_with_release(false);
    let root = tp.root().to_path_buf();
    let env = tp.env("staging");
    let good = make_backup(&tp, "staging");
    let dir = backups(&tp);
    let live = fs::read(&env.database).unwrap();

    let garbage = dir.join("dhash_staging_20000101T000000001Z.zip");
    rebuild_backup(
        &good,
        &garbage,
        &[(
            "data/dhash.sqlite3",
            b"not a database, but hashed like one ".repeat(300),
        )],
        |_| {},
    );
    write_sidecar(&root, &garbage);
    let mut half = live.clone();
    let n = half.len();
    for b in &mut half[n / 2..] {
        *b = 0;
    }
    let damaged = dir.join("dhash_staging_20000101T000000002Z.zip");
    rebuild_backup(&good, &damaged, &[("data/dhash.sqlite3", half)], |_| {});
    write_sidecar(&root, &damaged);
    let schema = dir.join("dhash_staging_20000101T000000003Z.zip");
    rebuild_backup(&good, &schema, &[], |m| m["schema_version"] = 99.into());
    write_sidecar(&root, &schema);

    // The sidecars are right: the system's check passes, ours must not.
    for p in [&garbage, &damaged, &schema] {
        let out = Command::new("sha256sum")
            .arg("-c")
            .arg(format!("{}.sha256", p.display()))
            .current_dir(&root)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", show(&out));
    }
    for (p, want) in [
        (&garbage, "not a valid SQLite database"),
        (&damaged, "data/dhash.sqlite3"),
        (&schema, "manifest says 99"),
    ] {
        let out = run(backup_cmd(&tp).arg("--verify").arg(p));
        assert_eq!(out.status.code(), Some(1), "{}", show(&out));
        let ev = &events(&out)[0];
        assert_eq!(ev["event"], "backup.rejected");
        assert!(ev["error"].as_str().unwrap().contains(want), "{ev}");
        let x = tempfile::tempdir().unwrap();
        let e = dhash_backup::extract(p, &x.path().join("s"), &Default::default())
            .expect_err("extract refuses");
        assert!(format!("{e:#}").contains(want), "{e:#}");
        // Even an emergency extraction without checksum validation refuses it.
        let e = dhash_backup::extract(
            p,
            &x.path().join("t"),
            &dhash_backup::ExtractOptions {
                skip_validation: true,
            },
        )
        .expect_err("skip_validation still checks the database");
        assert!(format!("{e:#}").contains(want), "{e:#}");
    }
    // The good backup still verifies; a rollback to the broken one is refused
    // before anything is touched.
    run(backup_cmd(&tp).arg("--verify").arg(&good));
    let out = run(tp
        .cmd("rollback_dhash")
        .args(["--env", "staging", "--force", "--backup"])
        .arg(&garbage));
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a valid SQLite database"),
        "{}",
        show(&out)
    );
    assert_eq!(
        fs::read(&env.database).unwrap(),
        live,
        "production untouched"
    );
    assert!(!env.install_root.join("rollback.journal").exists());
    let listed = listed(&tp, "staging");
    let bad: Vec<&serde_json::Value> = listed.iter().filter(|e| e["verified"] == false).collect();
    assert_eq!(bad.len(), 3, "{listed:?}");
}

#[test]
fn staging_backups_left_in_the_shared_folder_move_into_stagings_own_folder() {
    // The layout before environments had their own folders: both in backups/.
    let (tp, _) = project_with_release(false);
    let root = tp.root().to_path_buf();
    let old = make_backup(&tp, "staging");
    assert_eq!(old.parent().unwrap(), root.join("backups"));
    let prod = tp
        .root()
        .join("backups/dhash_production_20000101T000000000Z.zip");
    fs::write(&prod, b"not staging's").unwrap();
    tp.edit_topology(|t| {
        t["environments"]["staging"]["backup_dir"] = "backups/staging".into();
    });
    let out = run(backup_cmd(&tp).args(["--env", "staging"]));
    assert!(out.status.success(), "{}", show(&out));
    let evs = events(&out);
    let moved = event(&evs, "backup.moved").unwrap_or_else(|| panic!("{}", show(&out)));
    let new = root.join("backups/staging").join(file_name(&old));
    assert_eq!(moved["path"], new.to_string_lossy().as_ref());
    // Nothing of staging's is left in backups/; production's file is untouched.
    let left: Vec<String> = names(&root.join("backups"))
        .into_iter()
        .filter(|n| n.contains("staging_") || n.contains("staging-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(prod.is_file());
    // Both staging backups are listed, verified, and pass sha256sum -c from the root.
    let list = listed(&tp, "staging");
    assert_eq!(list.len(), 2);
    assert!(list.iter().all(|e| e["verified"] == true), "{list:?}");
    assert_eq!(list[1]["path"], new.to_string_lossy().as_ref());
    let out = bash_in(
        &tp,
        &root,
        r#"for f in backups/staging/dhash_staging_*.zip backups/staging/dhash-staging-*.zip; do sha256sum -c "$f.sha256"; done"#,
    );
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(text(&out).matches(": OK").count(), 4, "{}", text(&out));
}

/// Issue 14 (c): a run that fails once it has begun says so on stdout with
/// `backup.failed` (level error, the path it was writing, the reason), so
/// `backup_dhash | notify` alerts; the exit code is unchanged. A run that
/// never began (the lock is held: exit 75) is not a failed backup.
#[test]
fn a_failed_backup_run_emits_backup_failed_with_its_path_and_reason() {
    let (tp, _) = project_with_release(false);
    let env = tp.env("staging");
    let failed = |out: &std::process::Output| -> serde_json::Value {
        assert_eq!(out.status.code(), Some(1), "{}", show(out));
        let evs = events(out);
        let ev = event(&evs, "backup.failed")
            .unwrap_or_else(|| panic!("no backup.failed: {}", show(out)))
            .clone();
        assert_eq!(ev["level"], "error", "{ev}");
        assert_eq!(ev["env"], "staging", "{ev}");
        assert!(ev["reason"].as_str().is_some_and(|r| !r.is_empty()), "{ev}");
        ev
    };

    // Refused: an interrupted rollback is pending.
    let journal = env.install_root.join("rollback.journal");
    fs::write(&journal, b"{}").unwrap();
    let out = run(backup_cmd(&tp).args(["--env", "staging"]));
    let ev = failed(&out);
    assert!(
        ev["reason"]
            .as_str()
            .unwrap()
            .contains("interrupted rollback"),
        "{ev}"
    );
    assert_eq!(ev["path"], backups(&tp).to_str().unwrap(), "{ev}");
    fs::remove_file(&journal).unwrap();

    // The backup folder cannot be created (a file is in the way).
    fs::write(tp.root().join("blocker"), b"a file").unwrap();
    tp.edit_topology(|t| t["environments"]["staging"]["backup_dir"] = "blocker/backups".into());
    let out = run(backup_cmd(&tp).args(["--env", "staging"]));
    let ev = failed(&out);
    assert_eq!(
        ev["path"],
        tp.root().join("blocker/backups").to_str().unwrap(),
        "{ev}"
    );
    tp.edit_topology(|t| t["environments"]["staging"]["backup_dir"] = "backups".into());

    // The database cannot be snapshotted (not SQLite): after backup.started,
    // the path is the zip it was making.
    let db = fs::read(&env.database).ok();
    fs::write(&env.database, b"not a database, just text. ".repeat(300)).unwrap();
    let out = run(backup_cmd(&tp).args(["--env", "staging"]));
    let ev = failed(&out);
    let evs = events(&out);
    let started = event(&evs, "backup.started").expect("backup.started");
    assert_eq!(ev["path"], started["path"], "{}", show(&out));
    assert!(ev["reason"].as_str().unwrap().contains("database"), "{ev}");
    assert!(names(&backups(&tp)).iter().all(|n| !n.ends_with(".zip")));
    match db {
        Some(bytes) => fs::write(&env.database, bytes).unwrap(),
        None => fs::remove_file(&env.database).unwrap(),
    }

    // The lock is held: nothing began, exit 75, no backup.failed.
    let lock =
        gates_core::lock::EnvLock::acquire(&env.lock_path(), "staging", "deploy_dhash").unwrap();
    let out = run(backup_cmd(&tp).args(["--env", "staging"]));
    assert_eq!(out.status.code(), Some(75), "{}", show(&out));
    assert!(
        event(&events(&out), "backup.failed").is_none(),
        "{}",
        show(&out)
    );
    drop(lock);
    make_backup(&tp, "staging");
}
