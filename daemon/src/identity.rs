//! Identity: this device's TLS certificate and key, made once on first start
//! and loaded on every start after, and the device ID derived from the
//! certificate (SHA-256, shown as grouped base32 with check characters).
//!
//! Must not: open sockets or touch SQL; it only reads and writes the two files
//! in the identity folder it is given.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use data_encoding::BASE32_NOPAD;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PublicKeyData};
use sha2::{Digest, Sha256};

use crate::index::ShortId;

/// File name of the certificate inside the identity folder.
pub const CERT_FILE: &str = "cert.pem";
/// File name of the private key inside the identity folder.
pub const KEY_FILE: &str = "key.pem";

/// The RFC 4648 base32 alphabet; a character's value is its position.
const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
/// Base32 characters of a SHA-256 without padding.
const DATA_CHARS: usize = 52;
/// Data characters covered by one check character.
const CHECK_GROUP: usize = 13;
/// Characters of a device ID without dashes: 4 × (13 data + 1 check).
const ID_CHARS: usize = 56;
/// Characters per dash-separated group in the displayed form.
const SHOWN_GROUP: usize = 7;

/// The short name of a device (the first group of its displayed ID) from its short ID alone:
/// the group is made of the ID's first bits, which the short ID holds.
pub fn short_name(short: u64) -> String {
    let mut shown = BASE32_NOPAD.encode(&short.to_be_bytes());
    shown.truncate(SHOWN_GROUP);
    shown
}
/// Where to get a device ID from, for error messages.
const RECOPY: &str = "copy it again from `tandemctl id` on that device";

/// A device's identity: SHA-256 of its certificate (DER).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId([u8; 32]);

impl DeviceId {
    /// The device ID of a certificate given in DER form.
    pub fn from_cert_der(der: &[u8]) -> Self {
        Self(Sha256::digest(der).into())
    }

    /// A device ID from its 32 raw bytes (as stored or sent on the wire).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The 32 raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The key of this device in version vectors.
    pub fn short(&self) -> ShortId {
        let mut first = [0u8; 8];
        first.copy_from_slice(&self.0[..8]);
        ShortId(u64::from_be_bytes(first))
    }

    /// The first group of the displayed ID (7 characters), for logs.
    pub fn short_string(&self) -> String {
        short_name(self.short().0)
    }

    /// The 56 characters (data and check characters) without dashes.
    fn chars(&self) -> [u8; ID_CHARS] {
        let data = BASE32_NOPAD.encode(&self.0);
        let data = data.as_bytes();
        debug_assert_eq!(data.len(), DATA_CHARS);
        let mut out = [0u8; ID_CHARS];
        for (group, chunk) in data.chunks_exact(CHECK_GROUP).enumerate() {
            let at = group * (CHECK_GROUP + 1);
            out[at..at + CHECK_GROUP].copy_from_slice(chunk);
            out[at + CHECK_GROUP] = luhn32_check(chunk).expect("base32 output is in the alphabet");
        }
        out
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, group) in self.chars().chunks_exact(SHOWN_GROUP).enumerate() {
            if i > 0 {
                f.write_str("-")?;
            }
            // The alphabet is ASCII, so every byte is a char.
            for &c in group {
                write!(f, "{}", char::from(c))?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({self})")
    }
}

/// Value of a base32 character (uppercase only), or `None` outside the alphabet.
fn base32_value(c: u8) -> Option<u32> {
    match c {
        b'A'..=b'Z' => Some(u32::from(c - b'A')),
        b'2'..=b'7' => Some(u32::from(c - b'2') + 26),
        _ => None,
    }
}

/// The Luhn mod 32 check character for `data` over the base32 alphabet, or
/// `None` if `data` holds a character outside it.
///
/// Starting from the rightmost character, every other value is doubled and
/// its base-32 digits summed; the check character brings the total to a
/// multiple of 32. Doubling is a permutation mod 32, so any single wrong
/// character changes the total and is caught.
fn luhn32_check(data: &[u8]) -> Option<u8> {
    let mut sum = 0u32;
    for (i, &c) in data.iter().rev().enumerate() {
        let value = base32_value(c)?;
        let addend = if i % 2 == 0 { value * 2 } else { value };
        sum += addend / 32 + addend % 32;
    }
    let check = (32 - sum % 32) % 32;
    Some(ALPHABET[check as usize])
}

/// Why a device ID typed or pasted by a user was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseDeviceIdError {
    /// Wrong number of characters once dashes and spaces are removed.
    #[error(
        "device ID {input} has {len} characters without dashes, not {ID_CHARS}; copy the whole ID from `tandemctl id` on that device"
    )]
    Length {
        /// The input as given.
        input: String,
        /// Characters left after removing dashes and spaces.
        len: usize,
    },
    /// A character that never occurs in a device ID.
    #[error(
        "device ID {input} contains {found:?}, which never occurs in a device ID (letters A-Z and digits 2-7 only); {RECOPY}"
    )]
    BadChar {
        /// The input as given.
        input: String,
        /// The offending character.
        found: char,
    },
    /// A check character does not match its group: there is a typo in it.
    #[error(
        "device ID {input} has a wrong check character in group {shown_group} (a typo in group {} or {shown_group}); {RECOPY}",
        shown_group - 1
    )]
    Check {
        /// The input as given.
        input: String,
        /// The displayed dash group (1-8) that ends with the failing check character.
        shown_group: usize,
    },
    /// The check characters match but the data is not a SHA-256 in base32.
    #[error(
        "device ID {input} is not a valid device ID although its check characters match; {RECOPY}"
    )]
    Data {
        /// The input as given.
        input: String,
    },
}

