//! The byzantine_scenarios suite: five real processes (SQLite) of which
//! node 4 is, in turn, the TEST-ONLY rogue member `mpc-rogue` (a real
//! member: mpc-node's start-up and core with its real certificate, vote key
//! and database, whose outgoing messages cheat). One cluster; between acts
//! node 4 restarts as the next rogue, over the same database.
//!
//! - equivocate: its vote goes to some members as cast and to others
//!   reversed, both validly signed. The honest nodes relay votes, find the
//!   two, record the evidence and name node 4: in `mpc_equivocations_total
//!   {member="4"}` and the transaction's `equivocations` in the API.
//! - forge-votes: with each vote it sends one in every other member's
//!   name: `mpc_forged_votes_total{member="4"}`, the sender, never the
//!   member the vote claims.
//! - bad-partials: its partial signatures have a bit flipped: the
//!   coordinator's check catches each (`mpc_bad_partial_signatures_total
//!   {member="4"}`) and another set signs.
//! - flood: fifty copies of every message, each followed by an abandon of a
//!   presignature it has no part in: `mpc_rejected_messages_total
//!   {member="4"}`, and the honest nodes keep signing.
//!
//! Every act: each transaction still ends Signed at the honest nodes and
//! verifies; no honest member is named in any of those counters at any
//! honest node; and from the databases, no presignature share served two
//! messages. Timeouts only guard against hangs.

use mpc_node::api::types::HealthView;
use mpc_sim::wallet::Spend;
use mpc_tests::audit::{assert_no_share_signed_two_messages, metric, records};
use mpc_tests::flow::{
    destination, dkg, signed_at, submit_psbt, transaction, wait_live, wait_pool, wait_pool_idle, MINUTES,
};
use mpc_tests::{wait_for, LocalCluster, Options};
use std::collections::BTreeMap;

const ROGUE: u16 = 4;
const HONEST: [u16; 4] = [1, 2, 3, 5];
/// The counters that name a member to blame.
const BLAME: [&str; 7] = [
    "mpc_protocol_blame_total",
    "mpc_equivocations_total",
    "mpc_forged_votes_total",
    "mpc_forged_certificates_total",
    "mpc_foreign_votes_total",
    "mpc_bad_partial_signatures_total",
    "mpc_rejected_messages_total",
];

fn spend(label: &str) -> Spend {
    Spend::simple(label, &[65_000], &destination(), 55_000, 2_000)
}

/// What every honest node's counters blame, by (counter, member).
fn blamed(c: &LocalCluster) -> BTreeMap<(String, u16), f64> {
    let mut out = BTreeMap::new();
    for node in HONEST {
        for family in BLAME {
            for member in c.ids() {
                let v = metric(c, &[node], &format!("{family}{{member=\"{member}\"}}"));
                if v > 0.0 {
                    *out.entry((family.to_string(), member)).or_default() += v;
                }
            }
        }
    }
    out
}

/// The API's view: each honest node's health lists what it caught, by
/// member and kind.
fn api_blame(c: &LocalCluster) -> Vec<(u16, u16, String)> {
    HONEST
        .iter()
        .flat_map(|n| {
            let (_, body) = c.api(*n).get_public("/api/v1/health").expect("an honest node answers");
            let h: HealthView = serde_json::from_str(&body).expect("health JSON");
            h.misbehaviour.into_iter().map(move |m| (*n, m.member, m.kind))
        })
        .collect()
}

/// Node 4 is named for `kind` in some honest node's health, and no honest
/// member is named anywhere, in the API or the metrics.
fn assert_only_the_rogue_named(c: &LocalCluster, kind: &str) {
    let api = api_blame(c);
    assert!(
        api.iter().any(|(_, member, k)| *member == ROGUE && k == kind),
        "no health names node 4 for {kind}: {api:?}"
    );
    assert!(api.iter().all(|(_, member, _)| *member == ROGUE), "an honest member named in health: {api:?}");
    let blamed = blamed(c);
    let wrongly: Vec<_> = blamed.iter().filter(|((_, member), _)| *member != ROGUE).collect();
    assert!(wrongly.is_empty(), "honest members blamed: {wrongly:?} (all: {blamed:?})");
}

/// How many times `node`'s connection to node 4 was reset by node 4's
/// new process (the transport logs each).
fn resets_from_the_rogue(c: &LocalCluster, node: u16) -> usize {
    c.log(node).lines().filter(|l| l.contains("reset the connection") && l.contains("peer=4")).count()
}

/// Once no presigning session is in flight (none dies with node 4 to
/// time out later and strike it), `kill -9` node 4 and start it again
/// (`start`), then wait until every
/// honest node has dropped its connection to the dead process: node 4's
/// new process resets it at the first packet (a keep-alive within a
/// second). Until then what they send node 4 is lost, and a signing probe
/// lost so would cost node 4 a strike that has nothing to do with the act.
fn restart_rogue_slot(c: &mut LocalCluster, start: impl FnOnce(&mut LocalCluster)) {
    wait_pool_idle(c, &c.ids());
    let before: Vec<usize> = HONEST.iter().map(|n| resets_from_the_rogue(c, *n)).collect();
    c.kill9(ROGUE);
    start(c);
    wait_live(c, &[ROGUE]);
    wait_for("every honest node to redial node 4's new process", 2 * MINUTES, || {
        HONEST.iter().zip(&before).all(|(n, b)| resets_from_the_rogue(c, *n) > *b).then_some(())
    });
}

