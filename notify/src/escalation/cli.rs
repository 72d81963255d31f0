//! `notify ack` and `notify escalate`: the acknowledgement and the deadline
//! check, for people and for cron or the systemd timer
//! (`deploy/systemd/dhash-escalate@.service`).

use clap::{Args, Subcommand};
use serde_json::json;

use gates_core::exit::{Exit, ToolError};
use gates_core::project::Project;
use gates_core::{Emitter, Level};

use super::{ack, flush_outbox, state, try_check_deadlines, AckError, Acked};

#[derive(Debug, Clone, Subcommand)]
pub enum EscalationCommand {
    /// Record that a person has seen an incident (or the environment's
    /// alerts): its escalation stops; PagerDuty and Opsgenie are told.
    Ack(AckArgs),
    /// Act on every passed acknowledgement deadline of the environment
    /// (for cron or the shipped systemd timer), then exit.
    Escalate(EscalateArgs),
}

#[derive(Debug, Clone, Args)]
pub struct AckArgs {
    /// Environment (default production, said on stderr).
    #[arg(long, value_name = "ENV")]
    pub env: Option<String>,
    /// The incident (its record's name, e.g. incident_production_20261123T094107123Z);
    /// default: the newest unacknowledged one, else the environment's alerts.
    #[arg(long, value_name = "ID")]
    pub incident: Option<String>,
    /// Who acknowledges.
    #[arg(long, value_name = "NAME")]
    pub by: String,
    /// A note kept with the acknowledgement.
    #[arg(long, value_name = "TEXT")]
    pub note: Option<String>,
    /// Also resolve it (PagerDuty resolve, Opsgenie close).
    #[arg(long)]
    pub resolve: bool,
    #[arg(long, short)]
    pub verbose: bool,
}

#[derive(Debug, Clone, Args)]
pub struct EscalateArgs {
    /// Environment (default production, said on stderr).
    #[arg(long, value_name = "ENV")]
    pub env: Option<String>,
    #[arg(long, short)]
    pub verbose: bool,
}

fn env_name(env: &Option<String>) -> String {
    env.clone().unwrap_or_else(|| {
        eprintln!("notify: no --env given: using {}", crate::cli::DEFAULT_ENV);
        crate::cli::DEFAULT_ENV.to_string()
    })
}

pub fn run(cmd: EscalationCommand) -> anyhow::Result<Exit> {
    crate::clock::check().map_err(|e| ToolError::new(Exit::Usage, anyhow::anyhow!(e)))?;
    let project = Project::discover()?;
    crate::dotenv::load(&project.root)
        .map_err(|e| ToolError::new(Exit::Usage, anyhow::anyhow!("{e}")))?;
    match cmd {
        EscalationCommand::Ack(a) => {
            if a.by.trim().is_empty() {
                // An ack by nobody would stop the clock with no one to ask.
                return Err(ToolError::new(
                    Exit::Usage,
                    anyhow::anyhow!("--by needs the name of the person acknowledging"),
                )
                .into());
            }
            let env = project.env(&env_name(&a.env))?;
            let em = Emitter::stdout("notify", &env.name, a.verbose);
            gates_core::event::pump_stdin(&em, |_| {});
            match ack(
                env,
                a.incident.as_deref(),
                &a.by,
                a.note.as_deref(),
                a.resolve,
                &em,
            ) {
                Ok(Acked::Incident(i)) => em.human(&format!("{} acknowledged by {}", i.id, a.by)),
                Ok(Acked::Resolved(i)) => em.human(&format!(
                    "{} resolved by {}; acknowledged by {} at {}",
                    i.id,
                    a.by,
                    i.acked_by.as_deref().unwrap_or("?"),
                    i.acked_at.as_deref().unwrap_or("?")
                )),
                Ok(Acked::Already(i)) => em.human(&format!(
                    "{} was already acknowledged by {} at {}{}; nothing changed",
                    i.id,
                    i.acked_by.as_deref().unwrap_or("?"),
                    i.acked_at.as_deref().unwrap_or("?"),
                    if i.resolved { " (resolved)" } else { "" }
                )),
                Ok(Acked::Alerts { .. }) => {
                    em.human("no open incident: the alerts are acknowledged")
                }
                Err(e @ AckError::Unknown(..)) => {
                    return Err(ToolError::new(Exit::Failed, anyhow::Error::new(e)).into())
                }
                Err(AckError::State(e)) => return Err(e),
            }
            Ok(Exit::Ok)
        }
        EscalationCommand::Escalate(a) => {
            let env = project.env(&env_name(&a.env))?;
            let em = Emitter::stdout("notify", &env.name, a.verbose);
            gates_core::event::pump_stdin(&em, |_| {});
            // Notices an earlier run saved and never sent go first (the outbox).
            let recovered = flush_outbox(env, &em).map_err(|e| {
                ToolError::new(
                    Exit::Failed,
                    e.context("unsent escalation notices not sent"),
                )
            })?;
            let raised = try_check_deadlines(env, &em)
                .map_err(|e| ToolError::new(Exit::Failed, e.context("deadlines not checked")))?;
            let (open, held) = state::read(env)
                .map(|s| {
                    (
                        s.incidents.values().filter(|i| i.open()).count(),
                        s.held_elsewhere(),
                    )
                })
                .unwrap_or((0, 0));
            em.emit(
                "escalation.checked",
                Level::Info,
                format!(
                    "{} escalation(s) raised{}{}; {open} incident(s) awaiting acknowledgement",
                    raised.len(),
                    if recovered > 0 {
                        format!("; {recovered} unsent notice(s) of an earlier run sent")
                    } else {
                        String::new()
                    },
                    if held > 0 {
                        format!("; {held} unsent notice(s) held by another running notify")
                    } else {
                        String::new()
                    }
                ),
                json!({"raised": raised.len(), "recovered": recovered, "open_incidents": open, "held": held,
                       "state": state::path(env).display().to_string()}),
            );
            Ok(Exit::Ok)
        }
    }
}
