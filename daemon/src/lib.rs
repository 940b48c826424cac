//! The Tandem agent as a library: `tandemd` is a thin binary over [`agent::run`].
//!
//! ARCHITECTURE.md at the top of the repository maps the modules and how data flows.

/// The allocator of every program built on this library (the agent, the hub, the benches and
/// tests): a record source of 10,000 contacts allocates and frees hundreds of thousands of
/// small values per read, and glibc's allocator spent a third of a read's time consolidating
/// them (perf, `tests/bench/records.py`). Set here, not in `tandemd` alone, so the parse the
/// record bench compares a sync against runs on the same allocator as the agent.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod agent;
pub mod apply;
pub mod chunker;
pub mod config;
pub mod control;
pub mod discovery;
pub mod doctor;
pub mod events;
pub mod feed;
pub mod formats;
pub mod hub;
pub mod hub_client;
pub mod identity;
pub mod ignores;
pub mod index;
pub mod item;
pub mod layout;
pub mod logging;
pub mod metrics;
pub mod moves;
pub mod peer;
pub mod records;
pub mod scanner;
pub mod sealed;
pub mod source;
pub mod store;
pub mod sync_state;
pub mod universal;
pub mod versions;
pub mod watcher;
