//! `mpc-node demo`: five cores in one process on the deterministic cluster
//! runner, with production cryptography (cggmp24 SecurityLevel128) and
//! fresh safe primes, so nothing here is a fixture.

use crate::report::{Approval, ClusterSummary, Output, Prevout, Report, Timings};
use anyhow::{bail, Context};
use bitcoin::{Address, Network};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use mpc_core::engine::SafePrimes;
use mpc_core::tx::GroupKey;
use mpc_core::{Identity, Input, MemberInfo, Node, NodeId, Observation, Record, RecoveredState, Secret, TxState};
use mpc_sim::{scenario, setup, wallet::Spend, Cluster};
use rand_core::{OsRng, RngCore};
use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const NODES: u16 = 5;
const THRESHOLD: u16 = 3;
const CLUSTER_ID: &str = "demo-cluster";

pub fn run(out: &Path, seed: Option<u64>) -> anyhow::Result<()> {
    let started = Instant::now();
    let seed = seed.unwrap_or_else(|| OsRng.next_u64());
    println!("mpc-custody demo: {NODES} nodes, threshold {THRESHOLD}, regtest, seed {seed}");

    // Fresh Ed25519 vote keys from the OS, as an operator would create them.
    let mut config = setup::cluster_config(CLUSTER_ID, NODES, THRESHOLD);
    config.pool.low_water = 2;
    config.pool.target = 3;
    config.pool.max = 6;
    let mut nodes = setup::node_configs(&config);
    for (id, (node_config, identity)) in nodes.iter_mut() {
        let key = ed25519_dalek::SigningKey::generate(&mut OsRng);
        *identity = Identity { id: *id, vote_key: key.clone() };
        node_config.cluster.members.insert(*id, MemberInfo { vote_key: key.verifying_key().to_bytes() });
    }
    let members: BTreeMap<NodeId, MemberInfo> =
        nodes.values().map(|(_, i)| (i.id, MemberInfo { vote_key: i.vote_key.verifying_key().to_bytes() })).collect();
    for (node_config, _) in nodes.values_mut() {
        node_config.cluster.members = members.clone();
    }

    let t0 = Instant::now();
    let primes = generate_primes(NODES)?;
    let primes_s = t0.elapsed().as_secs_f64();

    let mut cluster = Cluster::new(seed, nodes, BTreeMap::new())?;
    for (id, p) in primes {
        cluster.input(id, Input::SafePrimes(Secret::new(p)));
    }

    let t1 = Instant::now();
    let bar = spinner("DKG: aux info (Paillier keys, ZK proofs), then 3-of-5 keygen");
    let key = scenario::run_dkg(&mut cluster, NodeId(1))?;
    bar.finish_with_message(format!("DKG done: group key {}", key.hex()));
    let dkg_s = t1.elapsed().as_secs_f64();
    let address = key.address(Network::Regtest);
    println!("cluster address: {address}");

    let t2 = Instant::now();
    let bar = spinner("presignature pool: filling to 3 (3-party presigning)");
    scenario::fill_pool(&mut cluster, NodeId(1), 3)?;
    bar.finish_with_message(format!("pool ready: {} presignatures", cluster.node(NodeId(1)).status().pool_ready));
    let pool_s = t2.elapsed().as_secs_f64();

    let mut report = sign_and_report(&mut cluster, &key, seed)?;
    report.timings_s = Timings {
        safe_primes: primes_s,
        dkg: dkg_s,
        pool: pool_s,
        signing: report.timings_s.signing,
        total: started.elapsed().as_secs_f64(),
    };
    let summary = crate::report::verify(&report)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    println!("{}", persist_to_sqlite(&cluster, &out.join("db"))?);
    let path = out.join("report.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    println!("signed: txid {}", report.txid);
    println!("{summary}");
    let path = path.canonicalize().unwrap_or(path);
    println!("report: {}", path.display());
    println!("check it independently: python3 scripts/verify_report.py {}", path.display());
    Ok(())
}

/// The embedded default storage, end to end: every node's records go into
/// its own SQLite database (secrets sealed under a fresh per-node master
/// key, written owner-only beside it), one transaction per step of the
/// core, each record with its audit row; then each database is reopened, its audit chain verified, and
/// the node it rebuilds compared with the node its records replay to.
pub fn persist_to_sqlite(cluster: &Cluster, dir: &Path) -> anyhow::Result<String> {
    use mpc_io_store::{MasterKey, Store};
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (mut total, mut steps) = (0, 0);
    for (id, host) in cluster.hosts().iter() {
        let db = dir.join(format!("node-{}.db", id.0));
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
        }
        let key_hex = MasterKey::generate_hex();
        let key_path = dir.join(format!("node-{}.key", id.0));
        let mut file =
            std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&key_path)?;
        std::io::Write::write_all(&mut file, key_hex.as_bytes())?;
        let url = format!("sqlite://{}?mode=rwc", db.display());
        let records = host.store.clone();
        let step_ends = host.step_ends.clone();
        let expected = Node::new(
            host.config.clone(),
            host.identity.clone(),
            [0; 32],
            RecoveredState { records: records.clone() },
        )?
        .durable_view();
        let rebuilt = runtime.block_on(async {
            let store = Store::open(&url, MasterKey::from_file(&key_path)?, *id).await?;
            // Each of the core's steps as one transaction, as the node shell does.
            let mut start = 0;
            for (i, end) in step_ends.iter().enumerate() {
                store.apply(mpc_core::Millis(i as u64), &records[start..*end]).await?;
                start = *end;
            }
            anyhow::ensure!(start == records.len(), "{id}: step boundaries do not cover the records");
            store.close().await;
            let store = Store::open(&url, MasterKey::from_file(&key_path)?, *id).await?;
            store.verify_audit().await?;
            let recovered = store.recover().await?;
            store.close().await;
            anyhow::Ok(recovered)
        })?;
        // Sealed or not, a node's database is for its owner only.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600))?;
        let view = Node::new(host.config.clone(), host.identity.clone(), [0; 32], rebuilt)?.durable_view();
        anyhow::ensure!(view == expected, "{id}: the node rebuilt from its database differs from its records");
        total += records.len();
        steps += step_ends.len();
    }
    Ok(format!(
        "storage: {} SQLite databases in {} ({total} records in {steps} step transactions, sealed secrets, \
         audit chains verified, each rebuilt node equal to its records' replay)",
        cluster.hosts().len(),
        dir.display()
    ))
}

