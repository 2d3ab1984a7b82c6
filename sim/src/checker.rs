//! Safety invariants checked over a cluster's durable records and
//! observations (DESIGN §5, invariants 1-4 and 6). The simulator runs the
//! same checks after every seed.

use crate::cluster::Cluster;
use mpc_core::tx::{verify_consensus, ProposedTx};
use mpc_core::{NodeId, Observation, PresigId, Record, TxId, TxState};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation(pub String);

/// Checks everything; `byzantine` names the nodes allowed to misbehave.
pub fn check(cluster: &Cluster, byzantine: &BTreeSet<NodeId>) -> Vec<Violation> {
    let mut v = Vec::new();
    no_presignature_signs_two_messages(cluster, &mut v);
    partials_only_with_certificates(cluster, byzantine, &mut v);
    no_certification_with_known_equivocators(cluster, byzantine, &mut v);
    signed_transactions_verify(cluster, &mut v);
    no_conflicting_outcomes(cluster, byzantine, &mut v);
    no_honest_node_blamed(cluster, byzantine, &mut v);
    no_illegal_transitions(cluster, &mut v);
    one_key_for_all(cluster, byzantine, &mut v);
    // Invariant 5's durability half: a restart brings back what was known.
    v.extend(cluster.recovery_violations.iter().map(|r| Violation(format!("recovery: {r}"))));
    // Checked as each confirmation or conflict is observed (see
    // `Cluster::step`).
    v.extend(cluster.chain_violations.iter().map(|r| Violation(format!("chain: {r}"))));
    v
}

/// Invariant 1: no signer's share of a presignature is used for two
/// different messages, across crashes (its records survive them). Two
/// signers of one presignature answering different messages each use their
/// own share once: that wastes the presignature but leaks nothing, and is
/// counted separately by [`split_presignatures`].
fn no_presignature_signs_two_messages(cluster: &Cluster, v: &mut Vec<Violation>) {
    let mut used: BTreeMap<(NodeId, PresigId), BTreeSet<[u8; 32]>> = BTreeMap::new();
    for (node, host) in cluster.hosts().iter() {
        for r in &host.store {
            if let Record::PresigConsumed { id, message, .. } = r {
                used.entry((*node, *id)).or_default().insert(*message);
            }
        }
    }
    for ((_, node, o), durable_len) in cluster.observations.iter().zip(&cluster.observation_store_len) {
        if let Observation::PartialSignatureReleased { presig, message, .. } = o {
            used.entry((*node, *presig)).or_default().insert(*message);
            // Durable when released: among the records made durable by then.
            let store = &cluster.hosts()[node].store;
            let durable = store[..(*durable_len).min(store.len())]
                .iter()
                .any(|r| matches!(r, Record::PresigConsumed { id, message: m, .. } if id == presig && m == message));
            if !durable {
                v.push(Violation(format!("{node} released a partial of {presig} without a durable consumption")));
            }
        }
    }
    for ((node, id), messages) in used {
        if messages.len() > 1 {
            v.push(Violation(format!("{node} used its share of {id} for {} different messages", messages.len())));
        }
    }
}

/// Every state change follows the lifecycle table (`mpc_core::lifecycle`):
/// a node that tried anything else reported it, and that is a bug.
fn no_illegal_transitions(cluster: &Cluster, v: &mut Vec<Violation>) {
    for (_, node, o) in &cluster.observations {
        if let Observation::IllegalTransition { tx, from, event } = o {
            v.push(Violation(format!("{node} tried {event:?} on {} in state {from:?}", tx.short())));
        }
    }
}

/// The group key a node adopted, from its records: the key of the share
/// of the attempt its `KeyAdopted` names.
pub fn adopted_key(store: &[Record]) -> Option<[u8; 33]> {
    let adopted = store.iter().find_map(|r| match r {
        Record::KeyAdopted { dkg } => Some(*dkg),
        _ => None,
    })?;
    store.iter().find_map(|r| match r {
        Record::KeyShare { dkg, public_key, .. } if *dkg == adopted => <[u8; 33]>::try_from(public_key.as_slice()).ok(),
        _ => None,
    })
}

