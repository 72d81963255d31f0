//! The shared exit codes (DESIGN.md "Exit codes") and an error type that carries one.

use std::fmt;

/// Exit codes every tool uses. Documented in each tool's `--help`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: done.
    Ok,
    /// 1: the operation failed (nothing changed, or it was undone).
    Failed,
    /// 2: usage or configuration error.
    Usage,
    /// 3: a quality gate was violated and the rollback succeeded.
    GateRolledBack,
    /// 4: a rollback was needed and failed (the page-someone case).
    RollbackFailed,
    /// 5: the release is live but was not judged: the watch ended without
    /// evaluating every auto-rollback gate (its window shorter than a gate's,
    /// or no data), or deploy could not start the watch. Never a pass.
    Inconclusive,
    /// 6: the watch ended because its release was replaced (a newer deploy
    /// or a rollback) before the window closed: nothing was decided.
    Superseded,
    /// 75: another run holds the environment's lock (EX_TEMPFAIL).
    Locked,
}

impl Exit {
    pub fn code(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::Failed => 1,
            Exit::Usage => 2,
            Exit::GateRolledBack => 3,
            Exit::RollbackFailed => 4,
            Exit::Inconclusive => 5,
            Exit::Superseded => 6,
            Exit::Locked => 75,
        }
    }
}

/// The paragraph every `--help` ends with.
pub const EXIT_CODES_HELP: &str = "Exit codes:
  0   done
  1   the operation failed (nothing changed, or it was undone)
  2   usage or configuration error
  3   a quality gate was violated and the rollback succeeded
  4   a rollback was needed and failed (page someone)
  5   live but not judged: a watch ended inconclusive (an auto-rollback gate was never
      evaluated: window too short, no data), or deploy could not start its watch
  6   a watch was superseded: its release was replaced before the window closed
  75  another run holds the environment's lock";

/// An error that knows which exit code it maps to. Anything else that reaches
/// the entry point maps to 1, except the typed errors listed in [`exit_for`].
#[derive(Debug)]
pub struct ToolError {
    pub exit: Exit,
    pub error: anyhow::Error,
}

impl fmt::Display for ToolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.error)
    }
}

impl std::error::Error for ToolError {}

impl ToolError {
    pub fn new(exit: Exit, error: impl Into<anyhow::Error>) -> Self {
        ToolError {
            exit,
            error: error.into(),
        }
    }
}

/// Shorthand: a usage/configuration error (exit 2) with a message.
pub fn usage_error(msg: impl fmt::Display) -> anyhow::Error {
    ToolError::new(Exit::Usage, anyhow::anyhow!("{msg}")).into()
}

/// The exit code an error maps to: the first typed error in its chain decides.
pub fn exit_for(err: &anyhow::Error) -> Exit {
    for cause in err.chain() {
        if let Some(t) = cause.downcast_ref::<ToolError>() {
            return t.exit;
        }
        if cause.downcast_ref::<crate::config::ConfigError>().is_some() {
            return Exit::Usage;
        }
        if cause.downcast_ref::<crate::lock::LockBusy>().is_some() {
            return Exit::Locked;
        }
    }
    Exit::Failed
}
