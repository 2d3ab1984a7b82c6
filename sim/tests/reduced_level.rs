//! The real protocol at mpc-core's TEST-ONLY reduced security level
//! (`ReducedTestOnlyLevel`: 1024-bit primes, 2047-bit Paillier modulus):
//! aux info from the reduced primes fixture, keygen, live presigning, and a
//! PSBT approved, signed and checked by libbitcoinconsensus.
//!
//! `cargo test -p mpc-sim --features reduced-security --test reduced_level`
//! (add `--release -- --nocapture` for meaningful timings). The test prints
//! the wall and CPU time of aux info and of one presignature; it asserts no
//! timing. Measured on the 2-core development machine with
//! `cargo bench -p mpc-sim [--features reduced-security] --bench core_vs_library -- --aux`
//! (release; five nodes, three signers; CPU time of all parties, wall in
//! brackets):
//!
//! |                         | reduced (2047-bit) | production (3071-bit) |
//! |-------------------------|--------------------|-----------------------|
//! | aux info + keygen, core | 23.7 s (23.6 s)    | 73.0 s (57.0 s)       |
//! | one presignature, core  | 1.50 s (1.51 s)    | 4.25 s (4.34 s)       |
//!
//! about 3x faster for aux info and 2.8x for presigning.
#![cfg(feature = "reduced-security")]

use bitcoin::consensus::encode::serialize;
use cggmp24::security_level::SecurityLevel;
use mpc_core::engine::{Level, ReducedTestOnlyLevel};
use mpc_core::{Input, NodeId, Record, Secret, TxState, REDUCED_SECURITY_TEST_ONLY};
use mpc_sim::wallet::Spend;
use mpc_sim::{checker, fixtures, scenario, setup, Cluster};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

const N: u16 = 5;
const T: u16 = 3;
const PRESIGS: usize = 3;

fn cpu_seconds() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec through the pointer given.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// (CPU seconds, wall seconds) of `f`, with its result.
fn timed<R>(f: impl FnOnce() -> R) -> (R, f64, f64) {
    let (c0, w0) = (cpu_seconds(), Instant::now());
    let r = f();
    (r, cpu_seconds() - c0, w0.elapsed().as_secs_f64())
}

#[test]
fn the_build_runs_the_reduced_level() {
    const { assert!(REDUCED_SECURITY_TEST_ONLY) };
    // `Level` is the reduced level, not SecurityLevel128 (1536-bit primes).
    assert_eq!(std::any::type_name::<Level>(), std::any::type_name::<ReducedTestOnlyLevel>());
    assert_eq!(Level::RSA_PRIME_BITLEN, 1024);
    assert_eq!(Level::RSA_PUBKEY_BITLEN, 2047);
    assert_eq!((Level::EPSILON, Level::ELL, Level::ELL_PRIME), (512, 256, 768));
    assert!(fixtures::primes_path(N).ends_with("test-only-reduced-safe-primes-5.json"));
    assert!(fixtures::aux_path(N).ends_with("test-only-reduced-aux-info-5.json"));
}

#[test]
fn reduced_level_runs_aux_info_keygen_presigning_and_signs() {
    let config = setup::cluster_config("reduced-cluster", N, T);
    let mut cluster = Cluster::new(41, setup::node_configs(&config), BTreeMap::new()).unwrap();
    let primes =
        fixtures::load_primes(N).expect("reduced primes fixture (mpc-sim-fixtures --features reduced-security)");
    for (id, p) in primes {
        for prime in p.primes_ref() {
            assert_eq!(prime.significant_bits(), 1024, "reduced fixture primes");
        }
        cluster.input(id, Input::SafePrimes(Secret::new(p)));
    }

    // Aux info from primes, then keygen: the whole DKG, live.
    let (key, cpu, wall) = timed(|| scenario::run_dkg(&mut cluster, NodeId(1)).expect("DKG"));
    println!("reduced level: aux info + keygen, {N} nodes: {cpu:.2} s cpu, {wall:.2} s wall");

    // The level really is reduced: every Paillier modulus and ring-Pedersen
    // modulus the cluster made has ~2047 bits, not SecurityLevel128's 3071.
    for id in cluster.ids() {
        let aux = cluster.hosts()[&id]
            .store
            .iter()
            .find_map(|r| match r {
                Record::AuxInfo { aux, .. } => Some(aux.expose().clone()),
                _ => None,
            })
            .expect("aux info recorded");
        assert_eq!(aux.N.len(), N as usize);
        for n in aux.N.iter().chain(aux.pedersen_params.iter().map(|p| &p.hat_N)) {
            let bits = n.significant_bits();
            assert!((2047..=2048).contains(&bits), "{id}: modulus has {bits} bits, expected ~2047 (reduced level)");
        }
    }

    // Live presigning at the reduced level.
    let ((), cpu, wall) = timed(|| scenario::fill_pool(&mut cluster, NodeId(1), PRESIGS).expect("pool fills"));
    println!(
        "reduced level: one presignature, {T} signers: {:.2} s cpu, {:.2} s wall (mean of {PRESIGS})",
        cpu / PRESIGS as f64,
        wall / PRESIGS as f64
    );

    // A PSBT approved by the cluster and signed from a presignature.
    let destination = {
        use std::str::FromStr;
        bitcoin::Address::from_str(setup::TEST_DESTINATION).unwrap().require_network(bitcoin::Network::Regtest).unwrap()
    };
    let spend = Spend::simple("reduced-1", &[150_000], &destination, 100_000, 2_000);
    let tx = scenario::submit(&mut cluster, NodeId(2), spend.psbt_bytes(&key)).unwrap();
    assert!(scenario::wait_final(&mut cluster, tx, 600_000), "transaction did not finish");
    for id in cluster.ids() {
        assert_eq!(scenario::state_at(&cluster, id, tx), Some(TxState::Signed), "{id}");
    }
    let signed = scenario::signed_tx(&cluster, tx).expect("signed transaction recorded");
    let raw = serialize(&signed);
    for (i, (_, value)) in spend.inputs.iter().enumerate() {
        key.script_pubkey().verify(i, *value, &raw).expect("input verifies under libbitcoinconsensus");
    }
    let violations = checker::check(&cluster, &BTreeSet::new());
    assert!(violations.is_empty(), "invariants violated: {violations:#?}");
}
