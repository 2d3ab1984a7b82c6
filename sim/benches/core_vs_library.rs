//! Core versus raw library, measured in one run: for key generation, one
//! presignature and one signature, the CPU time the whole core stack spends
//! (five `Node`s, the engine, votes, certificates, Bitcoin checks, driven by
//! the one-process cluster) next to the CPU time cggmp24 alone spends on the
//! same step (driven by round-based's simulator), and their ratio.
//!
//! CPU time, not wall time: the cluster runs engines on threads, which
//! would make the core look faster than the library on a multi-core machine.
//!
//! `cargo bench -p mpc-sim --bench core_vs_library [-- --aux]` (`--aux` adds
//! aux info generation, about a minute of CPU per side).

use cggmp24::key_share::AnyKeyShare;
use cggmp24::signing::PresignaturePublicData;
use cggmp24::supported_curves::Secp256k1;
use cggmp24::Presignature;
use mpc_core::engine::{AuxInfo, KeyShare, Level};
use mpc_core::{Input, NodeId, Secret, TxState};
use mpc_sim::{fixtures, scenario, setup, wallet::Spend, Cluster};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use sha2::Sha256;
use std::collections::BTreeMap;
use std::time::Instant;

const N: u16 = 5;
const T: u16 = 3;
const PRESIGS: usize = 5;
const SIGNATURES: u32 = 3;

fn cpu_seconds() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec through the pointer given.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// CPU seconds and wall seconds per operation for `ops` operations.
fn measure(ops: u32, f: impl FnOnce()) -> (f64, f64) {
    let (c0, w0) = (cpu_seconds(), Instant::now());
    f();
    ((cpu_seconds() - c0) / ops as f64, w0.elapsed().as_secs_f64() / ops as f64)
}

fn row(step: &str, core: (f64, f64), lib: (f64, f64), note: &str) {
    println!(
        "{step:<18} core {:>9.4} s cpu ({:>7.4} s wall) | library {:>9.4} s cpu ({:>7.4} s wall) | core/library {:>7.2}x | {note}",
        core.0,
        core.1,
        lib.0,
        lib.1,
        core.0 / lib.0
    );
}

fn raw_keygen(seed: u64, aux: &BTreeMap<NodeId, AuxInfo>) -> Vec<KeyShare> {
    let eid = format!("bench-keygen-{seed}").into_bytes();
    let incomplete = round_based::sim::run(N, |i, party| {
        let eid = eid.clone();
        async move {
            let mut rng = ChaCha20Rng::seed_from_u64(seed * 100 + i as u64);
            cggmp24::keygen::<Secp256k1>(cggmp24::ExecutionId::new(&eid), i, N)
                .set_threshold(T)
                .set_security_level::<Level>()
                .start(&mut rng, party)
                .await
        }
    })
    .expect("simulation runs")
    .expect_ok()
    .into_vec();
    incomplete
        .into_iter()
        .zip(aux.values())
        .map(|(k, a)| KeyShare::from_parts((k, a.clone())).expect("valid key share"))
        .collect()
}

type PresigSet = Vec<(Presignature<Secp256k1>, PresignaturePublicData<Secp256k1>)>;

fn raw_presign(seed: u64, shares: &[KeyShare]) -> PresigSet {
    let signers: [u16; 3] = [0, 1, 2];
    let eid = format!("bench-presign-{seed}").into_bytes();
    round_based::sim::run(T, |j, party| {
        let eid = eid.clone();
        let share = &shares[signers[j as usize] as usize];
        async move {
            let mut rng = ChaCha20Rng::seed_from_u64(seed * 100 + j as u64);
            cggmp24::signing(cggmp24::ExecutionId::new(&eid), j, &signers, share)
                .generate_presignature(&mut rng, party)
                .await
        }
    })
    .expect("simulation runs")
    .expect_ok()
    .into_vec()
}

