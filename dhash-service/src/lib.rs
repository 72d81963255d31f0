//! The reference dhash service: the embedded default target that the
//! guarded-rollout tools deploy, watch and roll back.
//!
//! - [`server`]: the HTTP service (`dhash-service serve`).
//! - [`dhash`]: the difference hash and its confidence (convention documented there).
//! - [`config`]: `release.json`, `config.json` and the fault switches.
//! - [`db`]: SQLite access (the schema belongs to the migrations in `migrations/`).
//! - [`metrics`]: counters, the hash-time histogram, JSON and Prometheus renderings.
//! - [`bundle`]: release bundles (`dhash-service bundle`).
//! - [`load`]: the load driver (`dhash-service load`).
//! - [`images`]: deterministic synthetic images (golden set, load payloads).

pub mod bundle;
pub mod cli;
pub mod config;
pub mod db;
pub mod dhash;
pub mod images;
pub mod load;
pub mod metrics;
pub mod procstat;
pub mod server;
