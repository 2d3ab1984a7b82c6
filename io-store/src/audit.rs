//! The append-only audit log: every row carries the hash of the row before
//! it, so editing, deleting, inserting or reordering rows anywhere breaks
//! the chain from that row on, and a verifier names the first bad row.
//!
//! A row's hash covers its sequence number, time, kind, body and the
//! previous hash, each length-prefixed, under a domain tag. The body is the
//! public part of what happened (votes with their signatures, presignature
//! ids, partial signatures, txids): never a secret, since the log is meant
//! to be read by auditors.
//!
//! A chain verifies from its first row to its last, so on its own it cannot
//! tell that rows were cut off its end (or that the end was cut off and
//! re-grown with other rows). The [`AuditAnchor`] closes that gap: the head
//! is published outside the database (etcd, see `coord`), and
//! [`verify_against`] checks that the chain still reaches the anchored row
//! with the anchored hash.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const DOMAIN: &[u8] = b"mpc-custody/audit/v1";

/// The hash before the first row.
pub const GENESIS: [u8; 32] = [0; 32];

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRow {
    /// 0, 1, 2, ... with no gaps.
    pub seq: u64,
    /// Node clock, milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub kind: String,
    pub body: Vec<u8>,
    pub prev_hash: [u8; 32],
    pub hash: [u8; 32],
}

/// Why a chain does not verify, naming the first row at fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    #[error("audit row {seq}: expected sequence number {expected} (a row is missing or out of order)")]
    Gap { seq: u64, expected: u64 },
    #[error(
        "audit row {seq}: its previous-hash does not match row {prev}'s hash (a row before it was removed or replaced)"
    )]
    Unlinked { seq: u64, prev: u64 },
    #[error("audit row {seq}: its contents do not match its hash (the row was altered)")]
    Altered { seq: u64 },
    #[error(
        "the audit log holds {rows} rows but the published anchor names row {} (hash {}): its tail was \
         truncated (rows from {rows} on are missing)",
        anchor.seq,
        hex::encode(anchor.hash)
    )]
    TruncatedTail { anchor: AuditAnchor, rows: u64 },
    #[error(
        "audit row {} has hash {} but the published anchor names it with hash {}: the tail up to that row \
         was rewritten",
        anchor.seq,
        hex::encode(found),
        hex::encode(anchor.hash)
    )]
    RewrittenTail { anchor: AuditAnchor, found: [u8; 32] },
}

impl ChainError {
    /// The sequence number of the first bad row.
    pub fn first_bad_row(&self) -> u64 {
        match self {
            ChainError::Gap { seq, .. } | ChainError::Unlinked { seq, .. } | ChainError::Altered { seq } => *seq,
            ChainError::TruncatedTail { rows, .. } => *rows,
            ChainError::RewrittenTail { anchor, .. } => anchor.seq,
        }
    }
}

fn row_hash(seq: u64, at_ms: u64, kind: &str, body: &[u8], prev_hash: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [DOMAIN, &seq.to_be_bytes(), &at_ms.to_be_bytes(), kind.as_bytes(), body, prev_hash] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.finalize().into()
}

/// The head of a chain: what the next row links to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainHead {
    pub next_seq: u64,
    pub last_hash: [u8; 32],
}

impl Default for ChainHead {
    fn default() -> Self {
        ChainHead { next_seq: 0, last_hash: GENESIS }
    }
}

impl ChainHead {
    /// The anchor for this head: its last row. `None` for an empty chain,
    /// which there is nothing to anchor.
    pub fn anchor(&self) -> Option<AuditAnchor> {
        let seq = self.next_seq.checked_sub(1)?;
        Some(AuditAnchor { seq, hash: self.last_hash })
    }

    /// The head after `last` (as read back from the database at start-up).
    pub fn after(last: &AuditRow) -> ChainHead {
        ChainHead { next_seq: last.seq + 1, last_hash: last.hash }
    }

