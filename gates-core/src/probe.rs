//! Health / metrics / queue probes over HTTP (being built).
