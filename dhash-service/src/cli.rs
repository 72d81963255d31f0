//! `dhash-service`: the reference dhash service, its release bundles and a load driver.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::{bundle, config, load, server};
use clap::{Parser, Subcommand};
use gates_core::exit::{usage_error, EXIT_CODES_HELP};
use gates_core::{Emitter, Exit};

#[derive(Parser, Debug)]
#[command(
    name = "dhash-service",
    version,
    about = "The reference dhash service: HTTP dHash API, release bundles, load driver",
    after_help = EXIT_CODES_HELP
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the dHash HTTP API (GET /health, GET /metrics,
    /// GET /api/dhash/queue/status, POST /api/dhash/hash) until SIGTERM.
    #[command(after_help = EXIT_CODES_HELP)]
    Serve(ServeArgs),
    /// Build a release bundle dist/dhash-<tag>/ (binary, config with faults,
    /// migrations, golden images, release.json with per-file sha256).
    #[command(after_help = EXIT_CODES_HELP)]
    Bundle(BundleArgs),
    /// Send a steady mix of valid, low-confidence and undecodable images.
    #[command(after_help = EXIT_CODES_HELP)]
    Load(LoadArgs),
    /// Start an environment's installed release through its service control
    /// (`npm start`), and wait until it answers /health. Already running:
    /// says so, exit 0. Nothing installed: exit 1, naming the deploy command.
    #[command(after_help = EXIT_CODES_HELP)]
    Start(StartArgs),
}

#[derive(clap::Args, Debug)]
struct StartArgs {
    /// Environment (from environments.json).
    #[arg(long, default_value = "production")]
    env: String,
    #[arg(long, short)]
    verbose: bool,
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Address to listen on (port 0 picks a free port; the service.started event names it).
    #[arg(long, default_value = "127.0.0.1:3000")]
    bind: String,
    /// The SQLite database (must exist, migrated by migrate_dhash).
    #[arg(long)]
    database: PathBuf,
    /// The data dir whose disk use /metrics reports (default: the database's folder).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The installed release bundle (release.json, config.json) (default: the folder above this binary's bin/).
    #[arg(long)]
    release_dir: Option<PathBuf>,
    /// Override a fault of config.json, e.g. --fault hash_latency_ms=2500 (repeatable).
    #[arg(long = "fault", value_name = "KEY=VALUE", value_parser = config::fault_arg)]
    faults: Vec<(String, String)>,
    /// Override a client limit of config.json, e.g. --limit body_timeout_ms=5000
    /// (repeatable). Keys: header_bytes, header_lines, request_line_bytes,
    /// header_timeout_ms, body_timeout_ms, body_readers, body_memory_bytes,
    /// max_connections, hash_stall_ms; each is range-checked.
    #[arg(long = "limit", value_name = "KEY=VALUE", value_parser = config::limit_arg)]
    limits: Vec<(String, String)>,
    /// Hash worker threads.
    #[arg(long, default_value_t = server::DEFAULT_WORKERS)]
    workers: usize,
    /// Label of the environment in events (informational).
    #[arg(long, default_value = "")]
    env: String,
    /// Log every request on stderr.
    #[arg(long, short)]
    verbose: bool,
}

#[derive(clap::Args, Debug)]
struct BundleArgs {
    /// Release tag; the bundle is <out>/dhash-<tag>/.
    #[arg(long)]
    tag: String,
    /// Parent folder of the bundle (default: the project's dist/).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Set a fault in config.json, e.g. --fault failure_fraction=0.5 (repeatable).
    /// Keys: hash_latency_ms, failure_fraction, error_fraction, low_confidence_flood,
    /// health_fail, crash_at_start.
    #[arg(long = "fault", value_name = "KEY=VALUE", value_parser = config::fault_arg)]
    faults: Vec<(String, String)>,
    /// Folder of NNNN_name.up.sql/.down.sql migrations (default: the built-in ones).
    #[arg(long)]
    migrations: Option<PathBuf>,
    /// Schema version the release requires (default: the highest migration version).
    #[arg(long)]
    schema_version: Option<i64>,
    /// Replace an existing bundle of the same tag.
    #[arg(long)]
    force: bool,
    /// Check the inputs and print a bundle.planned event; write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Label of the environment in events (informational).
    #[arg(long, default_value = "")]
    env: String,
    #[arg(long, short)]
    verbose: bool,
}