    /// Makes the next row and advances the head.
    pub fn append(&mut self, at_ms: u64, kind: &str, body: Vec<u8>) -> AuditRow {
        let prev_hash = self.last_hash;
        let hash = row_hash(self.next_seq, at_ms, kind, &body, &prev_hash);
        let row = AuditRow { seq: self.next_seq, at_ms, kind: kind.to_string(), body, prev_hash, hash };
        *self = ChainHead::after(&row);
        row
    }
}

/// A chain's head as published outside the database: the sequence number of
/// a row and its hash. Anchors only move forward (a higher `seq`), so a
/// database whose chain no longer reaches the anchored row, or reaches it
/// with another hash, lost or rewrote its tail after the anchor was taken.
///
/// Its text form, `<seq> <hash hex>`, is what etcd stores, readable with
/// `etcdctl get`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditAnchor {
    /// The anchored row's sequence number.
    pub seq: u64,
    /// That row's hash.
    pub hash: [u8; 32],
}

impl std::fmt::Display for AuditAnchor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.seq, hex::encode(self.hash))
    }
}

impl std::str::FromStr for AuditAnchor {
    type Err = String;

    fn from_str(text: &str) -> Result<AuditAnchor, String> {
        let bad = || format!("expected \"<sequence> <64 hex digits>\", found {text:?}");
        let (seq, hash) = text.trim().split_once(' ').ok_or_else(bad)?;
        let seq = seq.parse().map_err(|_| bad())?;
        let hash = hex::decode(hash).ok().and_then(|h| <[u8; 32]>::try_from(h).ok()).ok_or_else(bad)?;
        Ok(AuditAnchor { seq, hash })
    }
}

/// Verifies rows in sequence order from the start of the log; returns the
/// head on success, or the first bad row.
pub fn verify<'a>(rows: impl IntoIterator<Item = &'a AuditRow>) -> Result<ChainHead, ChainError> {
    let mut head = ChainHead::default();
    for row in rows {
        if row.seq != head.next_seq {
            return Err(ChainError::Gap { seq: row.seq, expected: head.next_seq });
        }
        if row.prev_hash != head.last_hash {
            return Err(ChainError::Unlinked { seq: row.seq, prev: row.seq.saturating_sub(1) });
        }
        if row.hash != row_hash(row.seq, row.at_ms, &row.kind, &row.body, &row.prev_hash) {
            return Err(ChainError::Altered { seq: row.seq });
        }
        head = ChainHead::after(row);
    }
    Ok(head)
}

