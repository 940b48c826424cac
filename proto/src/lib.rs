//! Generated protobuf and gRPC types shared by `tandemd` and `tandemctl`.
//!
//! Nothing hand-written lives here beyond the re-exports and the protocol's version number:
//! change the `.proto` files instead.

/// The version of `peer.proto` this build speaks. Raise it with any change an older build
/// would misread; devices refuse a hello that names another version.
pub const PEER_PROTOCOL: u32 = 5;

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

/// Messages and service of `hub.proto`: device ⇄ hub (membership, object access).
pub mod hub {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("tandem.hub.v1");
}
