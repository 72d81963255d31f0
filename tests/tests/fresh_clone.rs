//! The runbooks' commands on a fresh clone, as a new user meets them.
//!
//! The repository is cloned into an empty folder and NOTHING is built
//! beforehand: the drop-in scripts build the tools (release profile, in the
//! clone's own `target/`), `deploy_dhash` builds the checkout's release
//! bundle, and `--tag v1.2.3` builds that git tag's tree. The command
//! sequences are the seeds' own, in their order:
//! seed 003 set-up (`npm ci`, `--help`); seed 002 quick start, production
//! deployment, staging deployment and emergency rollback; seed 003 standard
//! deployment, emergency rollback, weekly and monthly maintenance; seed 004's
//! session from `sessions/<name>/` (under a pseudo-terminal, since it asks
//! `read -p` and the un-forced rollback asks for confirmation); seed 000's
//! manual rollback with staging and production backups both present.
//!
//! What is substituted, and why:
//! - the ports (3000/3001 may be taken on a CI machine): in the clone's
//!   `environments.json` and in the commands' `localhost:3000`;
//! - time: a 60-minute watch cannot run in CI, so the clone's config files
//!   are scaled (monitor windows 30 s / 20 s, a poll every second, gate
//!   windows in seconds instead of minutes), the commands' `--duration 600 /
//!   3600 / 1800` become 20 / 30 / 20, `sleep 30` / `sleep 10` become
//!   `sleep 3` / `sleep 1`, and `tail -f` runs under `timeout 2`;
//! - `npm test` (seed 002) is not run: it is this very test suite.
//! The config edits are committed in the clone and `v1.2.3` is tagged, as an
//! operator's repository has its release tags. Both services get steady
//! traffic from the test (valid images), as a service in use does: a watch
//! with no traffic at all is inconclusive by design (exit 5). Rollbacks are
//! checked row for row against the database inside the backup they restored
//! (rows the traffic writes after the restore come after them).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use super::describe;

/// Steady traffic of valid images to both environments, stopped on drop.
struct Traffic(Vec<std::process::Child>);

