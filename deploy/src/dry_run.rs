//! `--dry-run`: prints the plan (checks, then steps) and the refusal the real
//! run would meet; changes nothing (no file or folder is created, the lock is
//! only tried when its file exists).

use std::path::PathBuf;

use dhash_migrate::release::Bundle;
use gates_core::config::EnvConfig;
use gates_core::project::Project;
use gates_core::{Emitter, Exit, Level};
use serde_json::json;

use crate::plan::{self, Check, CheckName, Install, Mode, Plan, Refusal};
use crate::watch::WATCH_REGISTER_TIMEOUT;
use crate::DeployOptions;

pub fn dry_run(
    project: &Project,
    env: &EnvConfig,
    opts: &DeployOptions,
    upstream_backup: Option<PathBuf>,
    em: &Emitter,
) -> anyhow::Result<Exit> {
    let resolved = crate::resolve_bundle(project, opts.tag.as_deref(), true, em)?;
    let b = &resolved.bundle;
    em.human(&format!(
        "dry run: deploy {} (tag {}) to {}; nothing will be changed",
        b.manifest.id, b.manifest.tag, env.name
    ));
    let facts = plan::check_bundle(b, upstream_backup.as_deref());
    let config = match crate::check_config(project, env, em) {
        Ok(w) if w.is_empty() => Ok("no unresolved placeholders".to_string()),
        Ok(w) => Ok(format!(
            "{} placeholder(s) unresolved (refused in production)",
            w.len()
        )),
        Err(error) => Err(Refusal {
            check: CheckName::Config,
            error,
        }),
    };
    let mut plan = plan::preflight(env, opts, b, facts.bytes, upstream_backup, Mode::DryRun);
    let mut checks = facts.checks;
    let mut refusal = facts.refusal;
    match config {
        Ok(detail) => checks.push(Check {
            name: CheckName::Config,
            ok: true,
            detail,
        }),
        Err(r) => {
            checks.push(Check {
                name: CheckName::Config,
                ok: false,
                detail: r.msg(),
            });
            refusal.get_or_insert(r);
        }
    }
    checks.append(&mut plan.checks);
    let refusal = refusal.or_else(|| plan.take_refusal(None));
    report(env, opts, b, &plan, &checks, refusal.as_ref(), em);
    match refusal {
        None => Ok(Exit::Ok),
        Some(r) => Err(r.error.context("dry run: the deploy would not go ahead")),
    }
}

/// Prints the checks and steps, and emits `deploy.planned` (its `refusal`
/// carries the real run's error message and exit code).
fn report(
    env: &EnvConfig,
    opts: &DeployOptions,
    b: &Bundle,
    plan: &Plan,
    checks: &[Check],
    refusal: Option<&Refusal>,
    em: &Emitter,
) {
    for m in &plan.pending {
        em.debug(&format!("pending {}:\n{}", m.label(), m.up_sql.trim_end()));
    }
    let steps = steps(env, opts, b, plan);
    for c in checks {
        em.human(&format!(
            "check {:<14} {}  {}",
            c.name.as_str(),
            if c.ok { "ok  " } else { "FAIL" },
            c.detail
        ));
    }
    for (i, s) in steps.iter().enumerate() {
        em.human(&format!("step {}: {s}", i + 1));
    }
    let pending: Vec<_> = plan
        .pending
        .iter()
        .map(|m| json!({"version": m.version, "name": m.name, "sql": m.up_sql}))
        .collect();
    let id = &plan.id;
    em.emit(
        "deploy.planned",
        if refusal.is_none() { Level::Info } else { Level::Error },
        format!(
            "dry run: deploy {id} to {}: {} steps; {}",
            env.name,
            steps.len(),
            if refusal.is_none() {
                "all checks passed"
            } else {
                "a check failed (see checks)"
            }
        ),
        json!({
            "dry_run": true, "release": id, "tag": b.manifest.tag, "bundle": b.dir,
            "from": plan.current, "switch_back_to": plan.from, "backup": plan.backup,
            "schema_version": b.manifest.schema_version,
            "pending_migrations": pending, "checks": checks, "steps": steps,
            "refusal": refusal.map(|r| json!({"check": r.check, "msg": r.msg(), "exit": r.exit().code()})),
        }),
    );
}