impl FromStr for DeviceId {
    type Err = ParseDeviceIdError;

    /// Parses a device ID, ignoring case, dashes and spaces, and verifies its check characters.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Echo at most a little of what the user gave, in case it is huge.
        let input: String = s.trim().chars().take(2 * ID_CHARS).collect();
        let mut chars = Vec::with_capacity(ID_CHARS);
        for c in s.chars().filter(|&c| c != '-' && !c.is_whitespace()) {
            let upper = c.to_ascii_uppercase();
            if !upper.is_ascii() || base32_value(upper as u8).is_none() {
                return Err(ParseDeviceIdError::BadChar { input, found: c });
            }
            chars.push(upper as u8);
            if chars.len() > ID_CHARS {
                break;
            }
        }
        if chars.len() != ID_CHARS {
            let len = s
                .chars()
                .filter(|&c| c != '-' && !c.is_whitespace())
                .count();
            return Err(ParseDeviceIdError::Length { input, len });
        }

        let mut data = Vec::with_capacity(DATA_CHARS);
        for (group, chunk) in chars.chunks_exact(CHECK_GROUP + 1).enumerate() {
            let (body, check) = chunk.split_at(CHECK_GROUP);
            if luhn32_check(body) != Some(check[0]) {
                let shown_group = (group + 1) * (CHECK_GROUP + 1) / SHOWN_GROUP;
                return Err(ParseDeviceIdError::Check { input, shown_group });
            }
            data.extend_from_slice(body);
        }
        // The last data character carries 4 unused bits, which must be zero.
        let bytes = BASE32_NOPAD
            .decode(&data)
            .map_err(|_| ParseDeviceIdError::Data {
                input: input.clone(),
            })?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| ParseDeviceIdError::Data { input })?;
        Ok(Self(bytes))
    }
}

/// This device's certificate and key, and the device ID they give.
#[derive(Clone)]
pub struct Identity {
    /// SHA-256 of `cert_der`.
    pub device_id: DeviceId,
    /// The self-signed certificate, PEM.
    pub cert_pem: String,
    /// The private key (PKCS#8), PEM.
    pub key_pem: String,
    /// The certificate, DER.
    pub cert_der: Vec<u8>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the private key.
        f.debug_struct("Identity")
            .field("device_id", &self.device_id)
            .finish_non_exhaustive()
    }
}

/// What [`Identity::open`] did besides loading, for the caller to log.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Opened {
    /// The identity was made just now (first start).
    pub created: bool,
    /// The key file was readable by group or others and was set to owner-only (0600).
    pub key_mode_fixed: bool,
}

