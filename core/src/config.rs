//! Cluster and node configuration, validated once at load. Configuration that
//! could let two conflicting outcomes be certified is refused here, before a
//! node ever starts (DESIGN §3, quorums).

use crate::ids::NodeId;
use bitcoin::{Address, Network, ScriptBuf};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;
use thiserror::Error;

/// What every member of the cluster must agree on.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterConfig {
    /// Binds execution ids and vote signatures to this cluster.
    pub cluster_id: String,
    /// Members and their Ed25519 vote keys (32 bytes each).
    pub members: BTreeMap<NodeId, MemberInfo>,
    /// Signers needed for a signature (`t`).
    pub threshold: u16,
    /// Approve votes that certify an approval (`qa`).
    pub approve_quorum: u16,
    /// Reject votes that certify a rejection (`qr`).
    pub reject_quorum: u16,
    /// Byzantine members tolerated (`f`).
    pub byzantine_tolerance: u16,
    pub network: Network,
    pub pool: PoolConfig,
    pub timeouts: Timeouts,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MemberInfo {
    #[serde(with = "hex_bytes32")]
    pub vote_key: [u8; 32],
}

/// Presignature pool policy (DESIGN §3).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolConfig {
    /// Refill starts when the ready count falls below this.
    pub low_water: usize,
    /// Refill stops when ready plus generating reaches this.
    pub target: usize,
    /// Never hold more than this, ready plus generating.
    pub max: usize,
    /// Presigning sessions the coordinator runs at once.
    pub parallel_sessions: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig { low_water: 50, target: 100, max: 150, parallel_sessions: 5 }
    }
}

/// Deadlines, in milliseconds of the shell's clock.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timeouts {
    /// A transaction without a certified outcome by then is Expired.
    pub vote_ms: u64,
    /// Partial signatures not all in by then: the presignature is discarded
    /// and the input retried with another (MISSION: 30 s).
    pub signing_ms: u64,
    /// A presigning session not finished by then is abandoned.
    pub presign_ms: u64,
    /// A DKG stage not finished by then is abandoned.
    pub dkg_ms: u64,
    /// How long a signer that timed out or cheated is avoided when picking signer sets.
    pub suspect_ms: u64,
    /// Signing attempts per input before this coordinator gives up and
    /// records the transaction Failed (retries back off exponentially, up
    /// to `signing_ms` apart, so this is minutes of trying).
    pub max_signing_attempts: u32,
    /// How often a node asks one peer for transactions it may have missed.
    pub sync_ms: u64,
    /// How long after a transaction is final its votes are still exchanged
    /// in catch-up, so evidence of equivocation can meet at one node.
    pub gossip_window_ms: u64,
    /// How long a final transaction is held whole in memory (peers that
    /// missed its outcome are served from it); after that only its id and
    /// outcome stay, and the store keeps the rest. At least
    /// `gossip_window_ms`.
    pub retain_final_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            vote_ms: 600_000,
            signing_ms: 30_000,
            presign_ms: 120_000,
            dkg_ms: 900_000,
            suspect_ms: 60_000,
            max_signing_attempts: 12,
            sync_ms: 30_000,
            gossip_window_ms: 600_000,
            retain_final_ms: 3_600_000,
        }
    }
}

/// One node's own spending policy: each node judges every proposal by it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Largest total paid to non-change outputs by one transaction.
    pub max_amount_sat: u64,
    /// Addresses a payment may go to. Change back to the cluster is always allowed.
    pub allowed_destinations: Vec<String>,
    /// Highest fee rate approved, in sat per virtual byte.
    pub max_fee_rate_sat_vb: u64,
    /// Highest total this node approves per day (of the shell's clock).
    pub daily_cap_sat: u64,
}