/// The real run's steps, in order, for humans.
fn steps(env: &EnvConfig, opts: &DeployOptions, b: &Bundle, plan: &Plan) -> Vec<String> {
    let id = &plan.id;
    let dest = env.releases_dir().join(id);
    let mut steps = vec![
        format!("verify {} against its release.json", b.dir.display()),
        format!("take the {} lock ({})", env.name, env.lock_path().display()),
    ];
    if let Some(r) = &plan.recovery {
        steps.push(format!(
            "finish the interrupted switch-back from {} to {}",
            r.journal.release,
            r.to.as_deref().unwrap_or("nothing (no previous release)")
        ));
    }
    if let Some(p) = &plan.backup {
        steps.push(format!(
            "use the backup announced on stdin as the rollback point: {}",
            p.display()
        ));
    } else if plan.take_backup {
        steps.push(format!(
            "back up {} into {} (the rollback point)",
            env.name,
            env.backup_dir.display()
        ));
    }
    steps.push(match &plan.install {
        Install::Verified => format!(
            "{} is already installed and verified: skip the copy",
            dest.display()
        ),
        Install::Replace(why) => format!(
            "{} is installed but differs ({why}): move it to {} and install a fresh copy",
            dest.display(),
            env.quarantine_dir().display()
        ),
        Install::Copy => format!(
            "copy {} into {} (via releases/.{id}.partial, verified, then renamed)",
            b.dir.display(),
            dest.display()
        ),
    });
    steps.push(migrate_step(env, plan));
    steps.push(format!(
        "switch {} atomically: {} -> releases/{id}",
        env.current_link().display(),
        plan.current
            .as_deref()
            .map(|c| format!("releases/{c}"))
            .unwrap_or_else(|| "(nothing deployed)".into())
    ));
    steps.push(restart_step(env));
    steps.extend(after_restart_steps(env, opts, plan));
    steps
}

fn migrate_step(env: &EnvConfig, plan: &Plan) -> String {
    let migrations_failed = plan
        .checks
        .iter()
        .any(|c| c.name == CheckName::Migrations && !c.ok)
        && plan.pending.is_empty();
    if migrations_failed {
        return "apply migrations (cannot tell which: see the migrations check)".to_string();
    }
    if plan.pending.is_empty() {
        return "no pending migrations".to_string();
    }
    let labels: Vec<String> = plan.pending.iter().map(|m| m.label()).collect();
    format!(
        "apply {} migration(s) to {}: {}",
        plan.pending.len(),
        env.database.display(),
        labels.join(", ")
    )
}

fn restart_step(env: &EnvConfig) -> String {
    if crate::execute::has_restart_command(env) {
        "restart the service (its restart command)".to_string()
    } else {
        "restart the service (stop, then start)".to_string()
    }
}

fn after_restart_steps(env: &EnvConfig, opts: &DeployOptions, plan: &Plan) -> Vec<String> {
    let id = &plan.id;
    let mut steps = Vec::new();
    if opts.skip_health_check {
        steps.push("skip the health check (--skip-health-check)".to_string());
    } else {
        steps.push(format!(
            "wait for {} consecutive OK answers of {} ({} apart, within {})",
            env.health.checks_required,
            env.health_url,
            gates_core::duration::human(env.health.interval),
            gates_core::duration::human(env.health.timeout)
        ));
    }
    steps.push(match &plan.from {
        Some(f) => format!("if not healthy: mark {id} failed, switch back to {f}, revert the schema it applied, restart, verify health, exit 1"),
        None => format!("if not healthy: mark {id} failed, remove the current link (no previous release), exit 1"),
    });
    steps.push(format!(
        "keep the newest {} releases (never the current or last known-good one)",
        env.retention.releases
    ));
    steps.push(if opts.no_monitor {
        "--no-monitor: start no T+60 watch".to_string()
    } else {
        format!(
            "start the T+60 watch in the background (monitor_dhash --env {} --release {id}{} --detach), wait up to {} for {}; exit 5 if it does not register (live but unwatched)",
            env.name,
            if plan.backup.is_some() || plan.take_backup { " --backup <the backup>" } else { "" },
            gates_core::duration::human(WATCH_REGISTER_TIMEOUT),
            env.install_root.join("watch.json").display()
        )
    });
    steps
}