/// Why the identity could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file system operation failed.
    #[error(
        "cannot {action} {path}: {source}; check that the folder exists and belongs to this user"
    )]
    Io {
        /// What was being done, e.g. "read".
        action: &'static str,
        /// The file or folder concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// One of the two files exists without the other.
    #[error(
        "{present} exists but {missing} is missing; restore {missing} from a backup (a new identity would give this device a new device ID that every peer must add again; to accept that, move {present} away too)"
    )]
    Missing {
        /// The file that is there.
        present: PathBuf,
        /// The file that is not.
        missing: PathBuf,
    },
    /// The certificate file could not be parsed.
    #[error(
        "{path} is not a PEM certificate ({reason}); restore it from a backup (a new identity would give this device a new device ID; to accept that, move both {CERT_FILE} and {KEY_FILE} away)"
    )]
    BadCert {
        /// The certificate file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The key file could not be parsed.
    #[error(
        "{path} is not a PEM private key ({reason}); restore it from a backup (a new identity would give this device a new device ID; to accept that, move both {CERT_FILE} and {KEY_FILE} away)"
    )]
    BadKey {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The key does not belong to the certificate.
    #[error(
        "{key} does not belong to {cert}; restore the matching pair from a backup (a new identity would give this device a new device ID; to accept that, move both files away)"
    )]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// Generating a key or certificate failed.
    #[error("cannot make a certificate in {dir}: {reason}; this is a bug, please report it")]
    Generate {
        /// The identity folder.
        dir: PathBuf,
        /// What the certificate library said.
        reason: String,
    },
}

impl Identity {
    /// Loads the identity from `dir`, making it on first start; see [`Identity::open`].
    ///
    /// # Errors
    ///
    /// As [`Identity::open`].
    pub fn load_or_create(dir: &Path) -> Result<Identity, Error> {
        Self::open(dir).map(|(identity, _)| identity)
    }

    /// Loads `cert.pem` and `key.pem` from `dir`, or makes and writes both if
    /// neither exists; also reports what it did.
    ///
    /// A key file readable by group or others is set back to 0600.
    ///
    /// # Errors
    ///
    /// Only one of the files exists, either does not parse, the key does not
    /// match the certificate, or the folder cannot be read or written. Nothing
    /// is regenerated in those cases, since that would change the device ID.
    pub fn open(dir: &Path) -> Result<(Identity, Opened), Error> {
        let cert_path = dir.join(CERT_FILE);
        let key_path = dir.join(KEY_FILE);
        let has_cert = exists(&cert_path)?;
        let has_key = exists(&key_path)?;
        match (has_cert, has_key) {
            (false, false) => {
                let identity = create(dir, &cert_path, &key_path)?;
                let opened = Opened {
                    created: true,
                    key_mode_fixed: false,
                };
                Ok((identity, opened))
            }
            (true, false) => Err(Error::Missing {
                present: cert_path,
                missing: key_path,
            }),
            (false, true) => Err(Error::Missing {
                present: key_path,
                missing: cert_path,
            }),
            (true, true) => {
                let key_mode_fixed = restrict_key_mode(&key_path)?;
                let identity = load(&cert_path, &key_path)?;
                Ok((
                    identity,
                    Opened {
                        created: false,
                        key_mode_fixed,
                    },
                ))
            }
        }
    }
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io {
        action,
        path,
        source,
    }
}

fn exists(path: &Path) -> Result<bool, Error> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(io_error("look at", path)(err)),
    }
}

fn load(cert_path: &Path, key_path: &Path) -> Result<Identity, Error> {
    let cert_pem = fs::read_to_string(cert_path).map_err(io_error("read", cert_path))?;
    let key_pem = fs::read_to_string(key_path).map_err(io_error("read", key_path))?;
    let cert_der = pem_certificate(&cert_pem).map_err(|reason| Error::BadCert {
        path: cert_path.to_path_buf(),
        reason: reason.to_owned(),
    })?;
    let key = KeyPair::from_pem(&key_pem).map_err(|err| Error::BadKey {
        path: key_path.to_path_buf(),
        reason: err.to_string(),
    })?;
    // The certificate embeds its public key verbatim as SubjectPublicKeyInfo.
    let spki = key.subject_public_key_info();
    if !cert_der.windows(spki.len()).any(|w| w == spki.as_slice()) {
        return Err(Error::KeyMismatch {
            cert: cert_path.to_path_buf(),
            key: key_path.to_path_buf(),
        });
    }
    Ok(Identity {
        device_id: DeviceId::from_cert_der(&cert_der),
        cert_pem,
        key_pem,
        cert_der,
    })
}

/// The DER bytes of the first certificate in a PEM text.
fn pem_certificate(pem: &str) -> Result<Vec<u8>, &'static str> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let start = pem.find(BEGIN).ok_or("no BEGIN CERTIFICATE line")? + BEGIN.len();
    let len = pem[start..].find(END).ok_or("no END CERTIFICATE line")?;
    let body: Vec<u8> = pem[start..start + len]
        .bytes()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let der = data_encoding::BASE64
        .decode(&body)
        .map_err(|_| "the base64 body is damaged")?;
    // A DER certificate is a SEQUENCE; anything else is not one.
    if der.first() != Some(&0x30) {
        return Err("the body is not a DER certificate");
    }
    Ok(der)
}

