//! The standing fault matrix (filled in by the fault-matrix work).
