//! `smoke_tests --env ENV [--quick | --post-deploy | --post-rollback] [--dry-run] [--verbose]`

fn main() -> std::process::ExitCode {
    dhash_smoke::cli::smoke_tests::main()
}
