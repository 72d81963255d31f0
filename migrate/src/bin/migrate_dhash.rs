//! migrate_dhash: versioned database migrations of a dhash environment.

fn main() -> std::process::ExitCode {
    dhash_migrate::cli::main()
}
