//! `rollback_dhash`'s arguments and run (`main.rs` only parses and calls).
//! The clap [`Args`] are public so completions and man pages can be generated
//! from them (`Args::command()`).
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use clap::Parser;
use gates_core::exit::{usage_error, Exit, EXIT_CODES_HELP};
use gates_core::project::Project;
use gates_core::{Emitter, ToolError};

use crate::{Prepared, RollbackOptions, RollbackOutcome, RollbackReport, TOOL};

#[derive(Parser, Debug)]
#[command(
    name = "rollback_dhash",
    version,
    about = "Restore an environment from a verified backup: verify the sidecar and every manifest hash, \
             stop the service, swap data and release in (the replaced state goes to <install_root>/quarantine/), \
             start it, require consecutive OK health checks and run the post-rollback smoke tests. \
             A rerun after an interruption (even kill -9) resumes and completes the restore. \
             The rolled-back release is recorded rolled-back in releases.json (never last_known_good \
             again), and a running monitor_dhash watch of it is ended as superseded. \
             A restore that serves but fails its post-rollback smoke tests exits 4.",
    after_help = EXIT_CODES_HELP
)]
pub struct Args {
    /// Environment (from environments.json), e.g. production or staging.
    #[arg(long)]
    pub env: Option<String>,
    /// The backup zip to restore (default: the newest backup of the environment that verifies).
    #[arg(long, value_name = "PATH")]
    pub backup: Option<PathBuf>,
    /// Do not ask for confirmation (required when stdin is not a terminal).
    #[arg(long)]
    pub force: bool,
    /// EMERGENCY ONLY: restore without checksum verification (sidecar and manifest hashes); recorded in the ledger.
    #[arg(long)]
    pub skip_validation: bool,
    /// Verify the backup and list what would be done; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Read events on stdin and roll back only on a `gate.violated` event of this environment whose
    /// action is "auto-rollback" (every event is forwarded to stdout); without one, do nothing (exit 0).
    /// Success then exits 3 (gate violated, rollback succeeded). Implies consent (no prompt).
    /// When the event names the release it was measured on (`release`) and that release is no
    /// longer current (another watcher or operator already rolled it back, or a newer deploy
    /// replaced it), nothing is done: a `rollback.skipped` event says why, exit 0.
    #[arg(long)]
    pub on_violation: bool,
    /// Why (recorded in events and the ledger).
    #[arg(long)]
    pub reason: Option<String>,
    /// Record that an automatic rollback was unnecessary (a false positive), changing nothing
    /// else: INCIDENT is its incident record (monitor_logs/incident_<env>_<stamp>.md) or the
    /// rollback's time as report_dhash lists it (or a unique prefix). An incident record names
    /// only its own environment's automatic rollback. Needs a non-empty --reason.
    /// report_dhash and monitor_dhash --sweep read the verdict.
    #[arg(long, value_name = "INCIDENT", requires = "reason",
          conflicts_with_all = ["backup", "force", "skip_validation", "dry_run", "on_violation"])]
    pub mark_unnecessary: Option<String>,
    /// More detail on stderr.
    #[arg(long, short)]
    pub verbose: bool,
}

/// Runs `rollback_dhash` with parsed arguments.
pub fn run(args: Args) -> anyhow::Result<Exit> {
    let Some(env_name) = args.env.as_deref() else {
        return Err(usage_error("--env is required (e.g. --env production)"));
    };
    if let (Some(wanted), Some(reason)) = (&args.mark_unnecessary, &args.reason) {
        let project = Project::discover()?;
        let env = project.env(env_name)?;
        let em = Emitter::stdout(TOOL, &env.name, args.verbose);
        crate::review::mark_unnecessary(env, wanted, reason, &em)?;
        return Ok(Exit::Ok);
    }
    let interactive = std::io::stdin().is_terminal();
    if !args.force && !args.dry_run && !args.on_violation && !interactive {
        return Err(usage_error(
            "refusing to roll back without --force: stdin is not a terminal, so nobody can confirm. \
             Add --force (as the runbook does), or --dry-run to see what would happen",
        ));
    }
    let project = Project::discover()?;
    let env = project.env(env_name)?;
    let em = Emitter::stdout(TOOL, &env.name, args.verbose);

    let mut reason = args.reason.clone();
    let mut triggered = false;
    // The release the violation was measured on (monitor_dhash puts it in
    // every gate event): the rollback is done only while it is still current.
    let mut violated_release: Option<String> = None;
    if args.on_violation {
        match read_trigger(env, &em) {
            Trigger::Violation { why, release } => {
                em.human(&format!("acting on gate.violated ({why})"));
                reason = Some(reason.map_or(why.clone(), |r| format!("{r}; {why}")));
                triggered = true;
                violated_release = release;
            }
            Trigger::PendingRollback => em.human(
                "no violation on stdin, but an interrupted rollback is pending: resuming it",
            ),
            Trigger::Nothing => {
                em.human(&format!(
                    "no gate.violated event with action auto-rollback for {}: nothing to do",
                    env.name
                ));
                return Ok(Exit::Ok);
            }
        }
    }

    let lock = env.lock(TOOL)?;
    let opts = RollbackOptions {
        backup: args.backup.clone(),
        skip_validation: args.skip_validation,
        dry_run: args.dry_run,
        reason,
    };
    let ask = !(args.force || args.on_violation || args.dry_run);
    let mut confirm = |p: &Prepared| -> anyhow::Result<bool> {
        if !ask {
            return Ok(true);
        }
        prompt(p)
    };
    let report = if let (true, false, Some(release)) =
        (triggered, args.dry_run, violated_release.as_deref())
    {
        match crate::rollback_release(&project, env, &lock, &opts, release, &em)? {
            RollbackOutcome::Done(r) => r,
            RollbackOutcome::Skipped { .. } => return Ok(Exit::Ok),
        }
    } else {
        crate::rollback_with(&project, env, &lock, &opts, &em, &mut confirm)?
    };
    if !args.dry_run {
        // The watch of the release just replaced must not act on it any more.
        // The environment lock goes first: that watcher may be waiting for it.
        drop(lock);
        end_replaced_watch(env, report.release.as_deref(), &em);
    }
    if report.smoke_passed == Some(false) {
        return Err(smoke_failed(&env.name, &report));
    }
    if triggered && !args.dry_run {
        return Ok(Exit::GateRolledBack);
    }
    Ok(Exit::Ok)
}