fn spinner(message: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}").expect("valid template"));
    bar.set_message(message.to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Safe primes for every node, on all cores, with a progress bar. This is
/// the shell's job: the core never generates primes (DESIGN §3).
fn generate_primes(n: u16) -> anyhow::Result<BTreeMap<NodeId, SafePrimes>> {
    let progress = MultiProgress::new();
    let bar = progress.add(ProgressBar::new(n as u64));
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] safe primes {pos}/{len} nodes (about 25 s per node per core)",
        )
        .expect("valid template"),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let todo = Arc::new(Mutex::new((1..=n).map(NodeId).collect::<Vec<_>>()));
    let done = Arc::new(Mutex::new(BTreeMap::new()));
    let workers = std::thread::available_parallelism().map(|p| p.get()).unwrap_or(1).min(n as usize);
    let handles: Vec<_> = (0..workers)
        .map(|_| {
            let (todo, done, bar) = (todo.clone(), done.clone(), bar.clone());
            std::thread::spawn(move || loop {
                let Some(id) = todo.lock().expect("queue").pop() else { return };
                let primes = SafePrimes::generate(&mut OsRng);
                done.lock().expect("results").insert(id, primes);
                bar.inc(1);
            })
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| anyhow::anyhow!("prime generation thread panicked"))?;
    }
    bar.finish();
    let primes = std::mem::take(&mut *done.lock().expect("results"));
    Ok(primes)
}

