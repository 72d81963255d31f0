//! Loopback HTTP receivers that record requests (being built).
