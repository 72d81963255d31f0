//! `validate_logging --env ENV [--threads N] [--lines N] [--verbose]`

fn main() -> std::process::ExitCode {
    dhash_smoke::cli::validate_logging::main()
}
