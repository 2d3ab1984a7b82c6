//! Encryption at rest for key shares, aux info and presignature shares.
//!
//! Each secret column holds `version || nonce || ciphertext` sealed with
//! XChaCha20-Poly1305 under the node's master key. The associated data is
//! the row's identity (table and primary key), so a ciphertext copied into
//! another row, or another table, fails to open: an attacker with write
//! access to the database cannot swap one presignature share for another.
//! Nonces are random (192 bits, safe to draw at random for any number of
//! rows under one key).
//!
//! The master key comes from a file or an environment variable holding 64
//! hex digits. Errors name where the key was looked for and what is wrong
//! with it, never any of its bytes; decryption errors name the row, never
//! the plaintext or the key.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand_core::{OsRng, RngCore};
use std::path::Path;
use zeroize::{Zeroize, Zeroizing};

/// Format byte of a sealed value; a new format gets a new byte.
const VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Domain of the associated data, so these ciphertexts mean nothing to any
/// other use of the same key.
const DOMAIN: &str = "mpc-custody/sealed/v1";
/// Separates [`MasterKey::derive`] from every other use of the key.
const DERIVE_DOMAIN: &str = "mpc-custody/derived-secret/v1";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("no master key: {0}")]
    MissingKey(String),
    #[error("malformed master key from {source_name}: {reason}")]
    MalformedKey { source_name: String, reason: String },
    #[error("master key file {path} is readable by others (mode {mode:o}); chmod 600 it")]
    ExposedKeyFile { path: String, mode: u32 },
    #[error("wrong master key: this database was created under another master key")]
    WrongKey,
    #[error("sealed value of {row} is malformed: {reason}")]
    Malformed { row: String, reason: String },
    #[error(
        "sealed value of {row} does not open under this master key (wrong key, corrupted ciphertext, \
         or a value moved from another row)"
    )]
    Open { row: String },
}

/// Where a sealed value lives: its table and primary key. Bound into the
/// ciphertext as associated data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowId<'a> {
    pub table: &'a str,
    pub key: &'a str,
}

impl std::fmt::Display for RowId<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}[{}]", self.table, self.key)
    }
}

impl RowId<'_> {
    fn associated_data(&self) -> Vec<u8> {
        // Length-prefixed parts: ("a", "bc") and ("ab", "c") differ.
        let mut aad = Vec::with_capacity(DOMAIN.len() + self.table.len() + self.key.len() + 16);
        for part in [DOMAIN, self.table, self.key] {
            aad.extend_from_slice(&(part.len() as u64).to_be_bytes());
            aad.extend_from_slice(part.as_bytes());
        }
        aad
    }
}