impl Traffic {
    fn start(c: &Clone) -> Traffic {
        let children = ["production", "staging"]
            .iter()
            .map(|env| {
                Command::new(testkit::bin_path("dhash-service"))
                    .args(["load", "--url", &c.url(env), "--rate", "3"])
                    .args(["--duration", "3000s", "--mix", "valid=100"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("load driver")
            })
            .collect();
        Traffic(children)
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What a new user's shell does not have: the test harness's build
/// shortcuts, and secrets of the machine running the tests.
fn scrub(c: &mut Command) {
    let harness = [
        "DHASH_ROOT",
        "DHASH_NO_BUILD",
        "DHASH_PROFILE",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET_DIR",
        "EMAIL_TO",
    ];
    for var in harness.iter().chain(gates_core::redact::SECRET_VARS) {
        c.env_remove(var);
    }
}

/// A clone in a temp folder, with everything it started stopped on drop.
struct Clone {
    _dir: tempfile::TempDir,
    root: PathBuf,
    ports: BTreeMap<&'static str, u16>,
}

impl Drop for Clone {
    fn drop(&mut self) {
        // Background watchers first (they could restart nothing, but they
        // would poll a dead service), then the services.
        for env in ["production", "staging"] {
            let base = self.root.join(".dhash").join(env);
            if let Some(pid) = std::fs::read_to_string(base.join("watch.json"))
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .and_then(|v| v["pid"].as_u64())
            {
                let _ = Command::new("kill").arg(pid.to_string()).status();
            }
        }
        if let Ok(project) = gates_core::project::Project::open(&self.root) {
            for env in project.topology.environments.values() {
                let _ = gates_core::service::stop(
                    env,
                    &gates_core::Emitter::sink("fresh-clone", &env.name),
                );
            }
        }
        if std::env::var_os("TESTKIT_KEEP").is_some_and(|v| v == "1") {
            eprintln!("fresh clone kept at {}", self.root.display());
            std::mem::forget(std::mem::replace(
                &mut self._dir,
                tempfile::tempdir().expect("tempdir"),
            ));
        }
    }
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "{}",
        describe(&format!("git {args:?}"), &out)
    );
}

impl Clone {
    fn new() -> Clone {
        let dir = tempfile::Builder::new()
            .prefix("dhash-fresh-clone-")
            .tempdir()
            .expect("temp folder");
        let root = dir.path().join("dhash");
        let out = Command::new("git")
            .args(["clone", "--quiet"])
            .arg(super::repo())
            .arg(&root)
            .output()
            .expect("git clone");
        assert!(out.status.success(), "{}", describe("git clone", &out));
        let mut ports = BTreeMap::new();
        ports.insert("production", testkit::free_port());
        loop {
            let p = testkit::free_port();
            if p != ports["production"] {
                ports.insert("staging", p);
                break;
            }
        }
        let clone = Clone {
            _dir: dir,
            root,
            ports,
        };
        clone.scale_config();
        git(
            &clone.root,
            &[
                "-c",
                "user.name=ops",
                "-c",
                "user.email=ops@example.com",
                "commit",
                "-qam",
                "local ports and test time scale",
            ],
        );
        git(&clone.root, &["tag", "v1.2.3"]);
        clone
    }

    /// Ports and time scale, as described in the module doc.
    fn scale_config(&self) {
        let topo_path = self.root.join("environments.json");
        let text = std::fs::read_to_string(&topo_path)
            .expect("environments.json")
            .replace(
                "127.0.0.1:3000",
                &format!("127.0.0.1:{}", self.ports["production"]),
            )
            .replace(
                "127.0.0.1:3001",
                &format!("127.0.0.1:{}", self.ports["staging"]),
            );
        let mut topo: Value = serde_json::from_str(&text).expect("environments.json parses");
        for (env, secs) in [("production", "30s"), ("staging", "20s")] {
            let m = &mut topo["environments"][env]["monitor"];
            m["duration"] = Value::from(secs);
            m["cadence"] = serde_json::json!([{"every": "1s"}]);
        }
        std::fs::write(&topo_path, serde_json::to_vec_pretty(&topo).expect("json")).expect("write");

        let gates_path = self.root.join("quality-gates-config.json");
        let mut gates: Value =
            serde_json::from_slice(&std::fs::read(&gates_path).expect("gates file"))
                .expect("parses");
        if let Some(envs) = gates["environments"].as_object_mut() {
            for env in envs.values_mut() {
                if let Some(gs) = env["quality_gates"].as_object_mut() {
                    for g in gs.values_mut() {
                        if let Some(n) = g["window_minutes"].as_f64() {
                            if n > 0.0 {
                                g["window_minutes"] = Value::from(format!("{n}s"));
                            }
                        }
                    }
                }
            }
        }
        std::fs::write(
            &gates_path,
            serde_json::to_vec_pretty(&gates).expect("json"),
        )
        .expect("write");
    }

    /// The commands as a new user's shell runs them: no build shortcuts.
    fn bash(&self, script: &str) -> Command {
        let script = script.replace(
            "localhost:3000",
            &format!("localhost:{}", self.ports["production"]),
        );
        let mut c = Command::new("bash");
        c.args(["-c", &format!("set -eo pipefail\n{script}")])
            .current_dir(&self.root)
            .stdin(Stdio::null());
        scrub(&mut c);
        c
    }

    fn run(&self, what: &str, script: &str) -> String {
        let out = self.bash(script).output().expect("bash");
        self.succeeded(what, &out)
    }

    /// `script` in a pseudo-terminal (util-linux `script`), `input` typed.
    fn run_in_terminal(&self, what: &str, script: &str, input: &str) -> String {
        let file = self.root.join(format!("{}.sh", what.replace(' ', "_")));
        let script = script.replace(
            "localhost:3000",
            &format!("localhost:{}", self.ports["production"]),
        );
        std::fs::write(&file, format!("set -eo pipefail\n{script}")).expect("write script");
        let mut c = Command::new("script");
        c.args(["-qefc"])
            .arg(format!("bash {}", file.display()))
            .arg("/dev/null")
            .current_dir(&self.root)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        scrub(&mut c);
        let mut child = c.spawn().expect("script(1)");
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("stdin");
            stdin.write_all(input.as_bytes()).expect("type");
        }
        let out = child.wait_with_output().expect("script(1) output");
        self.succeeded(what, &out)
    }

    /// Keeps the step's output beside the clone (for a failing run's
    /// post-mortem), asserts it succeeded and returns its stdout.
    fn succeeded(&self, what: &str, out: &std::process::Output) -> String {
        let text = describe(what, out);
        std::fs::write(
            self.root.join(format!("{}.out", what.replace(' ', "_"))),
            &text,
        )
        .ok();
        assert!(out.status.success(), "{text}");
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    fn url(&self, env: &str) -> String {
        format!("http://127.0.0.1:{}", self.ports[env])
    }

    /// Every row of the environment's hashes table, in id order.
    fn rows(&self, env: &str) -> Vec<Vec<String>> {
        rows_of(
            &self
                .root
                .join(".dhash")
                .join(env)
                .join("data/dhash.sqlite3"),
        )
    }

    /// The newest production backup, as the seeds' `ls | sort -r | head -n1` finds it.
    fn newest_production_backup(&self) -> PathBuf {
        let mut names: Vec<String> = std::fs::read_dir(self.root.join("backups"))
            .expect("backups/")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.starts_with("dhash_production_") && n.ends_with(".zip"))
            .collect();
        names.sort();
        self.root
            .join("backups")
            .join(names.pop().expect("a production backup"))
    }

    /// After a rollback to `backup`: the live rows begin with exactly the
    /// backup's rows (its database, read from the zip), row for row; rows
    /// the traffic wrote since the restore follow them.
    fn assert_restored_from(&self, backup: &Path, what: &str) -> Vec<Vec<String>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("backup.sqlite3");
        let out = Command::new("unzip")
            .arg("-p")
            .arg(backup)
            .arg("data/dhash.sqlite3")
            .output()
            .expect("unzip");
        assert!(out.status.success(), "{}", describe("unzip -p", &out));
        std::fs::write(&db, &out.stdout).expect("write db");
        let in_backup = rows_of(&db);
        let live = self.rows("production");
        assert!(!in_backup.is_empty(), "{what}: the backup holds rows");
        assert!(
            live.len() >= in_backup.len() && live[..in_backup.len()] == in_backup[..],
            "{what}: the restored rows equal the backup's, row for row ({} in the backup, {} live)",
            in_backup.len(),
            live.len()
        );
        in_backup
    }
}

/// Every row of a database's hashes table, in id order.
fn rows_of(db: &Path) -> Vec<Vec<String>> {
    {
        let conn = rusqlite::Connection::open(db).expect("open database");
        let mut stmt = conn
            .prepare("SELECT * FROM hashes ORDER BY id")
            .expect("select");
        let n = stmt.column_count();
        stmt.query_map([], |r| {
            (0..n)
                .map(|i| r.get_ref(i).map(|v| format!("{v:?}")))
                .collect::<Result<Vec<_>, _>>()
        })
        .expect("rows")
        .collect::<Result<Vec<_>, _>>()
        .expect("row values")
    }
}

impl Clone {
    fn post_images(&self, env: &str, seeds: std::ops::Range<u8>) {
        for seed in seeds {
            let img = image::RgbImage::from_fn(64, 48, |x, y| {
                image::Rgb([
                    (x as u8).wrapping_mul(seed),
                    (y as u8).wrapping_add(seed),
                    seed,
                ])
            });
            let mut buf = std::io::Cursor::new(Vec::new());
            img.write_to(&mut buf, image::ImageFormat::Png)
                .expect("png");
            testkit::post_image(&format!("{}/api/dhash/hash", self.url(env)), buf.get_ref());
        }
    }
}

#[test]
fn a_fresh_clone_runs_the_seed_runbooks_verbatim() {
    let c = Clone::new();
    assert!(!c.root.join("target").exists() && !c.root.join("dist").exists());

    // Seed 003, "Environment Setup".
    c.run(
        "seed003 setup",
        r#"
npm ci
./scripts/backup_dhash.sh --help
./scripts/deploy_dhash.sh --help
./scripts/migrate_dhash.sh --help
./scripts/rollback_dhash.sh --help
"#,
    );

    // Seed 002: quick start for deploy operators, then "Production Deployment".
    c.run(
        "seed002 quick start",
        r#"
./scripts/backup_dhash.sh --env production
./scripts/deploy_dhash.sh --env production
timeout 2 tail -f logs/deploy_*.log || [ $? -eq 124 ]
"#,
    );
    let health: Value = serde_json::from_str(&c.run(
        "health after first deploy",
        "curl -s http://localhost:3000/health",
    ))
    .expect("health answers JSON");
    assert_eq!(health["status"], "ok", "{health}");
    c.post_images("production", 1..6);
    // Stored before every backup that follows: a rollback to any of them keeps them.
    let posted = c.rows("production");
    // From here on both services are in use, as in production.
    let _traffic = Traffic::start(&c);
    c.run(
        "seed002 production deployment",
        r#"
./scripts/backup_dhash.sh --env production
./scripts/deploy_dhash.sh --env production
timeout 2 tail -f logs/deploy_*.log || [ $? -eq 124 ]
timeout 2 tail -f logs/monitor_*.log || [ $? -eq 124 ]
"#,
    );

    // Seed 002, "Staging Deployment (for testing)" and "Manual Testing".
    c.run(
        "seed002 staging",
        r#"
./scripts/deploy_dhash.sh --dry-run --env staging
./scripts/deploy_dhash.sh --env staging
./scripts/migrate_dhash.sh --env staging --type forward
./scripts/smoke_tests.sh --env staging --post-deploy
./scripts/backup_dhash.sh --env staging
./scripts/rollback_dhash.sh --env staging --dry-run
node scripts/notify.js --type test --env staging --message "Test message" --dry-run
"#,
    );

    // Seed 002, "Emergency Rollback".
    c.run(
        "seed002 emergency rollback",
        r#"
LATEST_BACKUP=$(ls -1 backups/dhash_production_*.zip | sort -r | head -n1)
sha256sum -c "${LATEST_BACKUP}.sha256"
./scripts/rollback_dhash.sh --backup "$LATEST_BACKUP" --env production --force
./scripts/smoke_tests.sh --env production --post-rollback
"#,
    );
    let restored = c.assert_restored_from(&c.newest_production_backup(), "seed 002");
    assert!(
        posted.iter().all(|r| restored.contains(r)),
        "every row stored before the backups is in the restored data"
    );

    // Seed 003, "Standard Deployment": the deploy's background watch is
    // joined by the runbook's own monitor, which attaches and ends with it.
    c.run(
        "seed003 standard deployment",
        r#"
./scripts/backup_dhash.sh --env production --verbose
./scripts/migrate_dhash.sh --env production --verbose
./scripts/deploy_dhash.sh --env production --backup-first --verbose
node scripts/monitor_dhash.js --env production --verbose &
MONITOR_PID=$!
./scripts/smoke_tests.sh --env production --verbose
wait $MONITOR_PID
"#,
    );

    // Seed 003, "Rollback Procedures" and "Service Down".
    c.post_images("production", 10..14);
    c.run(
        "seed003 rollback procedures",
        r#"
ls -la backups/dhash_*.zip
LATEST_BACKUP=$(ls -1 backups/dhash_production_*.zip | sort -r | head -n1)
echo "Latest backup: $LATEST_BACKUP"
sha256sum -c "${LATEST_BACKUP}.sha256"
./scripts/rollback_dhash.sh --backup "$LATEST_BACKUP" --env production --force
./scripts/rollback_dhash.sh --backup "$LATEST_BACKUP" --env production --force --skip-validation
for i in {1..3}; do
  echo "Health check $i/3:"
  curl -s http://localhost:3000/health | jq .
  sleep 1
done
./scripts/smoke_tests.sh --env production --quick
LATEST_BACKUP=$(ls -1t backups/dhash_production_*.zip | head -n1)
./scripts/rollback_dhash.sh --backup "$LATEST_BACKUP" --env production --force --skip-validation
curl http://localhost:3000/health
"#,
    );
    c.assert_restored_from(&c.newest_production_backup(), "seed 003");

    // Seed 000's notification and dry-run examples, seed 002's development
    // workflow, seed 003's monitoring commands.
    c.run(
        "seed000 seed002 seed003 checks",
        r#"
./scripts/backup_dhash.sh --env staging --dry-run
./scripts/deploy_dhash.sh --env staging --dry-run
./scripts/migrate_dhash.sh --env staging --dry-run
./scripts/smoke_tests.sh --env staging --dry-run
node scripts/deploy/deploy-notify.js start --env staging --dry-run
node scripts/monitor_dhash.js --env staging --dry-run --verbose
grep "Quality gate" monitor_logs/dhash_production_*.log | tail -10
cat quality-gates-config.json | jq .environments.production
"#,
    );

    // Seed 003, weekly and monthly maintenance.
    c.run(
        "seed003 maintenance",
        r#"
find monitor_logs/ -name "*.log" -mtime +7 -ls
ls -1t backups/dhash_production_*.zip | tail -n +11 | xargs rm -f
ls -1t backups/dhash_production_*.sha256 | tail -n +11 | xargs rm -f
node scripts/validate_logging.js --env production
node -e "
const config = require('./quality-gates-config.json');
const prod = config.environments.production;
console.log('Current production thresholds:');
console.log(JSON.stringify(prod.quality_gates, null, 2));
"
node scripts/notify.js --level info --message "Monthly notification test" --env production
./scripts/smoke_tests.sh --env production
"#,
    );

    // Seed 004: the deployment session, from sessions/<name>/, in a terminal.
    c.run_in_terminal(
        "seed004 session",
        r#"
export RELEASE_TAG="v1.2.3"
export DEPLOY_LEAD="@ops"
git tag -l | grep "$RELEASE_TAG" || {
    echo "Error: Release tag $RELEASE_TAG not found"
    exit 1
}
DEPLOY_SESSION="deploy-$(date +%Y%m%d-%H%M%S)"
mkdir -p "sessions/$DEPLOY_SESSION"
cd "sessions/$DEPLOY_SESSION"
echo "Deployment Session: $DEPLOY_SESSION" > session.log
echo "Release Tag: $RELEASE_TAG" >> session.log
../../scripts/deploy_dhash.sh --env staging --tag "$RELEASE_TAG" | tee staging-deploy.log
../../scripts/monitor_dhash.sh --env staging --duration 20 | tee staging-monitor.log
read -p "Staging verification complete? (y/N): " -n 1 -r
if [[ ! $REPLY =~ ^[Yy]$ ]]; then
    echo "Staging verification failed - STOP"
    exit 1
fi
if [ ! -d "../../backups" ]; then
    mkdir -p "../../backups"
fi
../../scripts/deploy_dhash.sh --env production --tag "$RELEASE_TAG" | tee production-deploy.log
sleep 3
../../scripts/monitor_dhash.sh --env production --duration 30 | tee production-monitor.log &
MONITOR_PID=$!
echo "Monitor PID: $MONITOR_PID" >> session.log
tail -n 5 ../../logs/deploy-production-*.log
tail -n 5 ../../monitor_logs/monitor-production-*
LATEST_BACKUP=$(ls -1t ../../backups/dhash-production-*.zip | head -1)
echo "Latest backup: $LATEST_BACKUP"
sha256sum -c "${LATEST_BACKUP}.sha256"
../../scripts/rollback_dhash.sh --backup "$LATEST_BACKUP" --env production | tee rollback.log
../../scripts/monitor_dhash.sh --env production --duration 20
wait $MONITOR_PID || true
echo "Rollback completed at: $(date -Iseconds)" >> session.log
"#,
        // `read -n 1` takes the first y; the rollback's confirmation the line after.
        "yy\n",
    );

    // Seed 000: manual rollback with staging and production backups present.
    let before = c.rows("production");
    c.run(
        "backups of both",
        "./scripts/backup_dhash.sh --env staging\n./scripts/backup_dhash.sh --env production",
    );
    c.post_images("production", 20..24);
    let backup = c.newest_production_backup();
    c.run(
        "seed000 manual rollback",
        r#"
LATEST_BACKUP=$(ls -1 backups/dhash_*.zip | sort -r | head -n1)
sha256sum -c "${LATEST_BACKUP}.sha256"
./scripts/rollback_dhash.sh --backup "$LATEST_BACKUP" --env production --force
./scripts/smoke_tests.sh --env production --post-rollback
./health-check.sh
"#,
    );
    let restored = c.assert_restored_from(&backup, "seed 000");
    assert!(
        before.iter().all(|r| restored.contains(r)),
        "seed 000: every row stored before the backup is back"
    );
}
