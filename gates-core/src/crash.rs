//! Crash points for tests of crash safety: `DHASH_TEST_CRASH_AT=<point>` kills
//! the process with SIGKILL when it reaches that named point, the same as a
//! `kill -9` landing there. One definition for every tool, so the points of
//! backup, deploy, rollback and service control behave alike.
//!
//! Points by tool: `backup-*` (backup crate), `deploy-*` (deploy crate),
//! `rollback-*` (rollback crate), and `service-spawned`: the local service
//! has been spawned but its pid is not yet in `service.pid`, and
//! `notify-escalation-saved`: notify has saved an escalation (its notice
//! unsent in the outbox) but not yet sent the notice.

/// The variable naming the point to die at.
pub const VAR: &str = "DHASH_TEST_CRASH_AT";

/// Dies with SIGKILL when `DHASH_TEST_CRASH_AT` names `point`; else returns.
pub fn crash_point(point: &str) {
    if std::env::var(VAR).is_ok_and(|v| v == point) {
        #[cfg(unix)]
        {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL);
        }
        // SIGKILL cannot be caught; this is reached only without signals.
        std::process::abort();
    }
}