/// [`verify`], and then that the chain still holds the anchored row with
/// the anchored hash: a chain that verifies on its own but ends before the
/// anchor was truncated, and one whose row at the anchor differs was
/// rewritten from some row up to there on. Rows after the anchor are
/// normal (the anchor lags the head).
pub fn verify_against<'a>(
    rows: impl IntoIterator<Item = &'a AuditRow>,
    anchor: &AuditAnchor,
) -> Result<ChainHead, ChainError> {
    let mut at_anchor = None;
    let head = verify(rows.into_iter().inspect(|row| {
        if row.seq == anchor.seq {
            at_anchor = Some(row.hash);
        }
    }))?;
    match at_anchor {
        None => Err(ChainError::TruncatedTail { anchor: *anchor, rows: head.next_seq }),
        Some(found) if found != anchor.hash => Err(ChainError::RewrittenTail { anchor: *anchor, found }),
        Some(_) => Ok(head),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn chain(n: usize) -> Vec<AuditRow> {
        let mut head = ChainHead::default();
        (0..n).map(|i| head.append(1_000 + i as u64, "vote", format!("body {i}").into_bytes())).collect()
    }

    #[test]
    fn an_intact_chain_verifies_and_resumes_from_its_last_row() {
        let rows = chain(5);
        let head = verify(&rows).unwrap();
        assert_eq!(head, ChainHead::after(&rows[4]));
        let mut resumed = ChainHead::after(&rows[4]);
        let mut all = rows.clone();
        all.push(resumed.append(9_999, "tx_signed", b"txid".to_vec()));
        assert!(verify(&all).is_ok());
    }

    #[test]
    fn each_kind_of_tampering_names_the_first_bad_row() {
        let rows = chain(6);
        let mut altered = rows.clone();
        altered[3].body = b"approve".to_vec();
        assert_eq!(verify(&altered), Err(ChainError::Altered { seq: 3 }));
        // Re-hashing the altered row does not help: the next row no longer links.
        altered[3].hash = row_hash(3, altered[3].at_ms, "vote", b"approve", &altered[3].prev_hash);
        assert_eq!(verify(&altered), Err(ChainError::Unlinked { seq: 4, prev: 3 }));

        let mut deleted = rows.clone();
        deleted.remove(2);
        assert_eq!(verify(&deleted), Err(ChainError::Gap { seq: 3, expected: 2 }));

        let mut swapped = rows.clone();
        swapped.swap(1, 2);
        assert_eq!(verify(&swapped).unwrap_err().first_bad_row(), 2);

        let mut truncated_front = rows.clone();
        truncated_front.remove(0);
        assert_eq!(verify(&truncated_front).unwrap_err().first_bad_row(), 1);

        let mut retimed = rows;
        retimed[5].at_ms += 1;
        assert_eq!(verify(&retimed), Err(ChainError::Altered { seq: 5 }));
    }

    #[test]
    fn a_cut_or_regrown_tail_is_caught_against_the_anchor() {
        let rows = chain(6);
        let anchor = ChainHead::after(&rows[4]).anchor().unwrap();
        assert_eq!(anchor, AuditAnchor { seq: 4, hash: rows[4].hash });
        assert_eq!(verify_against(&rows, &anchor), Ok(ChainHead::after(&rows[5])), "rows past the anchor are fine");
        assert_eq!(verify_against(&rows[..5], &anchor), Ok(ChainHead::after(&rows[4])));

        // Cut after row 2: the chain alone still verifies.
        let cut = &rows[..3];
        assert!(verify(cut).is_ok());
        let err = verify_against(cut, &anchor).unwrap_err();
        assert_eq!(err, ChainError::TruncatedTail { anchor, rows: 3 });
        assert_eq!(err.first_bad_row(), 3);
        assert!(err.to_string().contains(&hex::encode(anchor.hash)), "{err}");

        // Cut after row 2 and grown again to past the anchor: verifies alone.
        let mut regrown = cut.to_vec();
        let mut head = ChainHead::after(&rows[2]);
        for i in 0..3 {
            regrown.push(head.append(5_000 + i, "vote", b"forged".to_vec()));
        }
        assert!(verify(&regrown).is_ok());
        let err = verify_against(&regrown, &anchor).unwrap_err();
        assert_eq!(err, ChainError::RewrittenTail { anchor, found: regrown[4].hash });
        assert_eq!(err.first_bad_row(), 4);

        // A broken link is still reported as such, before the anchor.
        let mut altered = rows.clone();
        altered[1].body = b"x".to_vec();
        assert_eq!(verify_against(&altered, &anchor), Err(ChainError::Altered { seq: 1 }));
        assert_eq!(ChainHead::default().anchor(), None);
    }

    #[test]
    fn anchors_read_back_from_their_text() {
        let anchor = AuditAnchor { seq: 41, hash: [0xab; 32] };
        let text = anchor.to_string();
        assert_eq!(text, format!("41 {}", "ab".repeat(32)));
        assert_eq!(text.parse::<AuditAnchor>(), Ok(anchor));
        for bad in ["", "41", "x ab", "41 abcd", &format!("-1 {}", "ab".repeat(32))] {
            assert!(bad.parse::<AuditAnchor>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn kind_and_body_cannot_trade_bytes() {
        assert_ne!(row_hash(0, 0, "ab", b"c", &GENESIS), row_hash(0, 0, "a", b"bc", &GENESIS));
    }

    proptest! {
        #[test]
        fn any_single_byte_change_is_caught_at_its_row(n in 1usize..12, pick in any::<prop::sample::Index>(), byte in any::<prop::sample::Index>(), flip in 1u8..=255) {
            let mut rows = chain(n);
            let i = pick.index(n);
            let body = &mut rows[i].body;
            let b = byte.index(body.len());
            body[b] ^= flip;
            let err = verify(&rows).unwrap_err();
            prop_assert_eq!(err.first_bad_row(), i as u64);
        }
    }
}
