//! `dhash-dist completions DIR` / `dhash-dist man DIR`: generated at install
//! time by install.sh (see the library docs).

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use gates_core::exit::{Exit, EXIT_CODES_HELP};

#[derive(Parser, Debug)]
#[command(
    name = "dhash-dist",
    version,
    about = "Generate shell completions (bash, zsh, fish) and man pages of every dhash tool",
    after_help = EXIT_CODES_HELP
)]
struct Cli {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand, Debug)]
enum What {
    /// Write DIR/bash/<tool>, DIR/zsh/_<tool>, DIR/fish/<tool>.fish.
    Completions { dir: PathBuf },
    /// Write DIR/<tool>.1 (and DIR/<tool>-<subcommand>.1).
    Man { dir: PathBuf },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    gates_core::cli::main_entry("dhash-dist", || {
        let (n, dir) = match &cli.what {
            What::Completions { dir } => (dhash_dist::write_completions(dir)?, dir),
            What::Man { dir } => (dhash_dist::write_man_pages(dir)?, dir),
        };
        eprintln!("dhash-dist: {n} files in {}", dir.display());
        Ok(Exit::Ok)
    })
}
