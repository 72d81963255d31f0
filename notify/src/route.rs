//! Routing: which channels a notification goes to (the environment's routes
//! by level, `--channel`), and which of them are configured.
//!
//! Routes name channels as strings (gates-core's topology); they become
//! [`Channel`]s here, at notify's edge, and a name notify does not know is
//! reported, never silently dropped.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

use serde_json::json;

use gates_core::config::Route;
use gates_core::{Emitter, Level};

use crate::channels::{self, Channel, Config};
use crate::deliver::{Job, Outcome};
use crate::{redact, DeliveryReport};

/// The channels of a level's routes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Routing {
    /// In route order, each once.
    pub channels: Vec<Channel>,
    /// Route names that are no channel: (name, why).
    pub unknown: Vec<(String, String)>,
}

/// The routes a level reaches, narrowed to `only` when given.
pub fn route(routes: &[Route], level: Level, only: Option<&[Channel]>) -> Routing {
    let mut out = Routing::default();
    for r in routes {
        if level.severity() < r.min_level.severity() {
            continue;
        }
        let ch = match r.channel.parse::<Channel>() {
            Ok(ch) => ch,
            Err(why) => {
                out.unknown.push((r.channel.clone(), why));
                continue;
            }
        };
        if out.channels.contains(&ch) || only.is_some_and(|o| !o.contains(&ch)) {
            continue;
        }
        out.channels.push(ch);
    }
    out
}

/// A route naming no channel notify knows: said once per process and name
/// (stderr and a `notify.misconfigured` event); the other routes still work.
pub fn report_unknown(routing: &Routing, env: &str, em: &Emitter) {
    for (name, why) in &routing.unknown {
        if first_time(Seen::Unknown(name.clone())) {
            let msg =
                format!("environments.{env}.notifications.routes: {why}; that route is ignored");
            em.human(&msg);
            em.emit(
                "notify.misconfigured",
                Level::Warning,
                msg,
                json!({"channel": name, "problem": why}),
            );
        }
    }
}

/// No route takes the level: said as a debug event, and on stderr when the
/// caller asked for channels or the level is one people read.
pub fn report_no_route(
    env: &str,
    level: Level,
    title: &str,
    asked_for_channels: bool,
    em: &Emitter,
) {
    em.emit(
        "notify.skipped",
        Level::Debug,
        format!("no route takes level {level} for {title:?}; nothing to send"),
        json!({"reason": "no route", "title": title, "level": level}),
    );
    if asked_for_channels || level.severity() >= Level::Info.severity() {
        em.human(&format!(
            "no channel route takes level {level} in environment {env} (see notifications.routes); nothing sent"
        ));
    }
}

/// The routed channels, sorted by their configuration.
#[derive(Default)]
pub(crate) struct Plan {
    /// Configured: to deliver.
    pub jobs: Vec<Job>,
    /// Without their secret: skipped.
    pub missing: Vec<Channel>,
    /// Set but unusable: their outcome, for the fallback file.
    pub invalid: Vec<(Channel, Outcome)>,
}

/// Reads each routed channel's configuration; a channel without its secret is
/// skipped (said once per process).
pub(crate) fn plan(selected: &[Channel], em: &Emitter, report: &mut DeliveryReport) -> Plan {
    let mut plan = Plan::default();
    for ch in selected {
        match channels::configure(*ch) {
            Config::Ready(target) => plan.jobs.push(Job {
                channel: *ch,
                target,
            }),
            Config::Missing(why) => {
                plan.missing.push(*ch);
                report.skipped.push(ch.name().to_string());
                if first_time(Seen::Skipped(*ch)) {
                    em.human(&format!("{ch}: skipped, not configured ({why})"));
                    em.emit(
                        "notify.skipped",
                        Level::Debug,
                        format!("{ch} skipped: {why}"),
                        json!({"channel": ch.name(), "reason": redact(&why)}),
                    );
                }
            }
            Config::Invalid(why) => plan.invalid.push((
                *ch,
                Outcome::failed(0, None, redact(&format!("misconfigured: {why}"))),
            )),
        }
    }
    plan
}

/// What is said once per process.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Seen {
    Skipped(Channel),
    Unknown(String),
}

fn first_time(what: Seen) -> bool {
    static SEEN: OnceLock<Mutex<HashSet<Seen>>> = OnceLock::new();
    SEEN.get_or_init(|| Mutex::new(HashSet::new()))
        .lock()
        .map(|mut s| s.insert(what))
        .unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(pairs: &[(&str, Level)]) -> Vec<Route> {
        pairs
            .iter()
            .map(|(c, l)| Route {
                channel: c.to_string(),
                min_level: *l,
            })
            .collect()
    }

    #[test]
    fn routes_by_level_in_order_each_once() {
        let r = routes(&[
            ("teams", Level::Critical),
            ("slack", Level::Info),
            ("Slack", Level::Warning),
            ("email", Level::Error),
        ]);
        assert_eq!(
            route(&r, Level::Warning, None).channels,
            vec![Channel::Slack]
        );
        assert_eq!(
            route(&r, Level::Critical, None).channels,
            vec![Channel::Teams, Channel::Slack, Channel::Email]
        );
        let only = [Channel::Email];
        assert_eq!(
            route(&r, Level::Critical, Some(&only)).channels,
            vec![Channel::Email]
        );
    }

    /// A route naming an unknown channel used to be dropped without a word.
    #[test]
    fn an_unknown_channel_in_a_route_is_reported_not_dropped_silently() {
        let r = routes(&[("victorops", Level::Info), ("slack", Level::Info)]);
        let routing = route(&r, Level::Critical, None);
        assert_eq!(routing.channels, vec![Channel::Slack]);
        assert_eq!(routing.unknown.len(), 1);
        let (name, why) = &routing.unknown[0];
        assert_eq!(name, "victorops");
        assert!(why.contains("unknown channel \"victorops\""), "{why}");
        // Below its level, the route is not looked at.
        assert!(route(&r, Level::Debug, None).unknown.is_empty());
    }
}
