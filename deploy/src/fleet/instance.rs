//! One fleet instance: moved to the new release (drained, deployed with the
//! single-instance deploy, put back) or rolled back to its previous release
//! (drained, switched back, restarted, proved healthy, put back).
//!
//! Draining is the realistic part of "no request fails during a switch": the
//! instance leaves the balancer first (`service.drain`, or the local
//! `draining` marker a local balancer honours), the deploy waits the fleet's
//! `rollout.drain` so requests in flight finish, and only a healthy instance
//! is put back.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use dhash_migrate::release::Bundle;
use gates_core::config::fleet::Instance;
use gates_core::config::EnvConfig;
use gates_core::project::Project;
use gates_core::{Emitter, Level};
use serde_json::{json, Value};

use crate::execute::has_restart_command;
use crate::state::ReleasesState;
use crate::{DeployOptions, DeployReport, TOOL};

/// An instance and the environment as it sees it.
pub struct Member<'a> {
    pub inst: &'a Instance,
    pub env: EnvConfig,
}

impl Member<'_> {
    pub fn name(&self) -> &str {
        &self.inst.name
    }
}

/// Events of the single-instance steps, on stdout with an `instance` field
/// (and one human line each on stderr, as the tool's own events get).
struct InstanceWriter {
    instance: String,
    buf: Vec<u8>,
}

impl Write for InstanceWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        while let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=i).collect();
            let text = String::from_utf8_lossy(&line);
            let out = match serde_json::from_str::<Value>(text.trim_end()) {
                Ok(Value::Object(mut m)) => {
                    m.insert("instance".into(), Value::String(self.instance.clone()));
                    echo(&self.instance, &m);
                    Value::Object(m).to_string()
                }
                _ => text.trim_end().to_string(),
            };
            let mut so = std::io::stdout().lock();
            writeln!(so, "{out}")?;
            so.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().flush()
    }
}

fn echo(instance: &str, m: &serde_json::Map<String, Value>) {
    let level = m.get("level").and_then(Value::as_str).unwrap_or("info");
    if level == "debug" {
        return;
    }
    let event = m.get("event").and_then(Value::as_str).unwrap_or("?");
    let msg = m.get("msg").and_then(Value::as_str).unwrap_or("");
    eprintln!("{TOOL}: [{level}] {instance}: {event}: {msg}");
}

/// The emitter the single-instance steps of `instance` report through.
pub fn emitter(env: &str, instance: &str) -> Emitter {
    Emitter::to_writer(
        TOOL,
        env,
        Box::new(InstanceWriter {
            instance: instance.to_string(),
            buf: Vec::new(),
        }),
    )
}

/// Out of the balancer, then the drain time for requests in flight.
fn drain(m: &Member, wait: Duration, em: &Emitter) -> anyhow::Result<()> {
    gates_core::service::drain(&m.env)
        .with_context(|| format!("draining instance {}", m.name()))?;
    em.emit(
        "fleet.instance.drained",
        Level::Info,
        format!(
            "instance {} is out of the balancer; waiting {}",
            m.name(),
            gates_core::duration::human(wait)
        ),
        json!({"instance": m.name(), "wait_seconds": wait.as_secs_f64()}),
    );
    std::thread::sleep(wait);
    Ok(())
}

fn undrain(m: &Member, em: &Emitter) {
    if let Err(e) = gates_core::service::undrain(&m.env) {
        em.emit(
            "fleet.instance.undrain_failed",
            Level::Warning,
            format!(
                "instance {} could not be put back into the balancer: {e:#}",
                m.name()
            ),
            json!({"instance": m.name(), "error": format!("{e:#}")}),
        );
    }
}

/// Deploys the bundle to one instance with the single-instance deploy (its
/// own lock, journal, migrations, switch, restart, health, switch-back on
/// failure). The instance is put back into the balancer afterwards either
/// way: on failure the deploy has restored and verified its previous release.
pub fn move_instance(
    project: &Project,
    m: &Member,
    opts: &DeployOptions,
    upstream: Option<PathBuf>,
    b: &Bundle,
    wait: Duration,
    em: &Emitter,
) -> anyhow::Result<DeployReport> {
    drain(m, wait, em)?;
    let iem = emitter(&m.env.name, m.name());
    let result = crate::deploy(project, &m.env, opts, upstream, b, &iem);
    undrain(m, em);
    result
}

/// Puts one moved instance back on `to`, marking `release` rolled back in
/// its releases.json. The schema is left as it is: a fleet plan only runs
/// migrations marked compatible with both releases.
pub fn roll_back_instance(
    m: &Member,
    release: &str,
    to: &str,
    reason: &str,
    wait: Duration,
    em: &Emitter,
) -> anyhow::Result<()> {
    let _lock = m.env.lock(TOOL)?;
    drain(m, wait, em)?;
    let iem = emitter(&m.env.name, m.name());
    let env = &m.env;
    gates_core::fsutil::switch_symlink(&Path::new("releases").join(to), &env.current_link())
        .with_context(|| format!("switching instance {} back to {to}", m.name()))?;
    let mut st = ReleasesState::load(env)?;
    st.mark_rolled_back(release, reason);
    st.save(env)?;
    if has_restart_command(env) {
        gates_core::service::restart(env, &iem)?;
    } else {
        gates_core::service::stop(env, &iem)?;
        gates_core::service::start(env, &iem)?;
    }
    gates_core::probe::wait_healthy(env, &env.health, &iem)?;
    undrain(m, em);
    em.emit(
        "fleet.instance.rolled_back",
        Level::Warning,
        format!(
            "instance {} is back on {to} ({release} rolled back)",
            m.name()
        ),
        json!({"instance": m.name(), "release": release, "to": to, "reason": reason}),
    );
    Ok(())
}
