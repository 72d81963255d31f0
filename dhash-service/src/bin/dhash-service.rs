//! `dhash-service`: the reference dhash service, its release bundles and a load driver.

fn main() -> std::process::ExitCode {
    dhash_service::cli::main()
}
