//! Identifiers used across the protocol. Each concept has its own newtype so a
//! node id can never be passed where a presignature id is expected.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A cluster member, numbered `1..=n`. The cggmp24 party index at keygen is
/// `id - 1` (DESIGN §3).
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub u16);

impl NodeId {
    /// The party index this node holds in the key generation protocol.
    pub fn keygen_index(self) -> u16 {
        self.0 - 1
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node-{}", self.0)
    }
}

/// A transaction's identity inside the cluster: the digest every vote signs
/// (see [`crate::tx::ProposedTx::digest`]). Two proposals with the same digest
/// are the same transaction; anything that differs gets another id.
#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TxId(pub [u8; 32]);

impl TxId {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
    /// Short prefix for logs and errors.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }
}

impl fmt::Debug for TxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TxId({})", self.short())
    }
}

impl fmt::Display for TxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A presignature, named by the node that initiated its generation and that
/// node's persisted sequence number. The sequence is made durable before the
/// session starts, so an id never repeats, even across crashes.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PresigId {
    pub origin: NodeId,
    pub seq: u64,
}

impl fmt::Display for PresigId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "presig-{}-{}", self.origin.0, self.seq)
    }
}

/// A distributed key generation attempt, named like [`PresigId`].
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DkgId {
    pub origin: NodeId,
    pub seq: u64,
}

impl fmt::Display for DkgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "dkg-{}-{}", self.origin.0, self.seq)
    }
}

/// One run of a cggmp24 sub-protocol. Its execution id is derived from this
/// value and the cluster id, so all members agree on it and it never repeats.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum SessionId {
    AuxInfo(DkgId),
    Keygen(DkgId),
    Presign(PresigId),
}

impl SessionId {
    /// The cggmp24 execution id for this session: domain-separated by
    /// protocol, bound to the cluster, unique because the ids are.
    pub fn execution_id(&self, cluster_id: &str) -> Vec<u8> {
        let (tag, origin, seq) = match self {
            SessionId::AuxInfo(d) => ("aux", d.origin, d.seq),
            SessionId::Keygen(d) => ("keygen", d.origin, d.seq),
            SessionId::Presign(p) => ("presign", p.origin, p.seq),
        };
        let mut eid = format!("mpc-custody/v1/{tag}/").into_bytes();
        eid.extend_from_slice(&(cluster_id.len() as u32).to_be_bytes());
        eid.extend_from_slice(cluster_id.as_bytes());
        eid.extend_from_slice(&origin.0.to_be_bytes());
        eid.extend_from_slice(&seq.to_be_bytes());
        eid
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionId::AuxInfo(d) => write!(f, "aux/{d}"),
            SessionId::Keygen(d) => write!(f, "keygen/{d}"),
            SessionId::Presign(p) => write!(f, "{p}"),
        }
    }
}

/// Milliseconds on the clock the shell passes in. The core never reads a
/// clock of its own.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Millis(pub u64);

impl Millis {
    pub fn plus(self, ms: u64) -> Millis {
        Millis(self.0.saturating_add(ms))
    }
    pub fn minus(self, ms: u64) -> Millis {
        Millis(self.0.saturating_sub(ms))
    }
    /// Day number since the epoch of the shell's clock: the daily cap's window.
    pub fn day(self) -> u64 {
        self.0 / 86_400_000
    }
}

/// Identifies an operator command so its reply can be matched to it.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId(pub u64);

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn execution_ids_differ_by_protocol_origin_sequence_and_cluster() {
        let mut seen = BTreeSet::new();
        for cluster in ["a", "b", "ab"] {
            for origin in 1..=3 {
                for seq in 0..3 {
                    let d = DkgId { origin: NodeId(origin), seq };
                    let p = PresigId { origin: NodeId(origin), seq };
                    for s in [SessionId::AuxInfo(d), SessionId::Keygen(d), SessionId::Presign(p)] {
                        assert!(seen.insert(s.execution_id(cluster)), "{s} in {cluster} repeats an execution id");
                    }
                }
            }
        }
        assert_eq!(seen.len(), 3 * 3 * 3 * 3);
    }
}