/// Key confirmation's promise: however often key generation was retried,
/// every honest node that adopted a key adopted the same one, and adopted
/// at most once.
fn one_key_for_all(cluster: &Cluster, byzantine: &BTreeSet<NodeId>, v: &mut Vec<Violation>) {
    let mut keys: BTreeMap<[u8; 33], Vec<NodeId>> = BTreeMap::new();
    for (id, host) in cluster.hosts().iter().filter(|(id, _)| !byzantine.contains(id)) {
        let adoptions = host.store.iter().filter(|r| matches!(r, Record::KeyAdopted { .. })).count();
        if adoptions > 1 {
            v.push(Violation(format!("{id} adopted a key {adoptions} times")));
        }
        if let Some(key) = adopted_key(&host.store) {
            keys.entry(key).or_default().push(*id);
        }
    }
    if keys.len() > 1 {
        let split: Vec<String> = keys.iter().map(|(k, ids)| format!("{} at {ids:?}", hex::encode(&k[..4]))).collect();
        v.push(Violation(format!("honest nodes adopted different keys: {}", split.join("; "))));
    }
}

/// How a run's presignatures were used, counted once per presignature (not
/// per share).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PresigUse {
    /// Ready at one signer at least.
    pub made: usize,
    /// Every signer consumed it for the same message.
    pub served: usize,
    /// Ended without serving a signature: discarded at some signer, split
    /// between messages, or consumed by only some signers. Ready and unused
    /// at the end is not waste.
    pub wasted: usize,
}

pub fn presignature_use(cluster: &Cluster) -> PresigUse {
    let (made, served, wasted) = presignature_fates(cluster);
    PresigUse { made, served, wasted: wasted.len() }
}

/// Why each wasted presignature was lost, by cause: the first reason a
/// coordinator gave for retrying an input with it, or else the first
/// reason a signer gave for discarding it. Node names and numbers are
/// blanked so that causes add up across nodes and seeds.
pub fn waste_causes(cluster: &Cluster) -> BTreeMap<String, usize> {
    let (_, _, wasted) = presignature_fates(cluster);
    let mut retried: BTreeMap<PresigId, &str> = BTreeMap::new();
    let mut discarded: BTreeMap<PresigId, &str> = BTreeMap::new();
    for (_, _, o) in &cluster.observations {
        match o {
            Observation::SigningRetried { presig, reason, .. } => {
                retried.entry(*presig).or_insert(reason);
            }
            Observation::PresigDiscarded { id, reason } => {
                discarded.entry(*id).or_insert(reason);
            }
            _ => {}
        }
    }
    let mut causes = BTreeMap::new();
    for id in wasted {
        let cause = match (retried.get(&id), discarded.get(&id)) {
            (Some(r), _) => format!("retried: {}", blank_names(r)),
            (None, Some(d)) => format!("discarded: {}", blank_names(d)),
            (None, None) => "consumed by some signers only".to_string(),
        };
        *causes.entry(cause).or_default() += 1;
    }
    causes
}