/// Configuration of one node: the cluster's agreement plus its own policy.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeConfig {
    pub cluster: ClusterConfig,
    pub policy: PolicyConfig,
    /// How this node follows its signed transactions on chain; `None`: it
    /// has no Bitcoin backend, and signed transactions stay Signed here
    /// (see [`crate::chain`]).
    #[serde(default)]
    pub chain: Option<crate::chain::ChainConfig>,
    /// Have cggmp24 build multiexponentiation tables of every member's
    /// ring-Pedersen parameters while this node makes its aux info: once
    /// per DKG, some 18 s of CPU and 3 MB in its key share, for presigning
    /// 1.2x to 1.4x faster ever after (`cargo bench -p mpc-tests --bench
    /// cluster`). Only this node's speed depends on it.
    #[serde(default = "yes")]
    pub multiexp_tables: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("cluster must have at least 2 members, has {0}")]
    TooFewMembers(usize),
    #[error("member ids must be 1..=n without gaps; found {0}")]
    MemberIdsNotContiguous(String),
    #[error("threshold t={t} must satisfy 2 <= t <= n={n}")]
    BadThreshold { t: u16, n: u16 },
    #[error("approve quorum qa={qa} must be at least the threshold t={t}, or approved work could not be signed")]
    ApproveBelowThreshold { qa: u16, t: u16 },
    #[error(
        "quorums qa={qa} + qr={qr} must exceed n + f = {n} + {f}, or conflicting outcomes could both be certified"
    )]
    QuorumsOverlapTooLittle { qa: u16, qr: u16, n: u16, f: u16 },
    #[error("quorum {name}={q} exceeds n - f = {max}: honest members alone could never reach it")]
    QuorumUnreachable { name: &'static str, q: u16, max: u16 },
    #[error("byzantine tolerance f={f} needs n >= 3f + 1, n={n}")]
    TooManyByzantine { f: u16, n: u16 },
    #[error("pool marks must satisfy low_water <= target <= max and max >= 1 (got {low}, {target}, {max})")]
    BadPoolMarks { low: usize, target: usize, max: usize },
    #[error("pool parallel_sessions must be at least 1")]
    NoParallelSessions,
    #[error("timeout {0} must be positive")]
    ZeroTimeout(&'static str),
    #[error("chain settings: {0}")]
    Chain(String),
    #[error("retain_final_ms={retain} must be at least gossip_window_ms={gossip}: a final transaction's votes are exchanged that long")]
    RetainShorterThanGossip { retain: u64, gossip: u64 },
    #[error("cluster id must not be empty")]
    EmptyClusterId,
    #[error("vote key of {0} is not a valid Ed25519 public key")]
    BadVoteKey(NodeId),
    #[error("allowed destination {addr:?} is not a valid address for {network}: {reason}")]
    BadDestination { addr: String, network: Network, reason: String },
    #[error("policy: max_fee_rate_sat_vb must be positive")]
    ZeroFeeCap,
    #[error("node id {0} is not a member of the cluster")]
    NotAMember(NodeId),
}

impl ClusterConfig {
    pub fn n(&self) -> u16 {
        self.members.len() as u16
    }

    /// Refuses any configuration that breaks the quorum rules of DESIGN §3.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.cluster_id.is_empty() {
            return Err(ConfigError::EmptyClusterId);
        }
        let n = self.members.len();
        if n < 2 {
            return Err(ConfigError::TooFewMembers(n));
        }
        let ids: Vec<u16> = self.members.keys().map(|id| id.0).collect();
        if ids.iter().enumerate().any(|(i, id)| *id as usize != i + 1) {
            return Err(ConfigError::MemberIdsNotContiguous(format!("{ids:?}")));
        }
        let n = n as u16;
        let (t, qa, qr, f) = (self.threshold, self.approve_quorum, self.reject_quorum, self.byzantine_tolerance);
        check_quorums(n, t, qa, qr, f)?;
        for (id, m) in &self.members {
            ed25519_dalek::VerifyingKey::from_bytes(&m.vote_key).map_err(|_| ConfigError::BadVoteKey(*id))?;
        }
        let p = &self.pool;
        if p.max == 0 || p.low_water > p.target || p.target > p.max {
            return Err(ConfigError::BadPoolMarks { low: p.low_water, target: p.target, max: p.max });
        }
        if p.parallel_sessions == 0 {
            return Err(ConfigError::NoParallelSessions);
        }
        let to = &self.timeouts;
        for (name, v) in [
            ("vote_ms", to.vote_ms),
            ("signing_ms", to.signing_ms),
            ("presign_ms", to.presign_ms),
            ("dkg_ms", to.dkg_ms),
            ("max_signing_attempts", to.max_signing_attempts as u64),
            ("sync_ms", to.sync_ms),
        ] {
            if v == 0 {
                return Err(ConfigError::ZeroTimeout(name));
            }
        }
        if to.retain_final_ms < to.gossip_window_ms {
            return Err(ConfigError::RetainShorterThanGossip {
                retain: to.retain_final_ms,
                gossip: to.gossip_window_ms,
            });
        }
        Ok(())
    }
}

/// The quorum rules on their own, so they can be tested exhaustively.
///
/// * `qa + qr > n + f`: an approval and a rejection certificate would share
///   at least `f + 1` voters, so at least one honest node would have voted
///   both ways, which honest nodes never do.
/// * `qa >= t`: an approval always has enough approvers to sign.
/// * `qa, qr <= n - f`: the honest members alone can reach either outcome.
/// * `n >= 3f + 1`: the classical bound for Byzantine agreement.
pub fn check_quorums(n: u16, t: u16, qa: u16, qr: u16, f: u16) -> Result<(), ConfigError> {
    if t < 2 || t > n {
        return Err(ConfigError::BadThreshold { t, n });
    }
    if (n as u32) < 3 * f as u32 + 1 {
        return Err(ConfigError::TooManyByzantine { f, n });
    }
    if qa < t {
        return Err(ConfigError::ApproveBelowThreshold { qa, t });
    }
    if qa as u32 + qr as u32 <= n as u32 + f as u32 {
        return Err(ConfigError::QuorumsOverlapTooLittle { qa, qr, n, f });
    }
    let max = n - f;
    if qa > max {
        return Err(ConfigError::QuorumUnreachable { name: "qa", q: qa, max });
    }
    if qr > max {
        return Err(ConfigError::QuorumUnreachable { name: "qr", q: qr, max });
    }
    Ok(())
}

