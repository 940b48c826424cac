//! Index: the rules that decide how differences relate to each other. Today it
//! holds version vectors; local sequences, the conflict winner and the
//! three-way record merge will live here too.
//!
//! Must not: do any I/O. Everything here is pure and deterministic, so every
//! device reaches the same decision from the same inputs.

pub mod version;

pub use version::{MAX_COUNTER, Ordering, ShortId, VersionError, VersionVector};
