//! Abusive HTTP clients against the real service (filled in by the hardening work).
