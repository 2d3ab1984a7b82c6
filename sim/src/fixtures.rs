//! TEST-ONLY fixtures: safe primes and aux info made once by the real
//! protocol code and committed, so tests skip the minutes these cost.
//! Nothing in a production path loads them: the node binary generates its
//! own primes, and these files hold secrets anyone can read.
//!
//! Regenerate with `cargo run --release -p mpc-sim --bin mpc-sim-fixtures`.

use mpc_core::engine::{AuxInfo, SafePrimes};
use mpc_core::{DkgId, NodeId, Record, Secret};
use std::collections::BTreeMap;
use std::path::PathBuf;

pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

pub fn primes_path(n: u16) -> PathBuf {
    dir().join(format!("test-only-safe-primes-{n}.json"))
}

pub fn aux_path(n: u16) -> PathBuf {
    dir().join(format!("test-only-aux-info-{n}.json"))
}

pub fn cluster_path(n: u16) -> PathBuf {
    dir().join(format!("test-only-cluster-{n}.json"))
}

/// Cluster id of the fixture cluster: its transactions' digests and its
/// sessions' execution ids are bound to it.
pub const FIXTURE_CLUSTER_ID: &str = "fixture-cluster";

/// Every node's records after DKG and a filled presignature pool: key
/// shares, aux info and real presignatures, made once by the protocol code.
pub fn load_cluster(n: u16) -> anyhow::Result<BTreeMap<NodeId, Vec<Record>>> {
    let text = std::fs::read_to_string(cluster_path(n))?;
    Ok(serde_json::from_str(&text)?)
}

/// The fixture aux info is recorded under this (never-run) DKG id.
pub const FIXTURE_DKG: DkgId = DkgId { origin: NodeId(1), seq: u64::MAX };

pub fn load_primes(n: u16) -> anyhow::Result<BTreeMap<NodeId, SafePrimes>> {
    let text = std::fs::read_to_string(primes_path(n))?;
    Ok(serde_json::from_str(&text)?)
}

pub fn load_aux(n: u16) -> anyhow::Result<BTreeMap<NodeId, AuxInfo>> {
    let text = std::fs::read_to_string(aux_path(n))?;
    Ok(serde_json::from_str(&text)?)
}

/// Records that give each node its fixture aux info, as if it had run aux
/// info generation before: DKG then needs only keygen.
pub fn aux_records(n: u16) -> anyhow::Result<BTreeMap<NodeId, Vec<Record>>> {
    Ok(load_aux(n)?
        .into_iter()
        .map(|(id, aux)| (id, vec![Record::AuxInfo { dkg: FIXTURE_DKG, aux: Secret::new(aux) }]))
        .collect())
}
