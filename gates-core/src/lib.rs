//! Shared core of the dhash guarded-rollout toolkit: configuration, telemetry
//! samples, gate evaluation, the event contract, the environment lock, the
//! ledger, service control and crash-safe file operations.

pub mod baseline;
pub mod cli;
pub mod config;
pub mod crash;
pub mod duration;
pub mod event;
pub mod exit;
pub mod fsutil;
pub mod gates;
pub mod install;
pub mod ledger;
pub mod lock;
pub mod probe;
pub mod progress;
pub mod project;
pub mod promql;
pub mod redact;
pub mod release;
pub mod runlog;
pub mod sample;
#[cfg(unix)]
pub mod service;
pub mod stats;
pub mod watch;

pub use event::{Emitter, Event, Level};
pub use exit::{Exit, ToolError};