/// The node's master key. Its `Debug` shows nothing of it, and it is wiped
/// from memory when dropped.
#[derive(Clone)]
pub struct MasterKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    /// Parses 64 hex digits (surrounding whitespace ignored). `source_name`
    /// says where they came from, for the error.
    pub fn from_hex(text: &str, source_name: &str) -> Result<MasterKey, SealError> {
        let malformed = |reason: String| SealError::MalformedKey { source_name: source_name.to_string(), reason };
        let text = text.trim();
        if text.len() != 64 {
            return Err(malformed(format!("expected 64 hex digits (32 bytes), found {} characters", text.len())));
        }
        let mut bytes = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text, &mut bytes[..]).map_err(|_| malformed("not hexadecimal".into()))?;
        if bytes.iter().all(|b| *b == 0) {
            return Err(malformed("all zero".into()));
        }
        Ok(MasterKey(bytes))
    }

    /// Reads the key from a file holding 64 hex digits. A file that its
    /// group or others may read is refused: the key unseals every secret
    /// of the node, so a loose mode is a leak waiting to happen, not a
    /// style matter.
    pub fn from_file(path: &Path) -> Result<MasterKey, SealError> {
        use std::os::unix::fs::PermissionsExt;
        let name = format!("file {}", path.display());
        let meta = std::fs::metadata(path).map_err(|e| SealError::MissingKey(format!("{name}: {e}")))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(SealError::ExposedKeyFile { path: path.display().to_string(), mode });
        }
        let mut text = std::fs::read_to_string(path).map_err(|e| SealError::MissingKey(format!("{name}: {e}")))?;
        let key = Self::from_hex(&text, &name);
        text.zeroize();
        key
    }

    /// Reads the key from an environment variable holding 64 hex digits,
    /// then removes the variable from this process's environment, so that
    /// child processes and `/proc/self/environ` readers do not inherit it.
    /// Call it before other threads start: the environment is not
    /// synchronised.
    pub fn from_env(var: &str) -> Result<MasterKey, SealError> {
        let name = format!("environment variable {var}");
        let mut text = std::env::var(var).map_err(|_| SealError::MissingKey(format!("{name} is not set")))?;
        std::env::remove_var(var);
        let key = Self::from_hex(&text, &name);
        text.zeroize();
        key
    }

    /// A fresh random key, as 64 hex digits (for `mpc-cli` key generation
    /// and tests).
    pub fn generate_hex() -> Zeroizing<String> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(&mut bytes[..]);
        Zeroizing::new(hex::encode(&bytes[..]))
    }

    /// A 32-byte secret for `purpose`, derived from this key: one secret
    /// that survives restarts, without a second key file to keep. Knowing
    /// a derived secret tells nothing of the key or of secrets derived for
    /// other purposes (SHA-256 over a domain, the purpose and the key).
    pub fn derive(&self, purpose: &str) -> Zeroizing<[u8; 32]> {
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        for part in [DERIVE_DOMAIN.as_bytes(), purpose.as_bytes(), &self.0[..]] {
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part);
        }
        Zeroizing::new(hash.finalize().into())
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new((&*self.0).into())
    }

    /// Seals `plaintext` for the row `row`.
    pub fn seal(&self, row: RowId<'_>, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        let aad = row.associated_data();
        let ciphertext = self
            .cipher()
            .encrypt(&XNonce::from(nonce), Payload { msg: plaintext, aad: &aad })
            .expect("XChaCha20-Poly1305 encrypts any message that fits in memory");
        let mut sealed = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
        sealed.push(VERSION);
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ciphertext);
        sealed
    }

    /// Opens a value sealed for `row`; fails if it was sealed for another
    /// row, under another key, or altered.
    pub fn open(&self, row: RowId<'_>, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let malformed = |reason: &str| SealError::Malformed { row: row.to_string(), reason: reason.to_string() };
        let (&version, rest) = sealed.split_first().ok_or_else(|| malformed("empty"))?;
        if version != VERSION {
            return Err(malformed(&format!("unknown format version {version}")));
        }
        if rest.len() < NONCE_LEN + TAG_LEN {
            return Err(malformed("too short"));
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().expect("split at the nonce length");
        let aad = row.associated_data();
        self.cipher()
            .decrypt(&XNonce::from(nonce), Payload { msg: ciphertext, aad: &aad })
            .map(Zeroizing::new)
            .map_err(|_| SealError::Open { row: row.to_string() })
    }

    /// A value to store once per database: opening it at start-up tells a
    /// wrong master key apart from a corrupted row, before anything else.
    pub fn key_check(&self) -> Vec<u8> {
        self.seal(KEY_CHECK_ROW, KEY_CHECK_TEXT)
    }

    /// Whether `check` (from [`MasterKey::key_check`]) was made by this key.
    pub fn verify_key_check(&self, check: &[u8]) -> Result<(), SealError> {
        match self.open(KEY_CHECK_ROW, check) {
            Ok(text) if text.as_slice() == KEY_CHECK_TEXT => Ok(()),
            _ => Err(SealError::WrongKey),
        }
    }
}

