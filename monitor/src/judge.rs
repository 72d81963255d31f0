//! Judgment when a gate is unsure (issue 16): the baseline source and the
//! environment's inconclusive policy a watch runs with.

use gates_core::baseline::{BaselineSource, InconclusivePolicy};

/// What a watch judges with, beside its gates.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Where baseline-relative gates take their baseline.
    pub source: BaselineSource,
    /// What an inconclusive auto-rollback gate leads to.
    pub policy: InconclusivePolicy,
}
