//! The shared exit codes and an error type that carries one. This file is
//! their one source: each tool's `--help` ends with [`EXIT_CODES_HELP`],
//! rendered from [`Exit::ALL`] at compile time, and a test checks that the
//! README's "Exit codes" table lists the same codes.

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
    /// Every code, in the order `--help` lists them (add a new variant here too).
    pub const ALL: [Exit; 8] = [
        Exit::Ok,
        Exit::Failed,
        Exit::Usage,
        Exit::GateRolledBack,
        Exit::RollbackFailed,
        Exit::Inconclusive,
        Exit::Superseded,
        Exit::Locked,
    ];

    pub const fn code(self) -> u8 {
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

    /// The meaning `--help` prints; a `\n` continues on an indented line.
    pub const fn help(self) -> &'static str {
        match self {
            Exit::Ok => "done",
            Exit::Failed => "the operation failed (nothing changed, or it was undone)",
            Exit::Usage => "usage or configuration error",
            Exit::GateRolledBack => "a quality gate was violated and the rollback succeeded",
            Exit::RollbackFailed => "a rollback was needed and failed (page someone)",
            Exit::Inconclusive => {
                "live but not judged: a watch ended inconclusive (an auto-rollback gate was never\n\
                 evaluated: window too short, no data), or deploy could not start its watch"
            }
            Exit::Superseded => {
                "a watch was superseded: its release was replaced before the window closed"
            }
            Exit::Locked => "another run holds the environment's lock",
        }
    }
}

/// The paragraph every `--help` ends with, rendered from [`Exit::ALL`]:
/// "Exit codes:", then per code two spaces, the code padded to 4 columns and
/// its [`Exit::help`] (continuation lines indented by 6).
pub const EXIT_CODES_HELP: &str = match std::str::from_utf8(&help_table::BYTES) {
    Ok(s) => s,
    Err(_) => panic!("the exit-code table is not UTF-8"),
};

/// Renders the help table in a `const` context, so [`EXIT_CODES_HELP`] stays
/// a `&'static str` that clap's `after_help` attributes can take as is.
mod help_table {
    use super::Exit;

    const TITLE: &[u8] = b"Exit codes:";
    const CODE_COLUMNS: usize = 4;
    const INDENT: &[u8] = b"  ";
    const CONTINUATION: &[u8] = b"      ";

    pub(super) const LEN: usize = render(&mut [0; 0]);
    pub(super) const BYTES: [u8; LEN] = {
        let mut out = [0u8; LEN];
        render(&mut out);
        out
    };

    /// Writes the table into `out` when it is large enough; returns its length
    /// either way (so one function both measures and renders).
    const fn render(out: &mut [u8]) -> usize {
        let mut n = put(out, 0, TITLE);
        let mut i = 0;
        while i < Exit::ALL.len() {
            let exit = Exit::ALL[i];
            n = put(out, n, b"\n");
            n = put(out, n, INDENT);
            let code = exit.code();
            let start = n;
            if code >= 100 {
                n = put_byte(out, n, b'0' + code / 100);
            }
            if code >= 10 {
                n = put_byte(out, n, b'0' + code / 10 % 10);
            }
            n = put_byte(out, n, b'0' + code % 10);
            while n - start < CODE_COLUMNS {
                n = put_byte(out, n, b' ');
            }
            let text = exit.help().as_bytes();
            let mut j = 0;
            while j < text.len() {
                n = put_byte(out, n, text[j]);
                if text[j] == b'\n' {
                    n = put(out, n, CONTINUATION);
                }
                j += 1;
            }
            i += 1;
        }
        n
    }

    const fn put(out: &mut [u8], mut n: usize, bytes: &[u8]) -> usize {
        let mut j = 0;
        while j < bytes.len() {
            n = put_byte(out, n, bytes[j]);
            j += 1;
        }
        n
    }

    const fn put_byte(out: &mut [u8], n: usize, b: u8) -> usize {
        if n < out.len() {
            out[n] = b;
        }
        n + 1
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    /// The text the tools printed before the table existed, byte for byte.
    #[test]
    fn help_renders_the_table_unchanged() {
        let before = "Exit codes:
  0   done
  1   the operation failed (nothing changed, or it was undone)
  2   usage or configuration error
  3   a quality gate was violated and the rollback succeeded
  4   a rollback was needed and failed (page someone)
  5   live but not judged: a watch ended inconclusive (an auto-rollback gate was never
      evaluated: window too short, no data), or deploy could not start its watch
  6   a watch was superseded: its release was replaced before the window closed
  75  another run holds the environment's lock";
        assert_eq!(EXIT_CODES_HELP, before);
    }

    /// The README's "Exit codes" table lists exactly the codes of [`Exit::ALL`].
    #[test]
    fn readme_lists_the_same_codes() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
        let readme = std::fs::read_to_string(path).expect("README.md");
        let section = readme
            .split("\n## ")
            .find(|s| s.starts_with("Exit codes"))
            .expect("README has an \"Exit codes\" section");
        let listed: Vec<u8> = section
            .lines()
            .filter_map(|l| l.strip_prefix("| ")?.split(' ').next()?.parse().ok())
            .collect();
        let codes: Vec<u8> = Exit::ALL.iter().map(|e| e.code()).collect();
        assert_eq!(
            listed, codes,
            "README.md \"Exit codes\" vs gates_core::exit::Exit::ALL"
        );
    }
}
