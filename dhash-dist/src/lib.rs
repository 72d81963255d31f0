//! `dhash-dist`: what an install needs beside the binaries: shell
//! completions (bash, zsh, fish; `clap_complete`) and man pages
//! (`clap_mangen`), generated from every tool's own clap arguments, so they
//! never drift from `--help`.
//!
//! Every tool keeps its arguments in its library (`<crate>::cli`, or
//! `dhash_monitor::Args`); this crate only lists them.

use std::fs;
use std::path::Path;

use anyhow::Context;
use clap::{Command, CommandFactory};
use clap_complete::Shell;

/// Every installed binary, by the name it is installed under, with its
/// clap command. The name is forced onto the command, since completions
/// are keyed by it.
pub fn tools() -> Vec<(&'static str, Command)> {
    vec![
        ("backup_dhash", dhash_backup::cli::Args::command()),
        ("deploy_dhash", dhash_deploy::cli::Args::command()),
        ("migrate_dhash", dhash_migrate::cli::Args::command()),
        ("rollback_dhash", dhash_rollback::cli::Args::command()),
        ("monitor_dhash", dhash_monitor::Args::command()),
        ("notify", dhash_notify::cli::NotifyArgs::command()),
        (
            "deploy-notify",
            dhash_notify::cli::DeployNotifyArgs::command(),
        ),
        (
            "smoke_tests",
            dhash_smoke::cli::smoke_tests::Args::command(),
        ),
        (
            "validate_logging",
            dhash_smoke::cli::validate_logging::Args::command(),
        ),
        ("report_dhash", dhash_report::cli::Args::command()),
        ("dhash-service", dhash_service::cli::Cli::command()),
        ("check_performance", dhash_perfcheck::Args::command()),
    ]
    .into_iter()
    .map(|(name, cmd)| (name, cmd.name(name).bin_name(name)))
    .collect()
}

/// The file name each shell loads a completion from (bash-completion's
/// `completions/<cmd>`, zsh's `_<cmd>` on `fpath`, fish's `<cmd>.fish`).
fn completion_file(shell: Shell, tool: &str) -> String {
    match shell {
        Shell::Zsh => format!("_{tool}"),
        Shell::Fish => format!("{tool}.fish"),
        _ => tool.to_string(),
    }
}

/// Writes `<dir>/bash/<tool>`, `<dir>/zsh/_<tool>` and `<dir>/fish/<tool>.fish`
/// for every tool; returns how many files were written.
pub fn write_completions(dir: &Path) -> anyhow::Result<usize> {
    let mut n = 0;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let sub = dir.join(shell.to_string());
        fs::create_dir_all(&sub).with_context(|| format!("creating {}", sub.display()))?;
        for (name, mut cmd) in tools() {
            let path = sub.join(completion_file(shell, name));
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut cmd, name, &mut out);
            fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
            n += 1;
        }
    }
    Ok(n)
}

/// Writes `<dir>/<tool>.1` for every tool, and `<tool>-<sub>.1` for the
/// subcommands (dhash-service's, report_dhash's); returns how many.
pub fn write_man_pages(dir: &Path) -> anyhow::Result<usize> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut n = 0;
    for (_, cmd) in tools() {
        clap_mangen::generate_to(cmd, dir)
            .with_context(|| format!("writing man pages into {}", dir.display()))?;
    }
    for entry in fs::read_dir(dir)? {
        if entry?.path().extension().is_some_and(|e| e == "1") {
            n += 1;
        }
    }
    Ok(n)
}
