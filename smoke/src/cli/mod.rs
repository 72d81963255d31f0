//! The two binaries' arguments and runs; `src/bin/*.rs` only call `main`.
//! The clap types are public so `dhash-dist` can render completions and man
//! pages from them.
pub mod smoke_tests;
pub mod validate_logging;
