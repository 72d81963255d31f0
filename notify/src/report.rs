//! What became of a notification, said and kept: `notify.sent`,
//! `notify.fallback`, `notify.recorded` (dry run) and `notify.failed` events,
//! the caller's [`DeliveryReport`], the fallback lines and the audit copy
//! ([`crate::record`] writes the files).

use serde_json::{json, Value};

use gates_core::config::EnvConfig;
use gates_core::{Emitter, Level};

use crate::channels::{self, Channel, Rendered};
use crate::deliver::Outcome;
use crate::record::{self, Destination, FallbackEntry, FullText};
use crate::route::Plan;
use crate::{redact, DeliveryReport};

/// What the recording steps share for one notification.
pub(crate) struct Ctx<'a> {
    pub env: &'a EnvConfig,
    pub r: &'a Rendered,
    pub full: &'a FullText<'a>,
    pub key: Option<&'a str>,
    pub em: &'a Emitter,
}

/// The real run's outcomes: each channel sent or fallen back, the skipped
/// ones noted, and the audit copy when something was not delivered or cut.
/// With no channel configured at all, one file-based notification.
pub(crate) fn outcomes(
    ctx: &Ctx<'_>,
    outcomes: &[(Channel, Outcome)],
    missing: &[Channel],
    report: &mut DeliveryReport,
) {
    if outcomes.is_empty() {
        no_channel_configured(ctx, missing, report);
        return;
    }
    let mut copies = Vec::new();
    for (ch, o) in outcomes {
        copies.push(outcome(ctx, *ch, o, report));
    }
    for ch in missing {
        copies.push(json!({"channel": ch.name(), "status": "skipped", "reason": "not configured"}));
    }
    // The audit copy: whenever something was not delivered, and whenever the
    // channels got a cut text (so the full text is kept somewhere, once).
    if !report.fallback.is_empty() || ctx.full.truncated {
        write_copy(ctx, false, copies, report);
    }
}

/// One channel's outcome said and recorded; its line in the audit copy.
fn outcome(ctx: &Ctx<'_>, ch: Channel, o: &Outcome, report: &mut DeliveryReport) -> Value {
    let r = ctx.r;
    if o.delivered {
        report.sent.push(ch.name().to_string());
        ctx.em.emit(
            "notify.sent",
            Level::Info,
            format!(
                "{ch}: delivered {:?} after {} attempt(s)",
                r.title, o.attempts
            ),
            json!({"channel": ch.name(), "attempts": o.attempts, "status": o.status,
                   "title": r.title, "level": r.level}),
        );
        return json!({"channel": ch.name(), "status": "sent", "attempts": o.attempts,
                      "http_status": o.status});
    }
    let entry = FallbackEntry {
        channel: Destination::Channel(ch),
        reason: o.reason.clone(),
        attempts: o.attempts,
        status: o.status,
        dry_run: false,
        payload: None,
    };
    fall_back(ctx, &entry, report);
    json!({"channel": ch.name(), "status": "fallback", "reason": o.reason,
           "attempts": o.attempts, "http_status": o.status,
           "payload": channels::preview(ch, r, ctx.key)})
}

/// Every routed channel lacks its secret: a file-based notification.
fn no_channel_configured(ctx: &Ctx<'_>, missing: &[Channel], report: &mut DeliveryReport) {
    let reason = format!(
        "no channel configured for level {} (set {})",
        ctx.r.level,
        missing
            .iter()
            .map(|c| c.secret_vars())
            .collect::<Vec<_>>()
            .join("; ")
    );
    let entry = FallbackEntry {
        channel: Destination::NoChannel,
        reason,
        attempts: 0,
        status: None,
        dry_run: false,
        payload: None,
    };
    fall_back(ctx, &entry, report);
    let copy = vec![
        json!({"channel": entry.channel.name(), "status": "fallback", "reason": entry.reason}),
    ];
    write_copy(ctx, false, copy, report);
}