fn main() {
    let with_aux = std::env::args().any(|a| a == "--aux");
    let aux = fixtures::load_aux(N).expect("fixture aux info");
    let level = if mpc_core::REDUCED_SECURITY_TEST_ONLY {
        "ReducedTestOnlyLevel (TEST ONLY, 2047-bit Paillier)"
    } else {
        "SecurityLevel128"
    };
    println!("core vs cggmp24 0.7.0-alpha.3, n = {N}, t = {T}, {level}; per operation");

    if with_aux {
        let primes = fixtures::load_primes(N).expect("fixture primes");
        let core = measure(1, || {
            let config = setup::cluster_config("bench-aux", N, T);
            let mut cluster = Cluster::new(1, setup::node_configs(&config), BTreeMap::new()).unwrap();
            for (id, p) in &primes {
                cluster.input(*id, Input::SafePrimes(Secret::new(p.clone())));
            }
            scenario::run_dkg(&mut cluster, NodeId(1)).unwrap();
        });
        let lib = measure(1, || {
            let ps: Vec<_> = primes.values().cloned().collect();
            round_based::sim::run_with_setup(ps, |i, party, p| async move {
                let mut rng = ChaCha20Rng::seed_from_u64(i as u64);
                cggmp24::aux_info_gen(cggmp24::ExecutionId::new(b"bench-aux"), i, N, p).start(&mut rng, party).await
            })
            .unwrap()
            .expect_ok();
        });
        row("DKG (aux+keygen)", core, lib, "library side: aux info only");
    }

    // Key generation, aux info from the fixture on both sides.
    let reps = 5u32;
    let core = measure(reps, || {
        for seed in 0..reps as u64 {
            scenario::fixture_cluster("bench-keygen", seed, N, T, |_| {}).unwrap();
        }
    });
    let lib = measure(reps, || {
        for seed in 0..reps as u64 {
            raw_keygen(seed, &aux);
        }
    });
    row("DKG keygen 3-of-5", core, lib, "all five parties; core includes node start-up");

    // Presignatures: the core's pool fills from 0 to PRESIGS, one session
    // at a time (start, three rounds, announcements, persistence).
    let (mut cluster, key) = scenario::fixture_cluster("bench-pool", 7, N, T, |c| {
        c.pool.low_water = 1;
        c.pool.target = PRESIGS;
        c.pool.max = PRESIGS;
        c.pool.parallel_sessions = 1;
    })
    .unwrap();
    cluster.time_handles();
    let core = measure(PRESIGS as u32, || scenario::fill_pool(&mut cluster, NodeId(1), PRESIGS).unwrap());
    let during_presigning = cluster.take_handle_timings();
    let shares = raw_keygen(1000, &aux);
    let mut raw_sets = Vec::new();
    let lib = measure(PRESIGS as u32, || {
        for seed in 0..PRESIGS as u64 {
            raw_sets.push(raw_presign(seed, &shares));
        }
    });
    row("presignature", core, lib, "three signers");
    let lib_presign = lib.0;

    // Signatures: the core takes a PSBT from submission to Signed on all
    // five nodes (votes, certificate checks, partials checked against
    // commitments, combine, verify, libbitcoinconsensus); the library issues
    // three partial signatures, combines and verifies.
    let destination = {
        use std::str::FromStr;
        bitcoin::Address::from_str(setup::TEST_DESTINATION).unwrap().require_network(bitcoin::Network::Regtest).unwrap()
    };
    let core = measure(SIGNATURES, || {
        for k in 0..SIGNATURES {
            let spend = Spend::simple(&format!("bench-sign-{k}"), &[100_000], &destination, 50_000, 1_000);
            let tx = scenario::submit(&mut cluster, NodeId(1), spend.psbt_bytes(&key)).unwrap();
            assert!(scenario::wait_final(&mut cluster, tx, 600_000));
            assert_eq!(scenario::state_at(&cluster, NodeId(1), tx), Some(TxState::Signed));
        }
    });
    let public_key = shares[0].shared_public_key();
    let lib = measure(SIGNATURES, || {
        for (k, set) in raw_sets.into_iter().take(SIGNATURES as usize).enumerate() {
            let data = cggmp24::DataToSign::digest::<Sha256>(format!("bench message {k}").as_bytes());
            let public = set[0].1.clone();
            let partials: Vec<_> = set.into_iter().map(|(p, _)| p.issue_partial_signature(data)).collect();
            let sig = cggmp24::PartialSignature::combine(&partials, &public, data).expect("combines");
            sig.verify(&public_key, &data).expect("verifies");
        }
    });
    row("signature", core, lib, "core: submit to Signed on 5 nodes; library: partials + combine + verify");

    // The hot path: every input a node handles, while presignatures were
    // being generated. Protocol rounds run in the engine, so no call to
    // `Node::handle` carries presigning work.
    println!();
    println!("Node::handle while filling the pool (presigning rounds run in the engine, off this path):");
    let mut all: Vec<std::time::Duration> = Vec::new();
    for (kind, mut times) in during_presigning {
        times.sort();
        let p99 = times[(times.len() * 99 / 100).min(times.len() - 1)];
        let max = *times.last().expect("non-empty");
        println!("  {kind:<16} {:>6} calls  p99 {:>9.3} ms  max {:>9.3} ms", times.len(), ms(p99), ms(max));
        all.extend(times);
    }
    all.sort();
    let max = *all.last().expect("calls were timed");
    println!(
        "  all inputs: max {:.3} ms = {:.5} of one presignature's CPU ({:.3} s)",
        ms(max),
        max.as_secs_f64() / lib_presign,
        lib_presign
    );
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
