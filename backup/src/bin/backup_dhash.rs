//! backup_dhash: a verified zip + SHA-256 sidecar of an environment's state.

fn main() -> std::process::ExitCode {
    dhash_backup::cli::main()
}