/// A policy whose addresses have been parsed for the cluster's network.
#[derive(Clone, Debug)]
pub struct Policy {
    pub max_amount_sat: u64,
    pub allowed_scripts: BTreeSet<ScriptBuf>,
    pub max_fee_rate_sat_vb: u64,
    pub daily_cap_sat: u64,
}

impl PolicyConfig {
    pub fn parse(&self, network: Network) -> Result<Policy, ConfigError> {
        if self.max_fee_rate_sat_vb == 0 {
            return Err(ConfigError::ZeroFeeCap);
        }
        let mut allowed_scripts = BTreeSet::new();
        for addr in &self.allowed_destinations {
            let parsed = Address::from_str(addr)
                .map_err(|e| ConfigError::BadDestination { addr: addr.clone(), network, reason: e.to_string() })?
                .require_network(network)
                .map_err(|e| ConfigError::BadDestination { addr: addr.clone(), network, reason: e.to_string() })?;
            allowed_scripts.insert(parsed.script_pubkey());
        }
        Ok(Policy {
            max_amount_sat: self.max_amount_sat,
            allowed_scripts,
            max_fee_rate_sat_vb: self.max_fee_rate_sat_vb,
            daily_cap_sat: self.daily_cap_sat,
        })
    }
}

impl NodeConfig {
    /// Validates everything and returns the parsed policy.
    pub fn validate(&self, me: NodeId) -> Result<Policy, ConfigError> {
        self.cluster.validate()?;
        if !self.cluster.members.contains_key(&me) {
            return Err(ConfigError::NotAMember(me));
        }
        if let Some(problem) = self.chain.as_ref().and_then(|c| c.problem()) {
            return Err(ConfigError::Chain(problem));
        }
        self.policy.parse(self.cluster.network)
    }
}

mod hex_bytes32 {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        let v = hex::decode(&s).map_err(serde::de::Error::custom)?;
        v.try_into().map_err(|_| serde::de::Error::custom("expected 32 bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn defaults_for_five_nodes_are_accepted() {
        assert_eq!(check_quorums(5, 3, 3, 4, 1), Ok(()));
    }

    #[test]
    fn quorums_that_could_certify_both_outcomes_are_refused() {
        assert!(matches!(check_quorums(5, 3, 3, 3, 1), Err(ConfigError::QuorumsOverlapTooLittle { .. })));
        assert!(matches!(check_quorums(5, 3, 2, 5, 1), Err(ConfigError::ApproveBelowThreshold { .. })));
    }

    proptest! {
        /// Whenever a configuration is accepted, no two certificates for
        /// opposite outcomes can coexist: any qa approvers and any qr
        /// rejecters share more than f members, so some honest member would
        /// have voted both ways. Checked by brute force over voter sets.
        #[test]
        fn accepted_quorums_never_allow_conflicting_certificates(
            n in 2u16..=9, t in 1u16..=9, qa in 0u16..=10, qr in 0u16..=10, f in 0u16..=3,
        ) {
            if check_quorums(n, t, qa, qr, f).is_ok() {
                prop_assert!(qa >= t && t >= 2 && qa <= n && qr <= n);
                // Smallest possible overlap of a qa-set and a qr-set among n voters.
                let overlap = (qa + qr).saturating_sub(n);
                prop_assert!(overlap > f, "overlap {} <= f {}", overlap, f);
                // Honest members alone can reach both quorums.
                prop_assert!(qa <= n - f && qr <= n - f);
                // Brute force over small n: every approval set intersects every
                // rejection set in more than f voters.
                if n <= 7 {
                    for a in 0u32..(1 << n) {
                        if a.count_ones() != qa as u32 { continue; }
                        for r in 0u32..(1 << n) {
                            if r.count_ones() != qr as u32 { continue; }
                            prop_assert!((a & r).count_ones() > f as u32);
                        }
                    }
                }
            } else {
                // Refused configurations break at least one rule.
                let breaks = t < 2 || t > n || (n as u32) < 3 * f as u32 + 1 || qa < t
                    || qa as u32 + qr as u32 <= n as u32 + f as u32
                    || qa > n.saturating_sub(f) || qr > n.saturating_sub(f);
                prop_assert!(breaks);
            }
        }
    }
}
