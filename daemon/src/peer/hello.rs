//! The hello each way: the protocol version both sides must speak, the capabilities this
//! build offers, and the kind of data each shared source holds (files against contacts is
//! refused for that source, on both sides).

use tandem_proto::peer as pb;

use crate::formats::{self, Kind};
use crate::identity::DeviceId;

/// The kind of data a source kept in `format` holds; `None` for a format this build lacks.
pub(super) fn kind_of(format: &str) -> Option<Kind> {
    formats::by_name(format).ok().map(|f| f.kind())
}

/// Why a source cannot be exchanged with a peer that keeps it as another kind of data.
pub(super) fn kind_mismatch(
    theirs: &pb::SourceCursor,
    our_format: &str,
    device: &DeviceId,
) -> Option<String> {
    let ours = kind_of(our_format)?;
    if Kind::parse(&theirs.kind) == Some(ours) {
        return None;
    }
    let their_kind = if theirs.kind.is_empty() {
        "an unknown kind"
    } else {
        theirs.kind.as_str()
    };
    Some(format!(
        "source {:?}: device {} keeps it as {their_kind} ({}), this device as {ours} ({our_format}); \
         a source holds one kind of data everywhere, so share it only between devices that keep \
         the same kind",
        theirs.source,
        device.short_string(),
        if theirs.format.is_empty() {
            "?"
        } else {
            &theirs.format
        },
    ))
}

/// Offered by a build that takes a folder renamed whole as one operation (`FolderMove`) and
/// asks for its entries (`ExpandMove`) when it cannot derive them.
pub(super) const FOLDER_MOVES: &str = "folder-moves";

/// The capabilities this build offers, for its hello: a `kind:K` for every kind of data its
/// registered formats keep (adding a format adds its kind here by itself), and folder moves.
pub(super) fn capabilities() -> Vec<String> {
    formats::kinds()
        .into_iter()
        .map(|k| format!("kind:{k}"))
        .chain([FOLDER_MOVES.to_owned()])
        .collect()
}

/// Refuses a hello in another protocol version, naming both versions.
pub(super) fn check_protocol(hello: &pb::Hello, device: &DeviceId) -> Result<(), String> {
    if hello.protocol == tandem_proto::PEER_PROTOCOL {
        return Ok(());
    }
    Err(format!(
        "device {} speaks peer protocol {} (tandem {}), this device speaks protocol {} \
         (tandem {}); install the same Tandem release on both",
        device.short_string(),
        hello.protocol,
        if hello.version.is_empty() {
            "?"
        } else {
            &hello.version
        },
        tandem_proto::PEER_PROTOCOL,
        env!("CARGO_PKG_VERSION"),
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn cursor(kind: &str, format: &str) -> pb::SourceCursor {
        pb::SourceCursor {
            source: "docs".into(),
            kind: kind.into(),
            format: format.into(),
            ..Default::default()
        }
    }

    #[test]
    fn sources_of_different_kinds_are_refused_naming_both() {
        let device = DeviceId::from_cert_der(b"test");
        assert_eq!(
            kind_mismatch(&cursor("files", "files"), "files", &device),
            None
        );
        let why = kind_mismatch(&cursor("contacts", "vcard-dir"), "files", &device).unwrap();
        assert!(
            why.contains("contacts (vcard-dir)") && why.contains("files (files)"),
            "{why}"
        );
        // A peer that names no kind is not taken for files.
        assert!(kind_mismatch(&cursor("", ""), "files", &device).is_some());
    }

    #[test]
    fn another_protocol_version_is_refused_naming_both() {
        let device = DeviceId::from_cert_der(b"test");
        let mut hello = pb::Hello {
            protocol: tandem_proto::PEER_PROTOCOL,
            ..Default::default()
        };
        assert!(check_protocol(&hello, &device).is_ok());
        hello.protocol = 1;
        let why = check_protocol(&hello, &device).unwrap_err();
        assert!(
            why.contains("protocol 1")
                && why.contains(&format!("protocol {}", tandem_proto::PEER_PROTOCOL)),
            "{why}"
        );
    }
}
