//! Start, stop and restart of an environment's service (being built).
