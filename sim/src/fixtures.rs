//! TEST-ONLY fixtures: safe primes and aux info made once by the real
//! protocol code and committed, so tests skip the minutes these cost.
//! Nothing in a production path loads them: the node binary generates its
//! own primes, and these files hold secrets anyone can read.
//!
//! Each cggmp24 security level has its own files, named by [`path`] alone:
//! `test-only-*.json` for the production level, `test-only-reduced-*.json`
//! when mpc-core runs the TEST-ONLY reduced level (feature
//! `reduced-security`), so a build can only ever load its own level's
//! fixtures. The loaders also check the numbers' sizes against the level.
//!
//! Regenerate with `cargo run --release -p mpc-sim --bin mpc-sim-fixtures`
//! (add `--features reduced-security` for the reduced level's files).

use cggmp24::security_level::SecurityLevel;
use mpc_core::engine::{AuxInfo, Level, SafePrimes};
use mpc_core::{DkgId, NodeId, Record, Secret};
use std::collections::BTreeMap;
use std::path::PathBuf;

pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// What a fixture file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    SafePrimes,
    AuxInfo,
    Cluster,
}

/// The file name prefix of this build's security level.
pub fn level_prefix() -> &'static str {
    if mpc_core::REDUCED_SECURITY_TEST_ONLY {
        "test-only-reduced"
    } else {
        "test-only"
    }
}

/// The one place fixture paths are made, keyed on the level this build of
/// mpc-core runs at: production and reduced fixtures never share a name.
pub fn path(kind: Kind, n: u16) -> PathBuf {
    let what = match kind {
        Kind::SafePrimes => "safe-primes",
        Kind::AuxInfo => "aux-info",
        Kind::Cluster => "cluster",
    };
    dir().join(format!("{}-{what}-{n}.json", level_prefix()))
}

pub fn primes_path(n: u16) -> PathBuf {
    path(Kind::SafePrimes, n)
}

pub fn aux_path(n: u16) -> PathBuf {
    path(Kind::AuxInfo, n)
}

pub fn cluster_path(n: u16) -> PathBuf {
    path(Kind::Cluster, n)
}

/// Safe primes are made exactly `RSA_PRIME_BITLEN` bits long for a level.
fn check_primes(primes: &SafePrimes) -> anyhow::Result<()> {
    for p in primes.primes_ref() {
        anyhow::ensure!(
            p.significant_bits() == u64::from(Level::RSA_PRIME_BITLEN),
            "fixture prime has {} bits, this build's security level uses {}: wrong level's fixture",
            p.significant_bits(),
            Level::RSA_PRIME_BITLEN
        );
    }
    Ok(())
}

/// A Paillier modulus of this level is the product of two of its primes.
fn check_aux(aux: &AuxInfo) -> anyhow::Result<()> {
    let range = u64::from(Level::RSA_PUBKEY_BITLEN)..=2 * u64::from(Level::RSA_PRIME_BITLEN);
    for n in &aux.N {
        anyhow::ensure!(
            range.contains(&n.significant_bits()),
            "fixture Paillier modulus has {} bits, this build's security level expects {range:?}: wrong level's fixture",
            n.significant_bits()
        );
    }
    Ok(())
}

/// Cluster id of the fixture cluster: its transactions' digests and its
/// sessions' execution ids are bound to it.
pub const FIXTURE_CLUSTER_ID: &str = "fixture-cluster";

/// Every node's records after DKG and a filled presignature pool: key
/// shares, aux info and real presignatures, made once by the protocol code.
/// The files predate key confirmation: each node's `KeyShare` is followed
/// by a `KeyAdopted` record added by a script, without the members'
/// confirmations (every fixture node holds the key, so none ever asks for
/// the certificate). Regenerating them writes the confirmations too.
pub fn load_cluster(n: u16) -> anyhow::Result<BTreeMap<NodeId, Vec<Record>>> {
    let text = std::fs::read_to_string(cluster_path(n))?;
    let records: BTreeMap<NodeId, Vec<Record>> = serde_json::from_str(&text)?;
    for r in records.values().flatten() {
        if let Record::AuxInfo { aux, .. } = r {
            check_aux(aux.expose())?;
        }
    }
    Ok(records)
}

/// The fixture aux info is recorded under this (never-run) DKG id.
pub const FIXTURE_DKG: DkgId = DkgId { origin: NodeId(1), seq: u64::MAX };

pub fn load_primes(n: u16) -> anyhow::Result<BTreeMap<NodeId, SafePrimes>> {
    let text = std::fs::read_to_string(primes_path(n))?;
    let primes: BTreeMap<NodeId, SafePrimes> = serde_json::from_str(&text)?;
    primes.values().try_for_each(check_primes)?;
    Ok(primes)
}

pub fn load_aux(n: u16) -> anyhow::Result<BTreeMap<NodeId, AuxInfo>> {
    let text = std::fs::read_to_string(aux_path(n))?;
    let aux: BTreeMap<NodeId, AuxInfo> = serde_json::from_str(&text)?;
    aux.values().try_for_each(check_aux)?;
    Ok(aux)
}

/// Records that give each node its fixture aux info, as if it had run aux
/// info generation before: DKG then needs only keygen.
pub fn aux_records(n: u16) -> anyhow::Result<BTreeMap<NodeId, Vec<Record>>> {
    Ok(load_aux(n)?
        .into_iter()
        .map(|(id, aux)| (id, vec![Record::AuxInfo { dkg: FIXTURE_DKG, aux: Secret::new(aux) }]))
        .collect())
}
