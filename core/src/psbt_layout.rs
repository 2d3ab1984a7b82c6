//! What a version 0 PSBT may hold beyond what the `bitcoin` crate's parser
//! checks. The cluster signs only what Bitcoin Core's decoder would accept
//! (`node/tests/psbt_oracle.rs` holds it to that against a real node), so
//! what the parser lets through and Core does not is refused here, each
//! with the rule it breaks:
//!
//! - bytes after the last map, and a `PSBT_GLOBAL_VERSION` other than 0;
//! - key types and proprietary subtypes that are not canonical compact
//!   sizes, are cut short, or exceed Core's limit: Core reads both as
//!   compact sizes, the parser reads one byte and keeps the rest as
//!   unknown key data;
//! - a proprietary key (0xfc) whose identifier is cut short (the parser
//!   refuses this too; it is read here to reach the subtype);
//! - two `PSBT_GLOBAL_XPUB` entries with the same public key and chain
//!   code: Core takes them for one extended key and refuses the second as
//!   a duplicate, where the parser tells them apart by their version
//!   bytes, depth, parent fingerprint or child number.
//!
//! BIP 370's version 2 fields are refused in a version 0 PSBT too, though
//! Bitcoin Core before version 2 support reads them as unknown fields: a
//! signer must not approve a transaction that a version 2 reader would take
//! to be another one.

/// Global key types of BIP 370 (version 2 only), and the version key.
const GLOBAL_V2_ONLY: [(u64, &str); 5] = [
    (0x02, "PSBT_GLOBAL_TX_VERSION"),
    (0x03, "PSBT_GLOBAL_FALLBACK_LOCKTIME"),
    (0x04, "PSBT_GLOBAL_INPUT_COUNT"),
    (0x05, "PSBT_GLOBAL_OUTPUT_COUNT"),
    (0x06, "PSBT_GLOBAL_TX_MODIFIABLE"),
];
const GLOBAL_VERSION: u64 = 0xfb;
const GLOBAL_XPUB: u64 = 0x01;
/// Where an xpub key's chain code and public key sit: after the type byte,
/// four version bytes, the depth, the parent fingerprint and the child
/// number (BIP 32's 78-byte serialization).
const XPUB_CHAIN_CODE_AND_KEY: std::ops::Range<usize> = 1 + 4 + 1 + 4 + 4..1 + 78;
/// Proprietary keys: a length-prefixed identifier, a compact size subtype,
/// then key data, in every map.
const PROPRIETARY: u64 = 0xfc;
/// The largest compact size Bitcoin Core reads (`MAX_SIZE` in its
/// `serialize.h`); above it `ReadCompactSize` throws.
const MAX_COMPACT_SIZE: u64 = 0x0200_0000;
const INPUT_V2_ONLY: [(u64, &str); 5] = [
    (0x0e, "PSBT_IN_PREVIOUS_TXID"),
    (0x0f, "PSBT_IN_OUTPUT_INDEX"),
    (0x10, "PSBT_IN_SEQUENCE"),
    (0x11, "PSBT_IN_REQUIRED_TIME_LOCKTIME"),
    (0x12, "PSBT_IN_REQUIRED_HEIGHT_LOCKTIME"),
];
const OUTPUT_V2_ONLY: [(u64, &str); 2] = [(0x03, "PSBT_OUT_AMOUNT"), (0x04, "PSBT_OUT_SCRIPT")];

/// Checks the maps of a PSBT the `bitcoin` crate parsed, with `inputs` and
/// `outputs` as its unsigned transaction has them.
pub(crate) fn check_version_0(bytes: &[u8], inputs: usize, outputs: usize) -> Result<(), String> {
    let mut r = Reader { bytes, pos: 5 };
    let mut xpubs = Vec::new();
    for (key_type, key, value) in r.map("the global map")? {
        if key_type == GLOBAL_XPUB {
            // The parser has checked the size; a shorter key is refused there.
            let same_key = key.get(XPUB_CHAIN_CODE_AND_KEY);
            if same_key.is_some() && xpubs.contains(&same_key) {
                return Err("two PSBT_GLOBAL_XPUB entries in the global map with the same public key and chain \
                            code: Bitcoin Core takes them for one"
                    .into());
            }
            xpubs.push(same_key);
        }
        if key_type == GLOBAL_VERSION {
            let version = value.get(..4).map(|v| u32::from_le_bytes(v.try_into().expect("four bytes")));
            if version != Some(0) {
                let shown = version.map_or_else(|| "unreadable".to_string(), |v| v.to_string());
                return Err(format!(
                    "PSBT version {shown} with a version 0 unsigned transaction: only version 0 is signed"
                ));
            }
        }
        refuse_v2(key_type, &GLOBAL_V2_ONLY, "the global map")?;
    }
    for i in 0..inputs {
        let place = format!("input {i}");
        for (key_type, _, _) in r.map(&place)? {
            refuse_v2(key_type, &INPUT_V2_ONLY, &place)?;
        }
    }
    for o in 0..outputs {
        let place = format!("output {o}");
        for (key_type, _, _) in r.map(&place)? {
            refuse_v2(key_type, &OUTPUT_V2_ONLY, &place)?;
        }
    }
    match bytes.len() - r.pos {
        0 => Ok(()),
        extra => Err(format!("{extra} bytes after the last map")),
    }
}