#[derive(clap::Args, Debug)]
struct LoadArgs {
    /// Base URL of the service (default: derived from --env's health_url).
    #[arg(long)]
    url: Option<String>,
    /// Environment whose service to load (used when --url is not given).
    #[arg(long)]
    env: Option<String>,
    /// Requests per second.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// How long to send, e.g. 30s, 5m or 600 (seconds).
    #[arg(long, value_parser = gates_core::duration::duration_arg, default_value = "30s")]
    duration: Duration,
    /// Relative weights of valid, low-confidence and undecodable images.
    #[arg(long, value_parser = load::mix_arg, default_value = "valid=80,low=10,bad=10")]
    mix: load::Mix,
    /// Requests in flight at most.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Per-request timeout.
    #[arg(long, value_parser = gates_core::duration::duration_arg, default_value = "30s")]
    timeout: Duration,
    #[arg(long, short)]
    verbose: bool,
}

fn default_release_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    exe.parent()
        .and_then(|bin| bin.parent())
        .map(PathBuf::from)
        .ok_or_else(|| usage_error("cannot derive --release-dir from this executable's path"))
}

fn run(cli: Cli) -> anyhow::Result<Exit> {
    match cli.command {
        Command::Serve(a) => {
            let em = Emitter::stdout("dhash-service", &a.env, a.verbose);
            let data_dir = match a.data_dir {
                Some(d) => d,
                None => a
                    .database
                    .parent()
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from(".")),
            };
            let release_dir = match a.release_dir {
                Some(d) => d,
                None => default_release_dir()?,
            };
            let opts = server::ServeOptions {
                bind: a.bind,
                database: a.database,
                data_dir,
                release_dir,
                faults: a.faults,
                limits: a.limits,
                workers: a.workers,
                verbose: a.verbose,
            };
            server::serve(&opts, &em)
        }
        Command::Bundle(a) => {
            let em = Emitter::stdout("dhash-service", &a.env, a.verbose);
            let opts = bundle::BundleOptions {
                tag: a.tag,
                out: a.out,
                faults: a.faults,
                migrations: a.migrations,
                schema_version: a.schema_version,
                force: a.force,
                dry_run: a.dry_run,
                binary: None,
            };
            bundle::build(&opts, &em)?;
            Ok(Exit::Ok)
        }
        Command::Load(a) => {
            let env_name = a.env.clone().unwrap_or_default();
            let em = Emitter::stdout("dhash-service", &env_name, a.verbose);
            let url = match (a.url, &a.env) {
                (Some(u), _) => u,
                (None, Some(env)) => {
                    let project = gates_core::project::Project::discover()?;
                    let e = project.env(env)?;
                    e.health_url
                        .trim_end_matches('/')
                        .trim_end_matches("/health")
                        .to_string()
                }
                (None, None) => return Err(usage_error("give --url BASE or --env NAME")),
            };
            let opts = load::LoadOptions {
                url,
                rate: a.rate,
                duration: a.duration,
                mix: a.mix,
                concurrency: a.concurrency,
                timeout: a.timeout,
            };
            load::run(&opts, &em)?;
            Ok(Exit::Ok)
        }
        Command::Start(a) => start(a),
    }
}

/// `dhash-service start --env E`: the environment's own start, never a second copy.
fn start(a: StartArgs) -> anyhow::Result<Exit> {
    let project = gates_core::project::Project::discover()?;
    let env = project.env(&a.env)?;
    let em = Emitter::stdout("dhash-service", &env.name, a.verbose);
    let Some(release) = gates_core::service::current_release(env) else {
        return Err(gates_core::ToolError::new(
            Exit::Failed,
            anyhow::anyhow!(
                "no release is installed for {} ({} has no current release): deploy one first, \
                 e.g. ./scripts/deploy_dhash.sh --env {}",
                env.name,
                env.install_root.display(),
                env.name
            ),
        )
        .into());
    };
    if let Some(pid) = gates_core::service::running_pid(env) {
        em.human(&format!(
            "{} is already running release {release} (pid {pid})",
            env.name
        ));
        return Ok(Exit::Ok);
    }
    gates_core::service::start(env, &em)?;
    Ok(Exit::Ok)
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    gates_core::cli::main_entry("dhash-service", || run(cli))
}
