//! backup_dhash: a verified zip + SHA-256 sidecar of an environment's state.
use std::path::PathBuf;

use crate::{BackupOptions, TOOL};
use clap::Parser;
use gates_core::exit::{Exit, EXIT_CODES_HELP};
use gates_core::project::Project;
use gates_core::{Emitter, Level, ToolError};
use serde_json::json;

#[derive(Parser, Debug)]
#[command(
    name = "backup_dhash",
    version,
    about = "Back up an environment's state (data with a consistent SQLite snapshot, current release, config) into backups/dhash_<env>_<UTC>.zip with a sha256sum sidecar, then verify it",
    after_help = EXIT_CODES_HELP
)]
pub struct Args {
    /// Environment (from environments.json), e.g. production or staging.
    #[arg(long)]
    env: Option<String>,
    /// Report what would be backed up (file and byte counts); write nothing.
    #[arg(long, conflicts_with_all = ["verify", "list"])]
    dry_run: bool,
    /// Verify one backup (sidecar, zip CRCs, every manifest hash, safe names, the database's SQLite integrity check and schema version) and exit: 0 verified, 1 not (including a path that is not a regular file: a FIFO, directory or socket is refused, never read).
    #[arg(long, value_name = "PATH", conflicts_with_all = ["list", "keep"])]
    verify: Option<PathBuf>,
    /// List the environment's backups, newest first: one `backup.listed` JSON line each with its verified status.
    #[arg(long, conflicts_with = "keep")]
    list: bool,
    /// Retention: keep the newest N backups of the environment (default: retention.backups in environments.json, 10; 0 is refused, exit 2). Aliases (dhash-<env>-<ts>.zip) are not counted and go with their backup.
    #[arg(long, value_name = "N", value_parser = parse_keep)]
    keep: Option<usize>,
    /// More detail on stderr.
    #[arg(long, short)]
    verbose: bool,
}

/// `--keep` is checked exactly as `retention.backups` in environments.json is.
fn parse_keep(s: &str) -> Result<usize, String> {
    let n: u64 = s
        .trim()
        .parse()
        .map_err(|_| format!("expected a whole number, found {s:?}"))?;
    gates_core::config::limits::check_backups_keep(n)
}

pub fn main() -> std::process::ExitCode {
    let args = Args::parse();
    gates_core::cli::main_entry(TOOL, || run(args))
}

fn run(args: Args) -> anyhow::Result<Exit> {
    if let Some(path) = &args.verify {
        return verify(&args, path);
    }
    let Some(env_name) = args.env.as_deref() else {
        return Err(gates_core::exit::usage_error(
            "--env is required (e.g. --env staging)",
        ));
    };
    let project = Project::discover()?;
    let env = project.env(env_name)?;
    let em = Emitter::stdout(TOOL, &env.name, args.verbose);
    if args.list {
        let entries = crate::list(env, true)?;
        if entries.is_empty() {
            em.human(&format!(
                "no backups of {} in {}",
                env.name,
                env.backup_dir.display()
            ));
        }
        for e in entries {
            let level = if e.verified {
                Level::Info
            } else {
                Level::Warning
            };
            let msg = match &e.error {
                None => format!("{} verified", e.path.display()),
                Some(err) => format!("{} does NOT verify: {err}", e.path.display()),
            };
            em.emit("backup.listed", level, msg, serde_json::to_value(&e)?);
        }
        return Ok(Exit::Ok);
    }
    if args.dry_run {
        // Reads only: no lock, nothing written.
        let plan = crate::plan(&project, env)?;
        crate::report_plan(&plan, &em);
        return Ok(Exit::Ok);
    }
    let lock = env.lock(TOOL)?;
    let opts = BackupOptions {
        dry_run: false,
        keep: args.keep,
    };
    // A failure once begun is also a `backup.failed` event, for `| notify`.
    crate::create_reporting_failure(&project, env, &lock, &opts, &em)?;
    Ok(Exit::Ok)
}

fn verify(args: &Args, path: &std::path::Path) -> anyhow::Result<Exit> {
    let em = Emitter::stdout(TOOL, args.env.as_deref().unwrap_or(""), args.verbose);
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    match crate::verify(&path) {
        Ok(m) => {
            if args.env.is_none() {
                em.set_env(&m.env);
            }
            if let Some(want) = args.env.as_deref().filter(|e| *e != m.env) {
                em.emit(
                    "backup.rejected",
                    Level::Error,
                    format!("{} is a backup of {}, not {want}", path.display(), m.env),
                    json!({"path": path, "manifest_env": m.env}),
                );
                return Err(ToolError::new(
                    Exit::Failed,
                    anyhow::anyhow!("{} is a backup of {}, not {want}", path.display(), m.env),
                )
                .into());
            }
            let sha = crate::read_sidecar(&path).map(|s| s.0).unwrap_or_default();
            let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            em.emit(
                "backup.verified",
                Level::Info,
                format!("{} verified ({} files)", path.display(), m.files.len()),
                json!({"path": path, "sha256": sha, "bytes": bytes, "files": m.files.len(),
                       "release": m.release, "schema_version": m.schema_version,
                       "created_at": m.created_at, "manifest_env": m.env}),
            );
            Ok(Exit::Ok)
        }
        Err(e) => {
            em.emit(
                "backup.rejected",
                Level::Error,
                format!("{} does not verify: {e:#}", path.display()),
                json!({"path": path, "error": format!("{e:#}")}),
            );
            Err(ToolError::new(Exit::Failed, e).into())
        }
    }
}