fn create(dir: &Path, cert_path: &Path, key_path: &Path) -> Result<Identity, Error> {
    create_dir(dir)?;
    let generate = |err: rcgen::Error| Error::Generate {
        dir: dir.to_path_buf(),
        reason: err.to_string(),
    };
    let key = KeyPair::generate().map_err(generate)?;
    let mut params = CertificateParams::new(vec!["tandem".to_owned()]).map_err(generate)?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "tandem");
    params.distinguished_name = name;
    let cert = params.self_signed(&key).map_err(generate)?;

    let identity = Identity {
        device_id: DeviceId::from_cert_der(cert.der()),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        cert_der: cert.der().to_vec(),
    };
    // Both temp files are complete before either is renamed, and the cert
    // goes last, so a crash can leave a key alone but never a cert without key.
    let key_tmp = write_temp(dir, KEY_FILE, identity.key_pem.as_bytes(), 0o600)?;
    let cert_tmp = write_temp(dir, CERT_FILE, identity.cert_pem.as_bytes(), 0o644)?;
    fs::rename(&key_tmp, key_path).map_err(io_error("rename into place", key_path))?;
    fs::rename(&cert_tmp, cert_path).map_err(io_error("rename into place", cert_path))?;
    sync_dir(dir)?;
    Ok(identity)
}

fn create_dir(dir: &Path) -> Result<(), Error> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(io_error("create folder", dir))
}

/// Writes `contents` to a fresh temp file beside `name` in `dir`, created with
/// `mode` so it is never more readable than that, and syncs it.
fn write_temp(dir: &Path, name: &str, contents: &[u8], mode: u32) -> Result<PathBuf, Error> {
    let path = dir.join(format!(".{name}.tmp"));
    // A leftover from a crash during an earlier first start; it was never in use.
    match fs::remove_file(&path) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(io_error("remove stale", &path)(err)),
    }
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode; // Windows has no mode bits; the home folder's ACL protects the key.
    let mut file = options.open(&path).map_err(io_error("create", &path))?;
    file.write_all(contents).map_err(io_error("write", &path))?;
    file.sync_all().map_err(io_error("sync", &path))?;
    Ok(path)
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> Result<(), Error> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error("sync folder", dir))
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> Result<(), Error> {
    Ok(())
}

/// Sets the key file to 0600 if group or others may read it; true if it did.
#[cfg(unix)]
fn restrict_key_mode(key_path: &Path) -> Result<bool, Error> {
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(key_path)
        .map_err(io_error("look at", key_path))?
        .permissions()
        .mode();
    if mode & 0o077 == 0 {
        return Ok(false);
    }
    fs::set_permissions(key_path, fs::Permissions::from_mode(0o600))
        .map_err(io_error("set owner-only permissions on", key_path))?;
    Ok(true)
}