/// Restarts node 4 as the rogue of `act`.
fn become_rogue(c: &mut LocalCluster, act: &str) {
    restart_rogue_slot(c, |c| c.start_rogue(ROGUE, act));
    assert!(c.log(ROGUE).contains("ROGUE MEMBER"), "{}", c.log_tail(ROGUE, 20));
}

#[test]
fn a_rogue_member_equivocates_forges_votes_sends_bad_partials_and_floods_and_is_named_each_time() {
    let mut options = Options::default();
    options.timeouts.signing_ms = 10_000;
    let mut c = LocalCluster::new("byzantine", options);
    c.start_all();
    wait_live(&c, &c.ids());
    let key = dkg(&c);
    wait_pool(&c, 4);
    assert!(blamed(&c).is_empty(), "blame before any cheating: {:?}", blamed(&c));

    // Equivocation.
    become_rogue(&mut c, "equivocate");
    let s = spend("byzantine-equivocate");
    let tx = submit_psbt(&c, 1, s.psbt_bytes(&key));
    signed_at(&c, &HONEST, &key, &tx, &s);
    wait_for("an honest node to catch the equivocation", 2 * MINUTES, || {
        (metric(&c, &HONEST, "mpc_equivocations_total{member=\"4\"}") > 0.0).then_some(())
    });
    let named: Vec<u16> =
        HONEST.iter().flat_map(|n| transaction(&c, *n, &tx).unwrap().equivocations).map(|e| e.voter).collect();
    assert!(!named.is_empty() && named.iter().all(|v| *v == ROGUE), "the API's evidence names {named:?}");
    assert_only_the_rogue_named(&c, "equivocation");
    eprintln!("equivocate: caught, named node 4 in {} evidence entries", named.len());

    // Forged votes.
    become_rogue(&mut c, "forge-votes");
    let s = spend("byzantine-forge");
    let tx = submit_psbt(&c, 2, s.psbt_bytes(&key));
    signed_at(&c, &HONEST, &key, &tx, &s);
    wait_for("forged votes counted against node 4", 2 * MINUTES, || {
        (metric(&c, &HONEST, "mpc_forged_votes_total{member=\"4\"}") > 0.0).then_some(())
    });
    assert_only_the_rogue_named(&c, "forged_vote");
    // The forgeries never counted: every vote an honest node recorded for
    // it verifies as its voter's (the API lists only those).
    for n in HONEST {
        let view = transaction(&c, n, &tx).unwrap();
        assert!(view.votes.iter().all(|v| v.signature_hex.len() == 128), "{view:?}");
    }

    // Bad partial signatures: repeated until node 4 was in a signing set.
    become_rogue(&mut c, "bad-partials");
    let mut caught = false;
    for round in 0..10 {
        wait_pool(&c, 3);
        let s = spend(&format!("byzantine-partials-{round}"));
        let tx = submit_psbt(&c, 3, s.psbt_bytes(&key));
        signed_at(&c, &HONEST, &key, &tx, &s);
        if metric(&c, &HONEST, "mpc_bad_partial_signatures_total{member=\"4\"}") > 0.0 {
            caught = true;
            eprintln!("bad-partials: caught in round {round}; another set signed");
            break;
        }
    }
    assert!(caught, "in 10 transactions node 4 was never in a signing set: nothing shown");
    assert_only_the_rogue_named(&c, "bad_partial_signature");

    // Flood.
    become_rogue(&mut c, "flood");
    for k in 0..3 {
        let s = spend(&format!("byzantine-flood-{k}"));
        let tx = submit_psbt(&c, 5, s.psbt_bytes(&key));
        signed_at(&c, &HONEST, &key, &tx, &s);
    }
    assert!(
        metric(&c, &HONEST, "mpc_rejected_messages_total{member=\"4\"}") > 0.0,
        "the flood's abandons went unnoticed"
    );
    assert_only_the_rogue_named(&c, "rejected_message");
    for n in HONEST {
        let (status, _) = c.api(n).get_public("/api/v1/health").expect("an honest node answers through the flood");
        assert!(status == 200 || status == 503, "node {n} health answered {status}");
    }

    // Node 4 honest again: the cluster goes on, and the databases agree
    // that no share served two messages.
    restart_rogue_slot(&mut c, |c| c.start(ROGUE));
    let s = spend("byzantine-after");
    let tx = submit_psbt(&c, 4, s.psbt_bytes(&key));
    signed_at(&c, &HONEST, &key, &tx, &s);
    eprintln!("blame at the end: {:?}", blamed(&c));
    assert_no_share_signed_two_messages(&records(&c));
}