/// `text` with digits blanked (`node-3` and `node-4` read alike) and cut
/// at its first parenthesis or brace (a refusal's details).
fn blank_names(text: &str) -> String {
    let head = text.split(['(', '{']).next().unwrap_or(text).trim_end();
    let mut out = String::with_capacity(head.len());
    for c in head.chars() {
        if c.is_ascii_digit() {
            if !out.ends_with('#') {
                out.push('#');
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Presignatures made, served, and the wasted ones (see [`PresigUse`]).
fn presignature_fates(cluster: &Cluster) -> (usize, usize, BTreeSet<PresigId>) {
    let mut signers: BTreeMap<PresigId, usize> = BTreeMap::new();
    let mut discarded = BTreeSet::new();
    let mut consumed: BTreeMap<PresigId, BTreeMap<NodeId, [u8; 32]>> = BTreeMap::new();
    for (node, host) in cluster.hosts().iter() {
        for r in &host.store {
            match r {
                Record::PresigReady { id, signers: s, .. } => {
                    signers.insert(*id, s.len());
                }
                Record::PresigDiscarded { id, .. } => {
                    discarded.insert(*id);
                }
                Record::PresigConsumed { id, message, .. } => {
                    consumed.entry(*id).or_default().insert(*node, *message);
                }
                _ => {}
            }
        }
    }
    let served = |id: &PresigId, t: usize| {
        consumed.get(id).is_some_and(|c| {
            let messages: BTreeSet<&[u8; 32]> = c.values().collect();
            c.len() == t && messages.len() == 1
        })
    };
    let wasted = signers
        .iter()
        .filter(|(id, t)| !served(id, **t) && (discarded.contains(*id) || consumed.contains_key(*id)))
        .map(|(id, _)| *id)
        .collect();
    let served = signers.iter().filter(|(id, t)| served(id, **t)).count();
    (signers.len(), served, wasted)
}

/// Presignatures whose signers answered different messages (wasted, safe).
pub fn split_presignatures(cluster: &Cluster) -> usize {
    let mut used: BTreeMap<PresigId, BTreeSet<[u8; 32]>> = BTreeMap::new();
    for host in cluster.hosts().values() {
        for r in &host.store {
            if let Record::PresigConsumed { id, message, .. } = r {
                used.entry(*id).or_default().insert(*message);
            }
        }
    }
    used.values().filter(|m| m.len() > 1).count()
}

/// Invariant 2: a partial signature is released only for a transaction
/// that `qa` distinct members approved with validly signed votes (what a
/// signer can check). Whether a node wrongly counted a member it already
/// knew equivocated is checked per node by [`no_certification_with_known_equivocators`].
fn partials_only_with_certificates(cluster: &Cluster, byzantine: &BTreeSet<NodeId>, v: &mut Vec<Violation>) {
    let cfg = cluster.hosts().values().next().expect("a host").config.cluster.clone();
    let cfg = &cfg;
    let mut approvals: BTreeMap<TxId, BTreeSet<NodeId>> = BTreeMap::new();
    for host in cluster.hosts().values() {
        for r in &host.store {
            let vote = match r {
                Record::OwnVote { vote, .. } | Record::Vote(vote) => vote,
                _ => continue,
            };
            if vote.body.decision.is_approve() && vote.verify(cfg).is_ok() {
                approvals.entry(vote.body.tx).or_default().insert(vote.body.voter);
            }
        }
    }
    for (_, node, o) in &cluster.observations {
        if let Observation::PartialSignatureReleased { tx, presig, .. } = o {
            if byzantine.contains(node) {
                continue;
            }
            let have = approvals.get(tx).map_or(0, |a| a.len());
            if have < cfg.approve_quorum as usize {
                v.push(Violation(format!(
                    "{node} released a partial of {presig} for {} with only {have} approvals",
                    tx.short()
                )));
            }
        }
    }
}

/// An honest node never certifies an approval that needs the vote of a
/// member it already holds equivocation evidence against: reading each
/// node's records in the order they were made durable, when it records
/// Approved it holds `qa` approvals from members without evidence.
fn no_certification_with_known_equivocators(cluster: &Cluster, byzantine: &BTreeSet<NodeId>, v: &mut Vec<Violation>) {
    let cfg = cluster.hosts().values().next().expect("a host").config.cluster.clone();
    let cfg = &cfg;
    for (id, host) in cluster.hosts().iter().filter(|(id, _)| !byzantine.contains(id)) {
        let mut approvals: BTreeMap<TxId, BTreeSet<NodeId>> = BTreeMap::new();
        let mut evidence: BTreeMap<TxId, BTreeSet<NodeId>> = BTreeMap::new();
        for r in &host.store {
            match r {
                Record::OwnVote { vote, .. } | Record::Vote(vote) if vote.body.decision.is_approve() => {
                    approvals.entry(vote.body.tx).or_default().insert(vote.body.voter);
                }
                Record::Evidence(e) => {
                    evidence.entry(e.tx).or_default().insert(e.voter);
                }
                Record::TxState { tx, state: TxState::Approved } => {
                    let known_bad = evidence.get(tx).cloned().unwrap_or_default();
                    // Certificates a signer is shown are absorbed as votes
                    // first, so every approval path leaves its votes here.
                    let counted = approvals.get(tx).map_or(0, |a| a.difference(&known_bad).count());
                    if counted < cfg.approve_quorum as usize {
                        v.push(Violation(format!(
                            "{id} approved {} counting a member it knew equivocated ({counted} clean approvals)",
                            tx.short()
                        )));
                    }
                }
                _ => {}
            }
        }
    }
}

/// Invariant 3: every signed transaction passes Bitcoin Core's interpreter
/// and is the transaction that was voted on.
fn signed_transactions_verify(cluster: &Cluster, v: &mut Vec<Violation>) {
    for (id, host) in cluster.hosts().iter() {
        let proposals: BTreeMap<TxId, &Vec<u8>> = host
            .store
            .iter()
            .filter_map(|r| match r {
                Record::TxAccepted { tx, psbt, .. } => Some((*tx, psbt)),
                _ => None,
            })
            .collect();
        let key = adopted_key(&host.store).and_then(|b| mpc_core::tx::GroupKey::from_compressed(b).ok());
        for r in &host.store {
            let Record::SignedTx { tx, raw_tx, .. } = r else { continue };
            let (Some(psbt), Some(key)) = (proposals.get(tx), key.as_ref()) else {
                v.push(Violation(format!("{id} recorded a signed tx {} it never accepted", tx.short())));
                continue;
            };
            let proposed = ProposedTx::from_psbt(psbt, &key.script_pubkey()).expect("accepted proposals parse");
            let ok = bitcoin::consensus::encode::deserialize::<bitcoin::Transaction>(raw_tx)
                .map_err(|e| e.to_string())
                .and_then(|signed| {
                    if signed.compute_txid() != proposed.unsigned.compute_txid() {
                        return Err("not the voted transaction".into());
                    }
                    verify_consensus(&signed, &proposed.prevouts).map_err(|e| e.to_string())
                });
            if let Err(e) = ok {
                v.push(Violation(format!("{id} recorded signed tx {} that fails verification: {e}", tx.short())));
            }
        }
    }
}

/// Invariant 4: no two honest nodes hold conflicting final outcomes.
fn no_conflicting_outcomes(cluster: &Cluster, byzantine: &BTreeSet<NodeId>, v: &mut Vec<Violation>) {
    let mut outcomes: BTreeMap<TxId, BTreeMap<NodeId, TxState>> = BTreeMap::new();
    for (id, host) in cluster.hosts().iter().filter(|(id, _)| !byzantine.contains(id)) {
        for r in &host.store {
            if let Record::TxState { tx, state } = r {
                outcomes.entry(*tx).or_default().insert(*id, state.clone());
            }
        }
    }
    for (tx, states) in outcomes {
        let signed = states.values().any(|s| matches!(s, TxState::Signed | TxState::Approved | TxState::Signing));
        // A certified expiry says nobody will ever sign it: an operator
        // may resubmit. A signature anywhere makes that a double payment.
        let expired = states.values().any(|s| matches!(s, TxState::Failed(r) if r.starts_with("expired:")));
        let rejected = states.values().any(|s| *s == TxState::Rejected) || expired;
        if signed && rejected {
            v.push(Violation(format!("conflicting outcomes for {}: {states:?}", tx.short())));
        }
    }
}

/// Invariant 6 (its safety half): blame lands only on Byzantine nodes.
fn no_honest_node_blamed(cluster: &Cluster, byzantine: &BTreeSet<NodeId>, v: &mut Vec<Violation>) {
    for (observer, accused) in crate::scenario::blame(cluster) {
        if !byzantine.contains(&accused) && !byzantine.contains(&observer) {
            v.push(Violation(format!("{observer} blamed honest {accused}")));
        }
    }
}
