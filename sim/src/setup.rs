//! Deterministic cluster configurations and identities for tests and demos.

use ed25519_dalek::SigningKey;
use mpc_core::{ClusterConfig, Identity, MemberInfo, NodeConfig, NodeId, PolicyConfig, PoolConfig, Timeouts};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// An Ed25519 vote key derived from a label and a node id. Deterministic
/// keys are for tests and the demo only; production nodes load theirs.
pub fn vote_key(label: &str, id: NodeId) -> SigningKey {
    let seed: [u8; 32] = Sha256::new()
        .chain_update(b"mpc-sim/vote-key/")
        .chain_update(label.as_bytes())
        .chain_update(id.0.to_be_bytes())
        .finalize()
        .into();
    SigningKey::from_bytes(&seed)
}

/// A per-node seed for the core's randomness, derived from a run seed.
pub fn node_seed(run_seed: u64, id: NodeId, incarnation: u32) -> [u8; 32] {
    Sha256::new()
        .chain_update(b"mpc-sim/node-seed/")
        .chain_update(run_seed.to_be_bytes())
        .chain_update(id.0.to_be_bytes())
        .chain_update(incarnation.to_be_bytes())
        .finalize()
        .into()
}

/// A test destination the default policy allows (regtest).
pub const TEST_DESTINATION: &str = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080";

/// Cluster config for `n` members with threshold `t`, quorums per DESIGN §3
/// for n = 5 (qa = t, qr = n - f, f = (n - 1) / 3), a small pool, regtest.
pub fn cluster_config(label: &str, n: u16, t: u16) -> ClusterConfig {
    let members: BTreeMap<NodeId, MemberInfo> = (1..=n)
        .map(|i| {
            let id = NodeId(i);
            (id, MemberInfo { vote_key: vote_key(label, id).verifying_key().to_bytes() })
        })
        .collect();
    let f = (n - 1) / 3;
    ClusterConfig {
        cluster_id: label.to_string(),
        members,
        threshold: t,
        approve_quorum: t.max(n + f + 1 - (n - f)),
        reject_quorum: n - f,
        byzantine_tolerance: f,
        network: bitcoin::Network::Regtest,
        pool: PoolConfig { low_water: 2, target: 3, max: 6, parallel_sessions: 3 },
        timeouts: Timeouts::default(),
    }
}

/// A permissive policy that allows [`TEST_DESTINATION`].
pub fn test_policy() -> PolicyConfig {
    PolicyConfig {
        max_amount_sat: 10_000_000,
        allowed_destinations: vec![TEST_DESTINATION.to_string()],
        max_fee_rate_sat_vb: 500,
        daily_cap_sat: 50_000_000,
    }
}

pub fn node_configs(cluster: &ClusterConfig) -> BTreeMap<NodeId, (NodeConfig, Identity)> {
    cluster
        .members
        .keys()
        .map(|id| {
            // Without multiexp tables: live aux info stays cheap for the
            // sweeps; they change only how fast a node presigns.
            let config =
                NodeConfig { cluster: cluster.clone(), policy: test_policy(), chain: None, multiexp_tables: false };
            let identity = Identity { id: *id, vote_key: vote_key(&cluster.cluster_id, *id) };
            (*id, (config, identity))
        })
        .collect()
}
