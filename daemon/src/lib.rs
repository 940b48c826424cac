//! The Tandem agent as a library: `tandemd` is a thin binary over [`agent::run`].
//!
//! ARCHITECTURE.md at the top of the repository maps the modules and how data flows.

pub mod agent;
pub mod apply;
pub mod chunker;
pub mod config;
pub mod control;
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
