//! report_dhash: deployment success rate, auto-rollbacks, MTTR, false
//! positives, gate violations and time under watch, from the ledger.
use std::io::Write;

use clap::Parser;
use dhash_report::cli::{Args, Cmd, MarkArgs, ReportArgs, WindowArgs};
use dhash_report::{Verdict, TOOL};
use gates_core::exit::{usage_error, Exit};
use gates_core::project::Project;
use gates_core::Emitter;

fn main() -> std::process::ExitCode {
    let cli = Args::parse();
    gates_core::cli::main_entry(TOOL, || match cli.cmd {
        Some(Cmd::Mark(m)) => mark(m),
        Some(Cmd::Window(w)) => window(w),
        None => report(cli.report),
    })
}

fn mark(m: MarkArgs) -> anyhow::Result<Exit> {
    let project = Project::discover()?;
    let env = project.env(&m.env)?;
    let em = Emitter::stdout(TOOL, &env.name, false);
    let verdict = match m.unnecessary {
        true => Verdict::Unnecessary,
        false => Verdict::Necessary,
    };
    dhash_report::mark(env, &m.rollback, verdict, m.reason.as_deref(), &em)?;
    Ok(Exit::Ok)
}

fn report(a: ReportArgs) -> anyhow::Result<Exit> {
    let Some(env_name) = a.env.as_deref() else {
        return Err(usage_error("--env is required (e.g. --env production)"));
    };
    let project = Project::discover()?;
    let env = project.env(env_name)?;
    let period = dhash_report::period(Some(&a.since), a.until.as_deref(), chrono::Utc::now())?;
    let report = dhash_report::report(env, period)?;
    let table = dhash_report::render::table(&report);
    if a.table {
        std::io::stdout().write_all(table.as_bytes())?;
    } else if a.csv {
        std::io::stdout().write_all(&dhash_report::render::csv(&report)?)?;
    } else {
        let em = Emitter::to_writer(TOOL, &env.name, Box::new(std::io::stdout()));
        dhash_report::render::emit(&report, &em);
    }
    if !a.quiet && !a.table {
        eprint!("{table}");
    }
    if let Some(path) = &a.html {
        let html = dhash_report::page::history_page(&report)?;
        gates_core::fsutil::write_atomic(path, html.as_bytes())?;
        eprintln!("{TOOL}: wrote {}", path.display());
    }
    if let Some(path) = &a.prometheus_textfile {
        dhash_report::write_textfile(&report, path)?;
        eprintln!("{TOOL}: wrote {}", path.display());
    }
    Ok(Exit::Ok)
}

fn window(w: WindowArgs) -> anyhow::Result<Exit> {
    let project = Project::discover()?;
    let env = project.env(&w.env)?;
    let (release, events) =
        dhash_report::window::find_watch(env, w.release.as_deref(), w.recording.as_deref())?;
    let ack = dhash_report::window::acknowledgement(env, &events)?;
    let html =
        dhash_report::window::page_acked(&env.name, release.as_deref(), &events, ack.as_ref())?;
    let out = w.out.unwrap_or_else(|| {
        let name = release
            .as_deref()
            .unwrap_or("unknown")
            .replace(['/', ' '], "_");
        env.log_dir.join(format!("window_{}_{name}.html", env.name))
    });
    gates_core::fsutil::write_atomic(&out, html.as_bytes())?;
    let em = Emitter::stdout(TOOL, &env.name, false);
    em.info(
        "report.window-written",
        format!("wrote {}", out.display()),
        serde_json::json!({"path": out, "release": release, "events": events}),
    );
    Ok(Exit::Ok)
}
