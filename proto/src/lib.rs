//! Generated protobuf and gRPC types shared by `tandemd` and `tandemctl`.
//!
//! Nothing hand-written lives here beyond the re-exports: change the `.proto` files instead.

/// Messages and service of `control.proto`: `tandemctl` ⇄ the local `tandemd`.
pub mod control {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("tandem.control.v1");
}

/// Messages and service of `peer.proto`: device ⇄ device, the universal difference format.
pub mod peer {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("tandem.peer.v1");
}
