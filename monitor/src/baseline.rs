//! The baseline of baseline-relative gates (issue 16): which recordings make
//! it (the ledger's passed watches, a pinned release's, or explicit files)
//! and their figures, measured by `gates_core::baseline::BaselineBuilder`.
//! Nothing new is recorded for it: the monitor's own telemetry recordings
//! (`monitor_logs/telemetry_*.csv`) are the baseline.

use std::path::PathBuf;
use std::sync::Arc;

use gates_core::baseline::{Baseline, BaselineBuilder, BaselineSource};
use gates_core::config::{EnvConfig, GateSpec};
use gates_core::{Emitter, Level};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::ledger::{WindowState, MONITOR};
use crate::{telemetry, WatchResult};

/// Command-line overrides of the configured source.
#[derive(Debug, Clone, Default)]
pub struct Override {
    pub recordings: Vec<PathBuf>,
    pub release: Option<String>,
}

impl Override {
    /// The source the command line picks, else the configured one.
    pub fn source(&self, configured: &BaselineSource) -> BaselineSource {
        let n = match configured {
            BaselineSource::LastPassed { n } | BaselineSource::Release { n, .. } => *n,
            BaselineSource::Recordings { .. } => gates_core::baseline::DEFAULT_LAST_N,
        };
        if !self.recordings.is_empty() {
            BaselineSource::Recordings {
                files: self.recordings.clone(),
            }
        } else if let Some(r) = &self.release {
            BaselineSource::Release {
                release: r.clone(),
                n,
            }
        } else {
            configured.clone()
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct PassedWatch {
    state: Option<String>,
    result: Option<String>,
    release: Option<String>,
    recording: Option<PathBuf>,
}

/// The recordings of the newest `n` passed watches (of `pinned`, or of any
/// release but `watched`), newest first; only those still on disk.
pub fn passed_recordings(
    env: &EnvConfig,
    n: usize,
    pinned: Option<&str>,
    watched: Option<&str>,
) -> Vec<PathBuf> {
    let records = env.ledger().records(MONITOR).unwrap_or_default();
    records
        .into_iter()
        .rev()
        .filter_map(|v| serde_json::from_value::<PassedWatch>(v).ok())
        .filter(|w| w.state.as_deref() == Some(WindowState::Completed.as_str()))
        .filter(|w| w.result.as_deref() == Some(WatchResult::Passed.as_str()))
        .filter(|w| match (pinned, watched) {
            (Some(p), _) => w.release.as_deref() == Some(p),
            (None, Some(me)) => w.release.as_deref() != Some(me),
            (None, None) => true,
        })
        .filter_map(|w| w.recording)
        .filter(|p| p.exists())
        .take(n)
        .collect()
}

/// The baselines of `gates` (None for each gate without a baseline rule),
/// or an empty list when no gate has one. `env` gives the ledger (None:
/// replay without an environment's ledger). Emits `baseline.loaded`.
pub fn load(
    gates: &[GateSpec],
    source: &BaselineSource,
    env: Option<&EnvConfig>,
    env_name: &str,
    watched: Option<&str>,
    em: &Emitter,
) -> Vec<Option<Arc<Baseline>>> {
    if gates.iter().all(|g| g.baseline.is_none()) {
        return Vec::new();
    }
    let files = match (source, env) {
        (BaselineSource::Recordings { files }, _) => files.clone(),
        (BaselineSource::LastPassed { n }, Some(env)) => passed_recordings(env, *n, None, watched),
        (BaselineSource::Release { release, n }, Some(env)) => {
            passed_recordings(env, *n, Some(release), None)
        }
        (_, None) => Vec::new(),
    };
    let what = source.describe(env_name);
    let mut builder = BaselineBuilder::new(gates);
    let mut unread = Vec::new();
    for f in &files {
        match read_all(f) {
            Ok(samples) => builder.add_recording(samples),
            Err(e) => unread.push(format!("{}: {e:#}", f.display())),
        }
    }
    let baselines = builder.finish(gates, &what);
    announce(gates, &baselines, &files, &unread, &what, em);
    baselines
}

fn read_all(path: &std::path::Path) -> anyhow::Result<Vec<gates_core::sample::Sample>> {
    telemetry::read_samples(path)?.collect()
}

/// `baseline.loaded`: each relative gate's baseline figure or state.
fn announce(
    gates: &[GateSpec],
    baselines: &[Option<Arc<Baseline>>],
    files: &[PathBuf],
    unread: &[String],
    what: &str,
    em: &Emitter,
) {
    let per_gate: Vec<Value> = gates
        .iter()
        .zip(baselines)
        .filter_map(|(g, b)| Some((g, b.as_ref()?)))
        .map(|(g, b)| {
            let mut v = baseline_json(b);
            if let Value::Object(m) = &mut v {
                m.insert("gate".into(), json!(g.name));
                m.insert("unit".into(), json!(g.unit));
                let rule = g.baseline.as_ref();
                m.insert("rule".into(), json!(rule));
                m.insert(
                    "limit".into(),
                    // A rank test sets no limit over one figure.
                    json!(b
                        .ready_value()
                        .zip(rule.filter(|r| r.test.is_none()))
                        .map(|(v, r)| r.limit(v))),
                );
            }
            v
        })
        .collect();
    let ready = per_gate.iter().all(|g| g["state"] == "ready");
    let summary: Vec<String> = gates
        .iter()
        .zip(baselines)
        .filter_map(|(g, b)| Some(format!("{}: {}", g.name, b.as_ref()?.describe(g.unit))))
        .collect();
    let level = if ready { Level::Info } else { Level::Warning };
    em.emit(
        "baseline.loaded",
        level,
        format!("baseline from {what}: {}", summary.join("; ")),
        json!({
            "source": what,
            "recordings": files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
            "unreadable": unread,
            "gates": per_gate,
        }),
    );
}

/// A baseline's JSON fields (events, the ledger, notifications).
pub fn baseline_json(b: &Baseline) -> Value {
    json!({
        "state": b.state.as_str(),
        "value": b.value,
        "figures": b.figures,
        "samples": b.samples,
        "recordings": b.recordings,
        "source": b.source,
        "why": b.why,
        // Requests in the summed hash-time histogram a rank test compares with.
        "observations": b.histogram.as_ref().map(|_| b.observations()),
    })
}
