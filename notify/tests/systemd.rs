//! The shipped systemd units (`deploy/systemd/dhash-escalate@.service` and
//! `.timer`, which run `notify escalate --env <env>` every minute) parse:
//! `systemd-analyze verify` on an instance of each, with `/opt/dhash`
//! pointed at a scratch tree whose `scripts/lib/run-tool` exists (verify
//! checks that ExecStart's program is executable). systemd need not be
//! running; `systemd-analyze` must be installed (Debian: the `systemd`
//! package; `.ci/run` installs it) or the test fails saying so.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn units_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd")
}

#[test]
fn the_escalation_timer_and_service_units_verify() {
    let probe = Command::new("systemd-analyze").arg("--version").output();
    assert!(
        probe.is_ok_and(|o| o.status.success()),
        "systemd-analyze is not installed: .ci/run must install Debian's `systemd` package \
         (systemd-analyze verify works without systemd running)"
    );
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let tool = root.join("scripts/lib/run-tool");
    std::fs::create_dir_all(tool.parent().unwrap()).unwrap();
    std::fs::write(&tool, "#!/bin/sh\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    let units = tmp.path().join("units");
    std::fs::create_dir_all(&units).unwrap();
    let mut names = Vec::new();
    for kind in ["service", "timer"] {
        let text = std::fs::read_to_string(units_dir().join(format!("dhash-escalate@.{kind}")))
            .unwrap_or_else(|e| panic!("deploy/systemd/dhash-escalate@.{kind}: {e}"));
        if kind == "service" {
            assert!(
                text.contains("ExecStart=/opt/dhash/scripts/lib/run-tool notify escalate --env %i"),
                "{text}"
            );
        }
        let name = format!("dhash-escalate@production.{kind}");
        let local = text.replace("/opt/dhash", &root.display().to_string());
        std::fs::write(units.join(&name), local).unwrap();
        names.push(name);
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&names)
        .current_dir(&units)
        .env("SYSTEMD_LOG_LEVEL", "notice")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    // A unit that does not parse is refused, so the pass above means something.
    std::fs::write(
        units.join("broken@production.timer"),
        "[Timer]\nOnCalendar=every-blue-moon\n",
    )
    .unwrap();
    let bad = Command::new("systemd-analyze")
        .args(["verify", "broken@production.timer"])
        .current_dir(&units)
        .output()
        .unwrap();
    assert!(!bad.status.success(), "a broken timer should not verify");
}
