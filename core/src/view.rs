//! [`DurableView`]: everything a node rebuilds from its records, in a form
//! that can be compared. A store that rebuilds `RecoveredState` its own way
//! (from tables rather than from a log) is correct when the node it yields
//! has the same view as one replayed from the original records, and the
//! same start-up work. Secrets appear only as digests.

use crate::ids::{DkgId, NodeId, PresigId, SessionId, TxId};
use crate::node::{Node, OwnPresig};
use crate::record::TxState;
use crate::vote::{Decision, SignedVote};
use sha2::{Digest, Sha256};

#[derive(Debug, PartialEq, Eq)]
pub struct DurableView {
    pub next_seq: u64,
    pub primes_digest: Option<[u8; 32]>,
    pub dkg_joined: Vec<DkgId>,
    pub aux: Option<(DkgId, [u8; 32])>,
    pub key: Option<(DkgId, String, [u8; 32])>,
    pub txs: Vec<TxView>,
    /// Final transactions held as their outcome only.
    pub settled: Vec<(TxId, TxState)>,
    pub approved_by_day: Vec<(u64, u64)>,
    pub own_presigs: Vec<(PresigId, String)>,
    pub pool: Vec<PoolView>,
    pub closed_sessions: Vec<SessionId>,
    /// Signed transactions followed on chain, with their last persisted
    /// chain status.
    pub chain: Vec<(TxId, crate::chain::ChainStatus)>,
    /// What the node does first after starting: records, sends, jobs.
    pub startup: String,
}

#[derive(Debug, PartialEq, Eq)]
pub struct TxView {
    pub tx: TxId,
    pub psbt_digest: [u8; 32],
    pub proposer: NodeId,
    pub state: TxState,
    pub vote_deadline: u64,
    pub my_vote: Option<Decision>,
    pub votes: Vec<SignedVote>,
    pub equivocators: Vec<NodeId>,
    pub signed_raw: Option<Vec<u8>>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct PoolView {
    pub id: PresigId,
    pub signers: Vec<NodeId>,
    pub public_digest: Option<[u8; 32]>,
    pub ready: Vec<NodeId>,
    pub used: bool,
    pub inconsistent: bool,
}

fn digest<T: serde::Serialize>(value: &T) -> [u8; 32] {
    Sha256::digest(serde_json::to_vec(value).expect("serialisable")).into()
}

impl Node {
    /// The node's durable state (see the module docs).
    pub fn durable_view(&self) -> DurableView {
        let members: Vec<NodeId> = self.config.cluster.members.keys().copied().collect();
        DurableView {
            next_seq: self.next_seq,
            primes_digest: self.primes.as_ref().map(|p| digest(p.expose())),
            dkg_joined: self.dkg_joined.iter().copied().collect(),
            aux: self.aux.as_ref().map(|(d, a)| (*d, digest(a.expose()))),
            key: self.key.as_ref().map(|k| (k.dkg, k.group.hex(), digest(k.share.expose()))),
            txs: self
                .txs
                .iter()
                .map(|(tx, e)| TxView {
                    tx: *tx,
                    psbt_digest: Sha256::digest(&e.proposed.psbt_bytes).into(),
                    proposer: e.proposer,
                    state: e.state.clone(),
                    vote_deadline: e.vote_deadline.0,
                    my_vote: e.my_vote.clone(),
                    votes: members.iter().filter_map(|m| e.tally.vote_of(*m).cloned()).collect(),
                    equivocators: e.tally.equivocators().iter().copied().collect(),
                    signed_raw: e.signed_raw.clone(),
                })
                .collect(),
            settled: self.settled.iter().map(|(tx, s)| (*tx, s.clone())).collect(),
            chain: self.chain_watch.iter().map(|(tx, w)| (*tx, w.status.clone())).collect(),
            approved_by_day: self.approved_by_day.iter().map(|(d, a)| (*d, *a)).collect(),
            own_presigs: self
                .own_presigs
                .iter()
                .map(|(id, p)| {
                    let state = match p {
                        OwnPresig::Generating { signers } => format!("generating {signers:?}"),
                        OwnPresig::Ready { signers, share } => {
                            format!("ready {signers:?} {}", hex::encode(digest(share.expose())))
                        }
                        OwnPresig::Consumed { tx, input, message, sigma } => {
                            format!("consumed {tx} {input} {} {}", hex::encode(message), hex::encode(sigma))
                        }
                        OwnPresig::Discarded => "discarded".to_string(),
                    };
                    (*id, state)
                })
                .collect(),
            pool: self
                .pool
                .iter()
                .map(|(id, e)| PoolView {
                    id: *id,
                    signers: e.signers.clone(),
                    public_digest: e.public.as_ref().map(digest),
                    ready: e.ready.iter().copied().collect(),
                    used: e.used,
                    inconsistent: e.inconsistent,
                })
                .collect(),
            closed_sessions: self.closed_sessions.iter().copied().collect(),
            startup: format!("{:?}", self.startup),
        }
    }
}
