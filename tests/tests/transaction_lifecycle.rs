//! The transaction_lifecycle suite: a transaction's life on a real chain, through five real `mpc-node`
//! processes and a regtest bitcoind of this test's own (so stopping it
//! does not disturb the other suites): a PSBT made by a watch-only wallet
//! of the cluster address, with two inputs and the wallet's BIP-32 origins,
//! signed while bitcoind is down; the broadcast timeout (the plan's
//! ORCH-011) marks it stalled with the reason and degrades health;
//! `testmempoolaccept` takes the signed transaction; bitcoind back, the
//! nodes rebroadcast and it confirms (ORCH-006, broadcasting
//! confirmation); `invalidateblock` takes the block away
//! and it goes back to Broadcast, then confirms in the new block; and a
//! double spend of a cluster output ends the losing transaction Failed with
//! the winner's txid. One cluster serves every phase (a DKG costs a minute
//! of CPU); each phase is a function named for the behaviour it checks.
//! Timeouts only guard against hangs.

use bitcoin::psbt::Psbt;
use mpc_core::tx::GroupKey;
use mpc_node::api::types::{TransactionView, TxStateName};
use mpc_tests::audit::{assert_no_share_signed_two_messages, records};
use mpc_tests::flow::{dkg, submit_psbt, transaction, wait_live, wait_pool, wait_state, wait_states, MINUTES};
use mpc_tests::regtest::{free_tcp_port, OwnBitcoind};
use mpc_tests::{wait_for, LocalCluster, Options, Regtest};
use serde_json::{json, Value};

/// What every phase works with.
struct Fixture {
    cluster: LocalCluster,
    bitcoind: OwnBitcoind,
    /// The watch-only wallet of the cluster address.
    wallet: Regtest,
    key: GroupKey,
    /// Where blocks are mined to (not the cluster).
    miner: String,
    /// Mature coinbase outputs of the cluster address, oldest first.
    coins: Vec<(String, u32)>,
    /// Two PSBTs spending the third coin, made before anything spends it
    /// (the wallet refuses to spend what its mempool already spends).
    double_spend: [Vec<u8>; 2],
}

impl Fixture {
    fn chain(&self) -> Regtest {
        self.bitcoind.regtest()
    }

    fn cluster_address(&self) -> String {
        self.key.address(bitcoin::Network::Regtest).to_string()
    }

    fn views(&self, tx: &str) -> Vec<TransactionView> {
        self.cluster.ids().iter().map(|id| transaction(&self.cluster, *id, tx).expect("node answers")).collect()
    }

    /// Waits until every node reports `tx` Confirmed in `block`.
    fn wait_confirmed_in(&self, tx: &str, block: &str) {
        let c = &self.cluster;
        wait_state(c, &c.ids(), tx, TxStateName::Confirmed, 2 * MINUTES);
        for id in c.ids() {
            let view = wait_for(&format!("node {id}: {tx} in block {block}"), MINUTES, || {
                // The depth comes from the node's view of bitcoind's tip,
                // which may be a poll behind the block.
                transaction(c, id, tx).filter(|v| v.block_hash.as_deref() == Some(block) && v.confirmations.is_some())
            });
            assert_eq!(view.confirmations, Some(1), "node {id}");
            assert_eq!(view.broadcast_stalled, None, "node {id}");
        }
    }
}

const DESTINATION: &str = mpc_sim::setup::TEST_DESTINATION;

#[test]
fn orch_006_orch_011_a_wallet_psbt_through_a_broadcast_timeout_confirmation_a_reorg_and_a_double_spend() {
    let mut fx = setup();
    let tx = a_wallet_psbt_with_two_inputs_is_signed_while_bitcoind_is_down(&mut fx);
    orch_011_broadcast_times_out_with_bitcoind_stopped(&fx, &tx);
    testmempoolaccept_takes_the_signed_transaction(&mut fx, &tx);
    let block = orch_006_bitcoind_recovered_the_nodes_rebroadcast_and_it_confirms(&mut fx, &tx);
    a_reorg_takes_it_back_to_broadcast_and_it_confirms_again(&fx, &tx, &block);
    a_double_spend_ends_the_loser_failed_with_the_winners_txid(&fx);
    let consumed = assert_no_share_signed_two_messages(&records(&fx.cluster));
    assert!(consumed >= 4 * 3, "four inputs signed (two and one and one), yet {consumed} consumptions recorded");
}