/// A dry run: what each routed channel would be sent, recorded in the
/// fallback file and the audit copy, with why it would not go out.
pub(crate) fn dry_run(
    ctx: &Ctx<'_>,
    selected: &[Channel],
    plan: &Plan,
    report: &mut DeliveryReport,
) {
    let mut copies = Vec::new();
    for ch in selected {
        let configured = !plan.missing.contains(ch);
        let payload = channels::preview(*ch, ctx.r, ctx.key);
        let broken = plan.invalid.iter().find(|(c, _)| c == ch);
        let reason = match broken {
            Some((_, o)) => format!("dry-run: not sent (and it would fail: {})", o.reason),
            None if configured => "dry-run: not sent".to_string(),
            None => format!(
                "dry-run: not sent (and not configured: set {})",
                ch.secret_vars()
            ),
        };
        let entry = FallbackEntry {
            channel: Destination::Channel(*ch),
            reason,
            attempts: 0,
            status: None,
            dry_run: true,
            payload: Some(payload.clone()),
        };
        recorded(ctx, &entry, configured, report);
        copies.push(
            json!({"channel": ch.name(), "status": "dry_run", "configured": configured,
                   "payload": payload}),
        );
    }
    write_copy(ctx, true, copies, report);
}

/// One dry-run line written and said.
fn recorded(ctx: &Ctx<'_>, entry: &FallbackEntry, configured: bool, report: &mut DeliveryReport) {
    let (env, r) = (ctx.env, ctx.r);
    if !append(ctx, entry, report) {
        return;
    }
    ctx.em.emit(
        "notify.recorded",
        Level::Info,
        format!(
            "dry run: {} would receive {:?}; recorded in {}",
            entry.channel,
            r.title,
            record::show(&env.notify.fallback_file)
        ),
        json!({"channel": entry.channel.name(), "dry_run": true, "configured": configured,
               "file": env.notify.fallback_file, "title": r.title, "level": r.level}),
    );
    report
        .fallback
        .push((entry.channel.name().to_string(), "dry-run".to_string()));
}

/// One undelivered channel written to the fallback file and said.
fn fall_back(ctx: &Ctx<'_>, entry: &FallbackEntry, report: &mut DeliveryReport) {
    let (env, r) = (ctx.env, ctx.r);
    if !append(ctx, entry, report) {
        return;
    }
    ctx.em.emit(
        "notify.fallback",
        Level::Warning,
        format!(
            "{}: not delivered ({}); recorded in {}",
            entry.channel,
            entry.reason,
            record::show(&env.notify.fallback_file)
        ),
        json!({"channel": entry.channel.name(), "reason": entry.reason, "attempts": entry.attempts,
               "status": entry.status, "file": env.notify.fallback_file,
               "title": r.title, "level": r.level}),
    );
    report
        .fallback
        .push((entry.channel.name().to_string(), entry.reason.clone()));
}

/// Appends the entry's line; false (said as `notify.failed`) when it cannot.
fn append(ctx: &Ctx<'_>, entry: &FallbackEntry, report: &mut DeliveryReport) -> bool {
    match record::append_fallback(ctx.env, ctx.r, ctx.full, ctx.key, entry) {
        Ok(()) => true,
        Err(e) => {
            fallback_failed(ctx.env, &e, ctx.em, report);
            false
        }
    }
}

/// The one way to lose a notification: said as `notify.failed`.
fn fallback_failed(env: &EnvConfig, e: &anyhow::Error, em: &Emitter, report: &mut DeliveryReport) {
    let msg = redact(&format!(
        "cannot write the fallback file {}: {e:#}",
        env.notify.fallback_file.display()
    ));
    em.emit(
        "notify.failed",
        Level::Error,
        msg.clone(),
        json!({"file": env.notify.fallback_file}),
    );
    report.fallback_error.get_or_insert(msg);
}

fn write_copy(ctx: &Ctx<'_>, dry_run: bool, deliveries: Vec<Value>, report: &mut DeliveryReport) {
    match record::write_out_copy(ctx.r, ctx.full, ctx.key, dry_run, deliveries) {
        Ok(p) => {
            ctx.em
                .debug(&format!("audit copy written to {}", record::show(&p)));
            report.out_file = Some(p);
        }
        Err(e) => ctx.em.human(&format!(
            "cannot write the audit copy in {}: {e:#}{}",
            record::show(&ctx.env.notify.out_dir),
            if ctx.full.truncated {
                "; the full text of a long message is lost (the fallback file has its start)"
            } else {
                ""
            }
        )),
    }
}