/// The demo's second half: a PSBT paying from the cluster address, approved
/// and signed by the cluster, and the report of it (already verified).
pub fn sign_and_report(cluster: &mut Cluster, key: &GroupKey, seed: u64) -> anyhow::Result<Report> {
    let config = cluster.hosts()[&NodeId(1)].config.cluster.clone();
    let members = config.members.clone();
    let address = key.address(Network::Regtest);
    // Two made-up outputs of the cluster address fund a payment to the
    // test address, with change back to the cluster.
    let t3 = Instant::now();
    let destination = Address::from_str(setup::TEST_DESTINATION)?.require_network(Network::Regtest)?;
    let spend = Spend::simple(&format!("demo-funding-{seed}"), &[150_000, 75_000], &destination, 180_000, 2_500);
    let psbt = spend.psbt_bytes(key);
    let tx = scenario::submit(cluster, NodeId(2), psbt)?;
    println!("PSBT submitted to node 2: transaction {}", tx.short());
    if !scenario::wait_final(cluster, tx, 600_000) {
        bail!("transaction did not reach a final state");
    }
    let state = scenario::state_at(cluster, NodeId(2), tx);
    if state != Some(TxState::Signed) {
        bail!("transaction ended {state:?}, not Signed");
    }
    let signing_s = t3.elapsed().as_secs_f64();
    let signed = scenario::signed_tx(cluster, tx).context("signed transaction recorded")?;
    let violations = mpc_sim::checker::check(cluster, &Default::default());
    if !violations.is_empty() {
        bail!("invariant violations: {violations:?}");
    }

    let approvals = cluster.hosts()[&NodeId(2)]
        .store
        .iter()
        .filter_map(|r| match r {
            Record::OwnVote { vote, .. } | Record::Vote(vote)
                if vote.body.tx == tx && vote.body.decision.is_approve() =>
            {
                Some(Approval {
                    voter: vote.body.voter.0,
                    vote_key_hex: hex::encode(members[&vote.body.voter].vote_key),
                    signature_hex: hex::encode(vote.signature),
                })
            }
            _ => None,
        })
        .collect();
    let presignatures = cluster
        .observed(|o| matches!(o, Observation::PartialSignatureReleased { tx: t, .. } if *t == tx))
        .into_iter()
        .filter_map(|(_, o)| match o {
            Observation::PartialSignatureReleased { presig, .. } => Some(presig.to_string()),
            _ => None,
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let report = Report {
        txid: signed.compute_txid().to_string(),
        signed_tx_hex: bitcoin::consensus::encode::serialize_hex(&signed),
        network: "regtest".into(),
        public_key_hex: key.hex(),
        address: address.to_string(),
        prevouts: spend
            .inputs
            .iter()
            .map(|(op, value)| Prevout {
                txid: op.txid.to_string(),
                vout: op.vout,
                script_pubkey_hex: hex::encode(key.script_pubkey().as_bytes()),
                value_sat: value.to_sat(),
            })
            .collect(),
        outputs: signed
            .output
            .iter()
            .map(|o| Output {
                script_pubkey_hex: hex::encode(o.script_pubkey.as_bytes()),
                address: Address::from_script(&o.script_pubkey, Network::Regtest).ok().map(|a| a.to_string()),
                value_sat: o.value.to_sat(),
            })
            .collect(),
        fee_sat: 2_500,
        cluster_id: config.cluster_id.clone(),
        tx_digest_hex: tx.to_hex(),
        cluster: ClusterSummary {
            nodes: config.n(),
            threshold: config.threshold,
            approve_quorum: config.approve_quorum,
            reject_quorum: config.reject_quorum,
        },
        approvals,
        presignatures,
        verified_with: "libbitcoinconsensus (Bitcoin Core's script interpreter, via rust-bitcoin), every input".into(),
        timings_s: Timings { signing: signing_s, ..Timings::default() },
    };
    crate::report::verify(&report)?;
    Ok(report)
}