/// What `--on-violation` found on stdin.
enum Trigger {
    /// The first `gate.violated` event of this environment whose action is
    /// auto-rollback.
    Violation {
        why: String,
        release: Option<String>,
    },
    /// No such event, but an interrupted rollback is pending: it is finished.
    PendingRollback,
    /// No such event and nothing pending: nothing to do.
    Nothing,
}

/// Forwards every event on stdin and picks the trigger out of them.
fn read_trigger(env: &gates_core::config::EnvConfig, em: &Emitter) -> Trigger {
    let mut trigger = None;
    gates_core::event::pump_stdin(em, |ev| {
        if trigger.is_none()
            && ev.event == "gate.violated"
            && ev.env == env.name
            && ev.str_field("action") == Some("auto-rollback")
        {
            let gate = ev.str_field("gate").unwrap_or("a gate");
            trigger = Some(Trigger::Violation {
                why: format!("{gate} violated: {}", ev.msg),
                release: ev.str_field("release").map(str::to_string),
            });
        }
    });
    match trigger {
        Some(t) => t,
        None if crate::pending(env).ok().flatten().is_some() => Trigger::PendingRollback,
        None => Trigger::Nothing,
    }
}

/// The restore stands and serves, but its smoke tests failed: exit 4, the
/// page-someone case, with the restore's state said plainly.
fn smoke_failed(env: &str, report: &RollbackReport) -> anyhow::Error {
    ToolError::new(
        Exit::RollbackFailed,
        anyhow::anyhow!(
            "CRITICAL: {env} was restored from {} (release {}) and answers health, \
             but the post-rollback smoke tests FAILED (see the smoke.failed event and the smoke log): \
             the restored release needs a look now",
            report.backup.display(),
            report.release.as_deref().unwrap_or("unchanged")
        ),
    )
    .into()
}

fn end_replaced_watch(env: &gates_core::config::EnvConfig, restored: Option<&str>, em: &Emitter) {
    let reason = format!(
        "rollback_dhash restored {}",
        restored.unwrap_or("a backup without a release")
    );
    match gates_core::watch::supersede(env, restored, &reason) {
        Ok(Some(w)) => em.human(&format!(
            "the running watch of {} (pid {}) was ended: superseded by this rollback",
            w.release.as_deref().unwrap_or("the replaced release"),
            w.pid
        )),
        Ok(None) => {}
        Err(e) => em.human(&format!(
            "warning: could not end the running watch of the replaced release: {e:#}"
        )),
    }
}

fn prompt(p: &Prepared) -> anyhow::Result<bool> {
    let mut err = std::io::stderr();
    writeln!(
        err,
        "About to roll {} back to {}\n  backup release {} (schema {}), created {}\n  current release {}: it and the current data move to the quarantine\n  the service is stopped and restarted",
        p.env,
        p.backup.display(),
        p.manifest.release.as_deref().unwrap_or("none"),
        p.manifest.schema_version.map(|v| v.to_string()).unwrap_or_else(|| "none".into()),
        p.manifest.created_at,
        p.previous_release.as_deref().unwrap_or("none"),
    )?;
    write!(err, "Proceed? [y/N] ")?;
    err.flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let answer = line.trim().to_ascii_lowercase();
    Ok(answer == "y" || answer == "yes")
}
