use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = dhash_monitor::Args::parse();
    gates_core::cli::main_entry(dhash_monitor::TOOL, || dhash_monitor::run(args))
}
