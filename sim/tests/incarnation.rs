//! A reused seed does not replay the nonce stream (issue 11, item 3): each
//! start of a node reserves a fresh incarnation number durably and mixes it
//! into the seed, so two starts handed the same 32 bytes draw different
//! session seeds once the first start's records are on disk.

use mpc_core::engine::ComputeJob;
use mpc_core::{Command, Input, Millis, Node, NodeId, Record, RecoveredState, RequestId, Secret};
use mpc_sim::{fixtures, setup};

const ME: NodeId = NodeId(2);

/// Starts node 2 from `records` with `seed`, starts DKG and returns the
/// seed of the first cggmp24 session it hands the engine, with every
/// record it asked to persist.
fn first_session_seed(seed: [u8; 32], records: Vec<Record>) -> ([u8; 32], Vec<Record>) {
    let cluster = setup::cluster_config("incarnation", 5, 3);
    let (config, identity) = setup::node_configs(&cluster).remove(&ME).unwrap();
    let mut node = Node::new(config, identity, seed, RecoveredState { records }).expect("node");
    let primes = fixtures::load_primes(5).expect("TEST-ONLY fixture primes").remove(&ME).unwrap();
    let mut persisted = Vec::new();
    let mut seeds = Vec::new();
    for input in
        [Input::SafePrimes(Secret::new(primes)), Input::Command { request: RequestId(1), command: Command::StartDkg }]
    {
        let step = node.handle(Millis(1_000), input);
        persisted.extend(step.persist);
        seeds.extend(step.compute.into_iter().filter_map(|job| match job {
            ComputeJob::Start { seed, .. } => Some(seed),
            _ => None,
        }));
    }
    (*seeds.first().expect("DKG started a session"), persisted)
}

#[test]
fn a_restart_with_the_same_seed_draws_a_fresh_stream() {
    let seed = [7u8; 32];
    let (first, persisted) = first_session_seed(seed, Vec::new());
    assert!(
        persisted.iter().any(|r| matches!(r, Record::SequenceReserved { .. })),
        "the incarnation was not reserved durably"
    );
    // The same seed and nothing persisted (the first start's startup step
    // never became durable, so nothing of it left the node): the same
    // stream, which is harmless.
    let (again, _) = first_session_seed(seed, Vec::new());
    assert_eq!(again, first, "the stream is a function of the seed and the records");
    // The first start's records on disk: a new incarnation, a new stream.
    // Without the incarnation mixed into the seed this is the first stream
    // again, and the engine would reuse its nonces in a new session.
    let only_startup: Vec<Record> =
        persisted.iter().filter(|r| matches!(r, Record::SequenceReserved { .. })).cloned().collect();
    let (restarted, _) = first_session_seed(seed, only_startup);
    assert_ne!(restarted, first, "a restart with a reused seed replayed the nonce stream");
}