fn refuse_v2(key_type: u64, v2_only: &[(u64, &str)], place: &str) -> Result<(), String> {
    match v2_only.iter().find(|(t, _)| *t == key_type) {
        Some((_, name)) => Err(format!("{name} in {place}: a version 2 field in a version 0 PSBT")),
        None => Ok(()),
    }
}

/// A key's type, the whole key (type included) and the value.
type MapPair<'a> = (u64, &'a [u8], &'a [u8]);

/// Reads key-value maps: each pair is a length-prefixed key (its type a
/// compact size first) and a length-prefixed value; 0x00 ends the map.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// The pairs of one map: each key's type, the whole key, the value.
    fn map(&mut self, place: &str) -> Result<Vec<MapPair<'a>>, String> {
        let mut pairs = Vec::new();
        loop {
            let key_len = self.compact(place)? as usize;
            if key_len == 0 {
                return Ok(pairs);
            }
            let key = self.take(key_len, place)?;
            let key_type = key_type(key, place)?;
            let value_len = self.compact(place)? as usize;
            let value = self.take(value_len, place)?;
            pairs.push((key_type, key, value));
        }
    }

    fn take(&mut self, n: usize, place: &str) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.bytes.len());
        let end = end.ok_or_else(|| format!("{place} ends early"))?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn compact(&mut self, place: &str) -> Result<u64, String> {
        let first = self.take(1, place)?[0];
        let width = match first {
            0xfd => 2,
            0xfe => 4,
            0xff => 8,
            small => return Ok(u64::from(small)),
        };
        let raw = self.take(width, place)?;
        let n = raw.iter().rev().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
        // The smallest value each width may carry, as Core's
        // `ReadCompactSize` requires.
        let least = match width {
            2 => 0xfd,
            4 => 0x1_0000,
            _ => 0x1_0000_0000,
        };
        if n < least {
            return Err(format!("{place}: {n} written as a non-canonical compact size"));
        }
        if n > MAX_COMPACT_SIZE {
            return Err(format!("{place}: compact size {n} is above Bitcoin Core's limit of {MAX_COMPACT_SIZE}"));
        }
        Ok(n)
    }
}