fn setup() -> Fixture {
    let name = format!("chain-lifecycle-{}", std::process::id());
    let bitcoind = OwnBitcoind::start(&std::env::temp_dir().join("mpc-tests").join(name).join("bitcoind"));
    let mut options = Options::default();
    options.pool.low_water = 2;
    options.pool.target = 3;
    options.pool.max = 4;
    let mut cluster = LocalCluster::new("chain", options);
    // Short timeouts so the outage shows within seconds.
    let extra = "broadcast_timeout_secs = 4\nrebroadcast_secs = 1\nrebroadcast_max_secs = 2\ntimeout_secs = 5\n";
    for id in cluster.ids() {
        let section = bitcoind.login.node_section(&cluster.node_dir(id), 1, extra);
        cluster.edit_config(id, |t| t + &section);
    }
    cluster.start_all();
    wait_live(&cluster, &cluster.ids());
    let key = dkg(&cluster);
    wait_pool(&cluster, 2);

    let chain = bitcoind.regtest();
    let wallet = chain.watch_only_wallet("cluster", &key);
    let (_, miner) = chain.funded_wallet("miner");
    // Three coinbases to the cluster address, matured by 100 blocks.
    chain.mine(3, &key.address(bitcoin::Network::Regtest).to_string());
    chain.mine(100, &miner);
    let coins = wallet.unspent();
    assert_eq!(coins.len(), 3, "the watch-only wallet sees the three coinbases");
    let change = key.address(bitcoin::Network::Regtest).to_string();
    let third = std::slice::from_ref(&coins[2]);
    let double_spend =
        [wallet.wallet_psbt(third, DESTINATION, 1.0, &change), wallet.wallet_psbt(third, DESTINATION, 2.0, &change)];
    Fixture { cluster, bitcoind, wallet, key, miner, coins, double_spend }
}

fn a_wallet_psbt_with_two_inputs_is_signed_while_bitcoind_is_down(fx: &mut Fixture) -> String {
    let psbt = fx.wallet.wallet_psbt(&fx.coins[..2], DESTINATION, 1.0, &fx.cluster_address());
    let parsed = Psbt::deserialize(&psbt).unwrap();
    assert_eq!(parsed.inputs.len(), 2);
    // What a real wallet writes beyond the minimum: the key's origin, and
    // the whole funding transaction next to the spent output.
    assert!(parsed.inputs.iter().all(|i| !i.bip32_derivation.is_empty()), "{parsed:?}");
    assert!(parsed.inputs.iter().all(|i| i.non_witness_utxo.is_some() && i.witness_utxo.is_some()));
    fx.bitcoind.stop();
    let tx = submit_psbt(&fx.cluster, 2, psbt);
    let ids = fx.cluster.ids();
    wait_state(&fx.cluster, &ids, &tx, TxStateName::Signed, 5 * MINUTES);
    tx
}

fn orch_011_broadcast_times_out_with_bitcoind_stopped(fx: &Fixture, tx: &str) {
    let c = &fx.cluster;
    for id in c.ids() {
        let view = wait_for(&format!("node {id}: {tx} marked stalled"), MINUTES, || {
            transaction(c, id, tx).filter(|v| v.broadcast_stalled.is_some())
        });
        assert_eq!(view.state, TxStateName::Signed, "node {id}: not broadcast while bitcoind is down");
        let reason = view.broadcast_stalled.unwrap();
        assert!(reason.contains("bitcoind") || reason.contains("backend"), "node {id}: an actionable reason: {reason}");
        let (_, health) = c.api(id).get_public("/api/v1/health").unwrap();
        let health: Value = serde_json::from_str(&health).unwrap();
        assert!(!health["degraded"].as_array().unwrap().is_empty(), "node {id}: degraded with the reason: {health}");
        let (_, metrics) = c.api(id).get_public("/metrics").unwrap();
        assert!(metrics.lines().any(|l| l == "mpc_broadcasts_stalled_total 1"), "node {id}: {metrics}");
    }
}