const KEY_CHECK_ROW: RowId<'static> = RowId { table: "meta", key: "key_check" };
const KEY_CHECK_TEXT: &[u8] = b"mpc-custody master key check";

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(byte: u8) -> MasterKey {
        MasterKey::from_hex(&hex::encode([byte; 32]), "test").unwrap()
    }

    const ROW: RowId<'static> = RowId { table: "presignatures", key: "presig-1-7" };

    #[test]
    fn derived_secrets_are_stable_per_key_and_purpose_and_differ_otherwise() {
        let a = key(7).derive("quic-stateless-reset");
        assert_eq!(a, key(7).derive("quic-stateless-reset"), "the same key and purpose: the same secret");
        assert_ne!(a, key(8).derive("quic-stateless-reset"), "another key");
        assert_ne!(a, key(7).derive("quic-stateless-reset2"), "another purpose");
        assert_ne!(&a[..], &[7u8; 32][..], "never the key itself");
    }

    #[test]
    fn a_key_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("mpc-sealing-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("master.key");
        std::fs::write(&path, MasterKey::generate_hex().as_bytes()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        MasterKey::from_file(&path).expect("an owner-only key file opens");
        for mode in [0o640, 0o604] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = MasterKey::from_file(&path).unwrap_err();
            assert!(matches!(err, SealError::ExposedKeyFile { mode: m, .. } if m == mode), "{err}");
            assert!(err.to_string().contains("chmod 600"), "{err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sealed_values_open_only_in_their_own_row_under_their_own_key() {
        let k = key(7);
        let sealed = k.seal(ROW, b"share");
        assert_eq!(k.open(ROW, &sealed).unwrap().as_slice(), b"share");
        let moved = RowId { table: "presignatures", key: "presig-1-8" };
        assert_eq!(k.open(moved, &sealed), Err(SealError::Open { row: moved.to_string() }));
        let other_table = RowId { table: "key_shares", key: "presig-1-7" };
        assert!(matches!(k.open(other_table, &sealed), Err(SealError::Open { .. })));
        assert!(matches!(key(8).open(ROW, &sealed), Err(SealError::Open { .. })));
        // Two seals of one value differ (random nonces).
        assert_ne!(k.seal(ROW, b"share"), sealed);
    }

    #[test]
    fn row_identity_parts_cannot_be_shifted() {
        let k = key(1);
        let sealed = k.seal(RowId { table: "ab", key: "c" }, b"x");
        assert!(k.open(RowId { table: "a", key: "bc" }, &sealed).is_err());
    }

    #[test]
    fn malformed_values_give_clear_errors() {
        let k = key(3);
        assert!(matches!(k.open(ROW, &[]), Err(SealError::Malformed { .. })));
        assert!(
            matches!(k.open(ROW, &[9, 1, 2]), Err(SealError::Malformed { reason, .. }) if reason.contains("version"))
        );
        assert!(
            matches!(k.open(ROW, &[VERSION, 1, 2]), Err(SealError::Malformed { reason, .. }) if reason == "too short")
        );
    }

    #[test]
    fn bad_keys_are_refused_without_echoing_them() {
        let secretish = "zz".repeat(32);
        let err = MasterKey::from_hex(&secretish, "file /etc/mpc/master.key").unwrap_err();
        assert!(err.to_string().contains("not hexadecimal") && !err.to_string().contains(&secretish), "{err}");
        let err = MasterKey::from_hex("abcd", "file k").unwrap_err().to_string();
        assert!(err.contains("expected 64 hex digits") && err.contains("file k"), "{err}");
        assert!(MasterKey::from_hex(&"0".repeat(64), "env").unwrap_err().to_string().contains("all zero"));
        let err = MasterKey::from_file(Path::new("/nonexistent/master.key")).unwrap_err();
        assert!(matches!(err, SealError::MissingKey(_)), "{err}");
        let err = MasterKey::from_env("MPC_TEST_SURELY_UNSET_MASTER_KEY").unwrap_err();
        assert_eq!(
            err,
            SealError::MissingKey("environment variable MPC_TEST_SURELY_UNSET_MASTER_KEY is not set".into())
        );
        let hex = MasterKey::generate_hex();
        assert!(!format!("{:?}", MasterKey::from_hex(&hex, "generated").unwrap()).contains(hex.as_str()));
    }

    #[test]
    fn a_key_file_with_a_trailing_newline_loads() {
        let dir = std::env::temp_dir().join(format!("mpc-sealing-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("master.key");
        let hex = MasterKey::generate_hex();
        std::fs::write(&path, format!("{}\n", hex.as_str())).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let k = MasterKey::from_file(&path).unwrap();
        assert_eq!(k.open(ROW, &MasterKey::from_hex(&hex, "same").unwrap().seal(ROW, b"v")).unwrap().as_slice(), b"v");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_key_check_tells_a_wrong_key_apart() {
        let check = key(5).key_check();
        assert!(key(5).verify_key_check(&check).is_ok());
        let err = key(6).verify_key_check(&check).unwrap_err().to_string();
        assert!(err.contains("created under another master key"), "{err}");
    }

    proptest! {
        #[test]
        fn any_single_bit_flip_is_detected(plaintext in prop::collection::vec(any::<u8>(), 0..200), bit in any::<prop::sample::Index>()) {
            let k = key(9);
            let mut sealed = k.seal(ROW, &plaintext);
            let i = bit.index(sealed.len() * 8);
            sealed[i / 8] ^= 1 << (i % 8);
            prop_assert!(k.open(ROW, &sealed).is_err());
        }

        #[test]
        fn sealing_round_trips(plaintext in prop::collection::vec(any::<u8>(), 0..500)) {
            let k = key(2);
            let opened = k.open(ROW, &k.seal(ROW, &plaintext)).unwrap();
            prop_assert_eq!(opened.as_slice(), plaintext.as_slice());
        }
    }
}