/// The type of a key, a compact size at its start; a proprietary key's
/// identifier and subtype are read too, as Core does.
fn key_type(key: &[u8], place: &str) -> Result<u64, String> {
    let mut r = Reader { bytes: key, pos: 0 };
    let key_type = r.compact(&format!("a key type in {place}"))?;
    if key_type == PROPRIETARY {
        let what = format!("a proprietary key in {place}");
        let identifier_len = r.compact(&format!("{what}: its identifier length"))? as usize;
        r.take(identifier_len, &format!("{what}: its identifier"))?;
        r.compact(&format!("{what}: its subtype"))?;
    }
    Ok(key_type)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal version 0 layout: magic, global map with one key, one
    /// input map, one output map.
    fn layout(global: &[u8], input: &[u8], output: &[u8], tail: &[u8]) -> Vec<u8> {
        let mut b = b"psbt\xff".to_vec();
        for map in [global, input, output] {
            b.extend_from_slice(map);
            b.push(0);
        }
        b.extend_from_slice(tail);
        b
    }

    #[test]
    fn version_2_fields_a_nonzero_version_and_trailing_bytes_are_named() {
        let tx_key = [1u8, 0x00, 1, 0xaa];
        assert_eq!(check_version_0(&layout(&tx_key, &[], &[], &[]), 1, 1), Ok(()));
        let version_2 = [tx_key.as_slice(), &[1, 0xfb, 4, 2, 0, 0, 0]].concat();
        assert!(check_version_0(&layout(&version_2, &[], &[], &[]), 1, 1).unwrap_err().contains("version 2"));
        let version_0 = [tx_key.as_slice(), &[1, 0xfb, 4, 0, 0, 0, 0]].concat();
        assert_eq!(check_version_0(&layout(&version_0, &[], &[], &[]), 1, 1), Ok(()));
        let sequence = [1u8, 0x10, 4, 0xff, 0xff, 0xff, 0xff];
        let e = check_version_0(&layout(&tx_key, &sequence, &[], &[]), 1, 1).unwrap_err();
        assert!(e.contains("PSBT_IN_SEQUENCE in input 0"), "{e}");
        let amount = [1u8, 0x03, 8, 0, 0, 0, 0, 0, 0, 0, 0];
        let e = check_version_0(&layout(&tx_key, &[], &amount, &[]), 1, 1).unwrap_err();
        assert!(e.contains("PSBT_OUT_AMOUNT in output 0"), "{e}");
        let e = check_version_0(&layout(&tx_key, &[], &[], &[0, 7]), 1, 1).unwrap_err();
        assert_eq!(e, "2 bytes after the last map");
        let e = check_version_0(&layout(&tx_key, &[5, 1], &[], &[]), 1, 1).unwrap_err();
        assert!(e.contains("ends early"), "{e}");
    }

    /// Core reads key types and proprietary subtypes as compact sizes; the
    /// `bitcoin` crate reads one byte and keeps the rest as key data.
    #[test]
    fn key_types_and_proprietary_subtypes_are_canonical_compact_sizes_within_cores_limit() {
        let tx_key = [1u8, 0x00, 1, 0xaa];
        let check = |input: &[u8]| check_version_0(&layout(&tx_key, input, &[], &[]), 1, 1);
        assert_eq!(check(&[3, 0xfd, 0x00, 0x01, 0]), Ok(()), "type 0x100, canonical, unknown");
        let e = check(&[3, 0xfd, 0x05, 0x00, 0]).unwrap_err();
        assert_eq!(e, "a key type in input 0: 5 written as a non-canonical compact size");
        let e = check(&[1, 0xfd, 0]).unwrap_err();
        assert_eq!(e, "a key type in input 0 ends early");
        let e = check(&[5, 0xfe, 0, 0, 0, 0x03, 0]).unwrap_err();
        assert!(e.contains("compact size 50331648 is above Bitcoin Core's limit"), "{e}");
        assert_eq!(check(&[6, 0xfc, 3, b'a', b'b', b'c', 0x01, 1, 7]), Ok(()), "a proprietary key");
        let e = check(&[1, 0xfc, 1, 7]).unwrap_err();
        assert_eq!(e, "a proprietary key in input 0: its identifier length ends early");
        let e = check(&[3, 0xfc, 3, b'a', 0]).unwrap_err();
        assert_eq!(e, "a proprietary key in input 0: its identifier ends early");
        let e = check(&[8, 0xfc, 3, b'a', b'b', b'c', 0xfd, 0x01, 0x00, 0]).unwrap_err();
        assert_eq!(e, "a proprietary key in input 0: its subtype: 1 written as a non-canonical compact size");
        let e = check(&[1, 0x07, 0xfd, 0x01, 0x00, 0xaa]).unwrap_err();
        assert_eq!(e, "input 0: 1 written as a non-canonical compact size", "a value length");
    }

    /// Bitcoin Core compares global xpubs by public key and chain code
    /// only; the `bitcoin` crate also by version bytes, depth, parent
    /// fingerprint and child number.
    #[test]
    fn two_global_xpubs_with_one_key_and_chain_code_are_refused() {
        let xpub = |version: [u8; 4], depth: u8, chain_code: u8| {
            let mut pair = vec![79, 0x01];
            pair.extend_from_slice(&version);
            pair.extend_from_slice(&[depth, 0, 0, 0, 0, 0, 0, 0, 0]);
            pair.extend_from_slice(&[chain_code; 32]);
            pair.extend_from_slice(&[0x02; 33]);
            pair.extend_from_slice(&[4, 0xd3, 0x4d, 0xb3, 0x3f]);
            pair
        };
        let (main, test) = ([0x04, 0x88, 0xb2, 0x1e], [0x04, 0x35, 0x87, 0xcf]);
        let global = |pairs: &[Vec<u8>]| [&[1u8, 0x00, 1, 0xaa][..], &pairs.concat()].concat();
        let check = |pairs: &[Vec<u8>]| check_version_0(&layout(&global(pairs), &[], &[], &[]), 1, 1);
        assert_eq!(check(&[xpub(main, 0, 1), xpub(main, 0, 2)]), Ok(()), "chain codes differ");
        for other in [xpub(test, 0, 1), xpub(main, 1, 1)] {
            let e = check(&[xpub(main, 0, 1), other]).unwrap_err();
            assert!(e.contains("two PSBT_GLOBAL_XPUB entries"), "{e}");
        }
    }
}