fn testmempoolaccept_takes_the_signed_transaction(fx: &mut Fixture, tx: &str) {
    let view = transaction(&fx.cluster, 2, tx).unwrap();
    let signed_hex = view.signed_tx_hex.clone().unwrap();
    // bitcoind again, on a port the nodes do not know, so they cannot
    // broadcast before the check.
    let aside = fx.bitcoind.run_on(free_tcp_port());
    let accepted = aside.call("testmempoolaccept", vec![json!([signed_hex])]);
    assert_eq!(accepted[0]["allowed"], json!(true), "{accepted}");
    assert_eq!(accepted[0]["txid"], json!(view.txid.clone().unwrap()));
    // The signed PSBT, as a wallet takes it back: complete, the same bytes.
    let finalized = aside.call("finalizepsbt", vec![json!(view.signed_psbt_base64.clone().unwrap())]);
    assert_eq!(finalized["complete"], json!(true), "{finalized}");
    assert_eq!(finalized["hex"], json!(signed_hex));
    fx.bitcoind.stop();
}

fn orch_006_bitcoind_recovered_the_nodes_rebroadcast_and_it_confirms(fx: &mut Fixture, tx: &str) -> String {
    let chain = fx.bitcoind.run_on(fx.bitcoind.port());
    let c = &fx.cluster;
    wait_state(c, &c.ids(), tx, TxStateName::Broadcast, 2 * MINUTES);
    let txid = fx.views(tx)[0].txid.clone().unwrap();
    let entry = chain.call("getmempoolentry", vec![json!(txid)]);
    assert!(entry["vsize"].as_u64().is_some(), "{entry}");
    for view in fx.views(tx) {
        assert_eq!(view.broadcast_stalled, None, "the stall mark goes once bitcoind holds it");
    }
    let block = chain.mine(1, &fx.miner).remove(0);
    fx.wait_confirmed_in(tx, &block);
    block
}

fn a_reorg_takes_it_back_to_broadcast_and_it_confirms_again(fx: &Fixture, tx: &str, block: &str) {
    let chain = fx.chain();
    chain.call("invalidateblock", vec![json!(block)]);
    let c = &fx.cluster;
    wait_states(c, &c.ids(), tx, &[TxStateName::Broadcast], 2 * MINUTES);
    for view in fx.views(tx) {
        assert_eq!(view.block_hash, None, "no block while the confirmation is lost");
    }
    let txid = fx.views(tx)[0].txid.clone().unwrap();
    assert!(chain.call("getmempoolentry", vec![json!(txid)])["vsize"].as_u64().is_some());
    // Mined to another address: the same coinbase and transactions would
    // make the very block bitcoind was told is invalid.
    let again = chain.mine(1, DESTINATION).remove(0);
    assert_ne!(again, block);
    fx.wait_confirmed_in(tx, &again);
}

fn a_double_spend_ends_the_loser_failed_with_the_winners_txid(fx: &Fixture) {
    let chain = fx.chain();
    let [first, second] = fx.double_spend.clone();
    let winner = submit_psbt(&fx.cluster, 1, first);
    let c = &fx.cluster;
    wait_state(c, &c.ids(), &winner, TxStateName::Broadcast, 5 * MINUTES);
    // The same coin again, paying another amount: signed too (the cluster
    // signs what its policy allows), but bitcoind's mempool holds the first.
    let loser = submit_psbt(c, 3, second);
    wait_states(c, &c.ids(), &loser, &[TxStateName::Signed], 5 * MINUTES);
    let winner_txid = fx.views(&winner)[0].txid.clone().unwrap();
    let block = chain.mine(1, &fx.miner).remove(0);
    fx.wait_confirmed_in(&winner, &block);
    wait_state(c, &c.ids(), &loser, TxStateName::Failed, 2 * MINUTES);
    for view in fx.views(&loser) {
        let reason = view.failure_reason.unwrap_or_default();
        assert!(reason.starts_with("conflict: input 0 spent by "), "{reason}");
        assert!(reason.contains(&winner_txid), "names the winner {winner_txid}: {reason}");
    }
}
