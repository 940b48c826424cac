//! The hub role (`tandemd --role hub`): a management service (the members of each space, and
//! where each member's objects live) and a storage service (an object store), for devices
//! that are never online together. The hub holds no state of its own: everything it knows is
//! in the object store, laid out so that every object has one writer (`names`), so several
//! hub processes can serve one bucket. It sees only what members sealed (`crate::sealed`).
//!
//! Must not: open or need a source key; keep state outside the object store; let a device
//! write an object another member owns.

pub mod control;
pub mod gc;
pub mod members;
pub mod names;
pub mod run;
pub mod service;
pub mod space;
pub mod storage;