#[cfg(not(unix))]
fn restrict_key_mode(_key_path: &Path) -> Result<bool, Error> {
    Ok(false)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    #[cfg(unix)]
    use std::os::unix::fs::PermissionsExt;

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    proptest! {
        #[test]
        fn the_short_name_is_the_first_group_of_the_id(bytes in proptest::array::uniform32(any::<u8>())) {
            let id = DeviceId(bytes);
            let mut shown = id.to_string();
            shown.truncate(SHOWN_GROUP);
            prop_assert_eq!(short_name(id.short().0), shown);
        }
    }

    #[test]
    #[cfg(unix)]
    fn identity_is_stable_across_starts() {
        let home = tempfile::tempdir().unwrap();
        let dir = home.path().join("identity");
        let (first, opened) = Identity::open(&dir).unwrap();
        assert_eq!(
            opened,
            Opened {
                created: true,
                key_mode_fixed: false
            }
        );
        let (second, opened) = Identity::open(&dir).unwrap();
        assert_eq!(opened, Opened::default());
        assert_eq!(first.device_id, second.device_id);
        assert_eq!(first.cert_der, second.cert_der);
        assert_eq!(first.key_pem, second.key_pem);
        assert_eq!(first.device_id, DeviceId::from_cert_der(&second.cert_der));
        assert_eq!(mode(&dir.join(KEY_FILE)), 0o600);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(CERT_FILE)) & 0o600, 0o600);
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "temp files left behind: {names:?}");
        assert!(
            !format!("{first:?}").contains("PRIVATE"),
            "Debug must hide the key"
        );
    }

    #[test]
    #[cfg(unix)]
    fn readable_key_is_made_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let first = Identity::load_or_create(dir.path()).unwrap();
        let key = dir.path().join(KEY_FILE);
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        let (second, opened) = Identity::open(dir.path()).unwrap();
        assert!(opened.key_mode_fixed);
        assert_eq!(mode(&key), 0o600);
        assert_eq!(first.device_id, second.device_id);
    }

    #[test]
    fn a_missing_file_is_an_error_not_a_new_identity() {
        for (gone, left) in [(KEY_FILE, CERT_FILE), (CERT_FILE, KEY_FILE)] {
            let dir = tempfile::tempdir().unwrap();
            Identity::load_or_create(dir.path()).unwrap();
            fs::remove_file(dir.path().join(gone)).unwrap();
            let err = Identity::load_or_create(dir.path()).unwrap_err();
            let text = err.to_string();
            assert!(matches!(err, Error::Missing { .. }), "{err:?}");
            assert!(
                text.contains(&dir.path().join(gone).display().to_string()),
                "{text}"
            );
            assert!(
                text.contains(&dir.path().join(left).display().to_string()),
                "{text}"
            );
            assert!(!dir.path().join(gone).exists(), "must not regenerate");
        }
    }

    #[test]
    fn damaged_files_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        Identity::load_or_create(dir.path()).unwrap();
        let cert = dir.path().join(CERT_FILE);
        let good_cert = fs::read_to_string(&cert).unwrap();
        fs::write(&cert, "hello").unwrap();
        let err = Identity::load_or_create(dir.path()).unwrap_err();
        assert!(
            matches!(err, Error::BadCert { ref path, .. } if *path == cert),
            "{err:?}"
        );
        fs::write(&cert, good_cert.replace('M', "!")).unwrap();
        assert!(matches!(
            Identity::load_or_create(dir.path()),
            Err(Error::BadCert { .. })
        ));
        fs::write(&cert, &good_cert).unwrap();

        let key = dir.path().join(KEY_FILE);
        fs::write(
            &key,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let err = Identity::load_or_create(dir.path()).unwrap_err();
        assert!(
            matches!(err, Error::BadKey { ref path, .. } if *path == key),
            "{err:?}"
        );
        assert!(err.to_string().contains(&key.display().to_string()));

        // A valid key of another identity.
        let other = tempfile::tempdir().unwrap();
        Identity::load_or_create(other.path()).unwrap();
        fs::copy(other.path().join(KEY_FILE), &key).unwrap();
        let err = Identity::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, Error::KeyMismatch { .. }), "{err:?}");
    }

    #[test]
    fn two_devices_get_different_ids() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = Identity::load_or_create(a.path()).unwrap().device_id;
        let b = Identity::load_or_create(b.path()).unwrap().device_id;
        assert_ne!(a, b);
    }

    #[test]
    fn display_is_eight_groups_of_seven() {
        let id = DeviceId::from_cert_der(b"some certificate");
        let shown = id.to_string();
        let groups: Vec<&str> = shown.split('-').collect();
        assert_eq!(groups.len(), 8, "{shown}");
        assert!(groups.iter().all(|g| g.len() == 7), "{shown}");
        assert!(
            shown.bytes().all(|c| c == b'-' || ALPHABET.contains(&c)),
            "{shown}"
        );
        assert_eq!(id.short_string(), groups[0]);
        assert_eq!(shown.parse::<DeviceId>().unwrap(), id);
        assert_eq!(format!("{id:?}"), format!("DeviceId({shown})"));
    }

    #[test]
    fn short_id_is_the_first_eight_bytes() {
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&0x0102_0304_0506_0708u64.to_be_bytes());
        bytes[8] = 0xff;
        let id = DeviceId::from_bytes(bytes);
        assert_eq!(id.short(), ShortId(0x0102_0304_0506_0708));
        assert_eq!(id.as_bytes(), &bytes);
    }

    #[test]
    fn luhn_matches_a_hand_computed_value() {
        // Values from the right: B=1 doubled 2, A=0, then C=2 doubled 4 -> sum 6,
        // check value (32 - 6) % 32 = 26, which is '2'.
        assert_eq!(luhn32_check(b"CAB"), Some(b'2'));
        assert_eq!(luhn32_check(b""), Some(b'A'));
        assert_eq!(luhn32_check(b"a"), None);
        // 'Z' = 25 doubled is 50 = 1*32 + 18 -> 19; check (32 - 19) = 13, 'N'.
        assert_eq!(luhn32_check(b"Z"), Some(b'N'));
    }

    #[test]
    fn parse_accepts_lowercase_spaces_and_no_dashes() {
        let id = DeviceId::from_cert_der(b"cert");
        let shown = id.to_string();
        let bare: String = shown.chars().filter(|&c| c != '-').collect();
        for input in [
            shown.to_lowercase(),
            bare.clone(),
            bare.to_lowercase(),
            format!("  {}  ", shown.replace('-', " ")),
        ] {
            assert_eq!(input.parse::<DeviceId>().unwrap(), id, "{input}");
        }
    }

    #[test]
    fn parse_errors_say_what_is_wrong() {
        let shown = DeviceId::from_cert_der(b"cert").to_string();
        let err = shown[..shown.len() - 1].parse::<DeviceId>().unwrap_err();
        assert!(
            matches!(err, ParseDeviceIdError::Length { len: 55, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("not 56"));

        let err = format!("{shown}A").parse::<DeviceId>().unwrap_err();
        assert!(
            matches!(err, ParseDeviceIdError::Length { len: 57, .. }),
            "{err:?}"
        );

        let err = shown
            .replacen(|c: char| c.is_ascii_alphabetic(), "1", 1)
            .parse::<DeviceId>();
        let err = err.unwrap_err();
        assert!(
            matches!(err, ParseDeviceIdError::BadChar { found: '1', .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("tandemctl id"));

        assert!(matches!(
            "".parse::<DeviceId>(),
            Err(ParseDeviceIdError::Length { len: 0, .. })
        ));
    }

    #[test]
    fn a_typo_names_its_group() {
        let shown = DeviceId::from_cert_der(b"cert").to_string();
        // Position 17 of the shown form is in dash group 3 (check group 2).
        let mut typo = shown.clone().into_bytes();
        typo[17] = if typo[17] == b'A' { b'B' } else { b'A' };
        let err = String::from_utf8(typo)
            .unwrap()
            .parse::<DeviceId>()
            .unwrap_err();
        assert!(
            matches!(err, ParseDeviceIdError::Check { shown_group: 4, .. }),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains("group 4") && text.contains("group 3 or 4"),
            "{text}"
        );
        assert!(text.contains("copy it again from `tandemctl id`"), "{text}");
    }

    #[test]
    fn nonzero_padding_bits_are_refused() {
        // Build a 52-char body whose last character leaves its unused bits set,
        // with correct check characters, so only the data check can catch it.
        let shown = DeviceId::from_bytes([0; 32]).to_string();
        let mut data: Vec<u8> = shown.bytes().filter(|&c| c != b'-').collect();
        data.retain({
            let mut i = 0;
            move |_| {
                i += 1;
                i % 14 != 0
            }
        });
        data[DATA_CHARS - 1] = b'B';
        let mut input = Vec::new();
        for body in data.chunks_exact(CHECK_GROUP) {
            input.extend_from_slice(body);
            input.push(luhn32_check(body).unwrap());
        }
        let err = String::from_utf8(input)
            .unwrap()
            .parse::<DeviceId>()
            .unwrap_err();
        assert!(matches!(err, ParseDeviceIdError::Data { .. }), "{err:?}");
    }

    proptest! {
        #[test]
        fn display_parse_round_trips(bytes: [u8; 32]) {
            let id = DeviceId::from_bytes(bytes);
            prop_assert_eq!(id.to_string().parse::<DeviceId>().unwrap(), id);
            prop_assert_eq!(id.to_string().to_lowercase().parse::<DeviceId>().unwrap(), id);
        }

        #[test]
        fn any_single_substitution_is_caught(bytes: [u8; 32], at in 0usize..ID_CHARS, with in 0usize..32) {
            let id = DeviceId::from_bytes(bytes);
            let mut chars = id.chars();
            prop_assume!(chars[at] != ALPHABET[with]);
            chars[at] = ALPHABET[with];
            let typed = String::from_utf8(chars.to_vec()).unwrap();
            prop_assert!(typed.parse::<DeviceId>().is_err(), "{} accepted", typed);
        }

        #[test]
        fn parse_never_panics(input in "\\PC{0,80}") {
            let _ = input.parse::<DeviceId>();
        }
    }
}
