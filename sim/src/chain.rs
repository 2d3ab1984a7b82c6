//! A Bitcoin chain as the simulated nodes' backends see it: a mempool and
//! a best chain of blocks, mined and reorganised by the harness, with the
//! faults a real backend shows (reorgs that keep or lose their
//! transactions, mempool evictions, a wallet that double-spends an input,
//! a backend that cannot be reached).
//!
//! It answers the core's [`ChainRequest`]s the way `mpc-node`'s Bitcoin
//! Core client does: a repeated broadcast is success, a spent input is a
//! refusal, and a lookup says mempool, block (with its depth), absent, or
//! conflict. Scripts are not checked: the core checked every signature with
//! Bitcoin Core's interpreter before it called a transaction signed.

use bitcoin::hashes::Hash;
use bitcoin::{OutPoint, Transaction, Txid};
use mpc_core::{ChainReport, ChainRequest, ChainSight, NodeId};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};

/// One block of the best chain.
#[derive(Clone, Debug)]
struct Block {
    hash: String,
    txs: Vec<Transaction>,
}

/// Something that happens to the chain, at a time the harness picks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChainEvent {
    /// Mine a block with everything in the mempool.
    Mine,
    /// Replace the last `depth` blocks by `depth + 1` new ones. Their
    /// transactions go back to the mempool, unless `drop_txs` (as when the
    /// backend restarts with an empty mempool); the new blocks are empty.
    Reorg { depth: usize, drop_txs: bool },
    /// The mempool forgets everything (expiry, a restarted backend).
    EvictMempool,
    /// Another wallet spends the first input of the first mempool
    /// transaction, and that spend is mined: the transaction can never
    /// confirm.
    DoubleSpendFirstInMempool,
    /// `node`'s backend stops answering, or answers again.
    Outage { node: NodeId, down: bool },
}

#[derive(Default)]
pub struct SimChain {
    blocks: Vec<Block>,
    mempool: BTreeMap<Txid, Transaction>,
    down: BTreeSet<NodeId>,
    /// Mine a block this often (simulated ms); `None`: only when told.
    pub mine_every_ms: Option<u64>,
    last_mined_ms: u64,
    /// Events due at a simulated time, applied in order.
    scheduled: BTreeMap<u64, Vec<ChainEvent>>,
    /// Conflicting spends this chain mined, by the transaction they beat.
    pub double_spent: BTreeMap<Txid, Txid>,
    pub events_applied: Vec<(u64, ChainEvent)>,
}

impl SimChain {
    pub fn height(&self) -> usize {
        self.blocks.len()
    }

    pub fn schedule(&mut self, at_ms: u64, event: ChainEvent) {
        self.scheduled.entry(at_ms).or_default().push(event);
    }

    /// How deep the best chain holds `txid` (1: in the tip), 0 if it does
    /// not.
    pub fn confirmations(&self, txid: &Txid) -> u64 {
        self.blocks
            .iter()
            .rposition(|b| b.txs.iter().any(|t| t.compute_txid() == *txid))
            .map_or(0, |i| (self.blocks.len() - i) as u64)
    }

    pub fn in_mempool(&self, txid: &Txid) -> bool {
        self.mempool.contains_key(txid)
    }

    /// Applies what is due by `now_ms`: scheduled events, then the regular
    /// block.
    pub fn tick(&mut self, now_ms: u64) {
        while let Some(entry) = self.scheduled.first_entry() {
            if *entry.key() > now_ms {
                break;
            }
            for event in entry.remove() {
                self.apply(now_ms, event);
            }
        }
        if let Some(every) = self.mine_every_ms {
            if now_ms >= self.last_mined_ms + every {
                self.apply(now_ms, ChainEvent::Mine);
            }
        }
    }

    pub fn apply(&mut self, now_ms: u64, event: ChainEvent) {
        match &event {
            ChainEvent::Mine => {
                self.last_mined_ms = now_ms;
                let txs = std::mem::take(&mut self.mempool).into_values().collect();
                self.push_block(txs);
            }
            ChainEvent::Reorg { depth, drop_txs } => {
                let depth = (*depth).min(self.blocks.len());
                let gone = self.blocks.split_off(self.blocks.len() - depth);
                if !drop_txs {
                    for tx in gone.into_iter().flat_map(|b| b.txs) {
                        self.mempool.insert(tx.compute_txid(), tx);
                    }
                }
                for _ in 0..=depth {
                    self.push_block(Vec::new());
                }
            }
            ChainEvent::EvictMempool => self.mempool.clear(),
            ChainEvent::DoubleSpendFirstInMempool => {
                if let Some((victim, tx)) = self.mempool.pop_first() {
                    let spend = conflicting_spend(&tx, self.blocks.len());
                    self.double_spent.insert(victim, spend.compute_txid());
                    self.push_block(vec![spend]);
                }
            }
            ChainEvent::Outage { node, down: true } => {
                self.down.insert(*node);
            }
            ChainEvent::Outage { node, down: false } => {
                self.down.remove(node);
            }
        }
        self.events_applied.push((now_ms, event));
    }

    fn push_block(&mut self, txs: Vec<Transaction>) {
        let mut h = Sha256::new();
        h.update(self.blocks.last().map_or("genesis", |b| b.hash.as_str()).as_bytes());
        h.update((self.blocks.len() as u64).to_be_bytes());
        h.update((self.events_applied.len() as u64).to_be_bytes());
        for tx in &txs {
            h.update(tx.compute_txid().as_byte_array());
        }
        self.blocks.push(Block { hash: hex::encode(h.finalize()), txs });
    }

    /// Who spends `outpoint`, other than `not`, and how deep (0: in the
    /// mempool).
    fn spender(&self, outpoint: &OutPoint, not: &Txid) -> Option<(Txid, u64)> {
        let spends =
            |t: &Transaction| t.compute_txid() != *not && t.input.iter().any(|i| i.previous_output == *outpoint);
        if let Some(t) = self.blocks.iter().flat_map(|b| &b.txs).find(|t| spends(t)) {
            let txid = t.compute_txid();
            return Some((txid, self.confirmations(&txid)));
        }
        self.mempool.values().find(|t| spends(t)).map(|t| (t.compute_txid(), 0))
    }

    /// How deep the best chain holds another transaction spending one of
    /// `tx`'s inputs (0: none in a block).
    pub fn conflict_depth(&self, tx: &Transaction) -> u64 {
        let txid = tx.compute_txid();
        tx.input
            .iter()
            .filter_map(|i| self.spender(&i.previous_output, &txid))
            .map(|(_, depth)| depth)
            .max()
            .unwrap_or(0)
    }

    /// `node`'s backend's answer to `request`.
    pub fn answer(&mut self, node: NodeId, request: &ChainRequest) -> ChainReport {
        let unreachable = || format!("backend of {node} unreachable (simulated outage)");
        let (tx, raw_tx) = match request {
            ChainRequest::Broadcast { tx, raw_tx } | ChainRequest::Check { tx, raw_tx } => (*tx, raw_tx),
        };
        let parsed: Result<Transaction, _> = bitcoin::consensus::deserialize(raw_tx);
        let Ok(signed) = parsed else {
            let reason = "TX decode failed".to_string();
            return match request {
                ChainRequest::Broadcast { .. } => ChainReport::Broadcast { tx, outcome: Err(reason) },
                ChainRequest::Check { .. } => ChainReport::Checked { tx, sight: Err(reason) },
            };
        };
        let txid = signed.compute_txid();
        let down = self.down.contains(&node);
        match request {
            ChainRequest::Broadcast { .. } => {
                let outcome = if down {
                    Err(unreachable())
                } else if self.confirmations(&txid) > 0 || self.in_mempool(&txid) {
                    Ok(())
                } else if let Some((by, _)) = signed.input.iter().find_map(|i| self.spender(&i.previous_output, &txid))
                {
                    Err(format!("bad-txns-inputs-missingorspent (spent by {by})"))
                } else {
                    self.mempool.insert(txid, signed);
                    Ok(())
                };
                ChainReport::Broadcast { tx, outcome }
            }
            ChainRequest::Check { .. } => {
                let sight = if down { Err(unreachable()) } else { Ok(self.sight(&signed)) };
                ChainReport::Checked { tx, sight }
            }
        }
    }

    fn sight(&self, signed: &Transaction) -> ChainSight {
        let txid = signed.compute_txid();
        let confirmations = self.confirmations(&txid);
        if confirmations > 0 {
            let index = self.blocks.len() - confirmations as usize;
            return ChainSight::InBlock {
                block: self.blocks[index].hash.clone(),
                height: index as u64 + 1,
                confirmations,
            };
        }
        if self.in_mempool(&txid) {
            return ChainSight::InMempool;
        }
        for (input, i) in signed.input.iter().enumerate() {
            if let Some((by, confirmations)) = self.spender(&i.previous_output, &txid) {
                return ChainSight::Conflict { input: input as u32, spender: Some(by.to_string()), confirmations };
            }
        }
        ChainSight::Absent
    }
}

/// Another wallet's transaction spending `victim`'s first input.
fn conflicting_spend(victim: &Transaction, salt: usize) -> Transaction {
    let mut spend = Transaction {
        version: bitcoin::transaction::Version::TWO,
        lock_time: bitcoin::absolute::LockTime::ZERO,
        input: vec![victim.input[0].clone()],
        output: vec![bitcoin::TxOut {
            value: bitcoin::Amount::from_sat(1_000),
            script_pubkey: bitcoin::ScriptBuf::new_op_return([salt as u8]),
        }],
    };
    spend.input[0].witness = bitcoin::Witness::new();
    spend
}

#[cfg(test)]
mod tests {
    use super::*;
    use mpc_core::TxId;

    fn tx(seed: u8) -> Transaction {
        Transaction {
            version: bitcoin::transaction::Version::TWO,
            lock_time: bitcoin::absolute::LockTime::ZERO,
            input: vec![bitcoin::TxIn {
                previous_output: OutPoint { txid: Txid::from_byte_array([seed; 32]), vout: 0 },
                ..Default::default()
            }],
            output: vec![bitcoin::TxOut {
                value: bitcoin::Amount::from_sat(5_000),
                script_pubkey: bitcoin::ScriptBuf::new(),
            }],
        }
    }

    fn ask(chain: &mut SimChain, broadcast: bool, t: &Transaction) -> ChainReport {
        let raw_tx = bitcoin::consensus::serialize(t);
        let id = TxId([1; 32]);
        let request =
            if broadcast { ChainRequest::Broadcast { tx: id, raw_tx } } else { ChainRequest::Check { tx: id, raw_tx } };
        chain.answer(NodeId(1), &request)
    }

    fn sight(chain: &mut SimChain, t: &Transaction) -> ChainSight {
        match ask(chain, false, t) {
            ChainReport::Checked { sight: Ok(s), .. } => s,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_broadcast_transaction_is_in_the_mempool_then_in_blocks_that_deepen_and_a_reorg_takes_it_back() {
        let mut chain = SimChain::default();
        let t = tx(1);
        assert_eq!(sight(&mut chain, &t), ChainSight::Absent);
        assert!(matches!(ask(&mut chain, true, &t), ChainReport::Broadcast { outcome: Ok(()), .. }));
        assert!(
            matches!(ask(&mut chain, true, &t), ChainReport::Broadcast { outcome: Ok(()), .. }),
            "repeat is success"
        );
        assert_eq!(sight(&mut chain, &t), ChainSight::InMempool);
        chain.apply(0, ChainEvent::Mine);
        chain.apply(0, ChainEvent::Mine);
        assert!(matches!(sight(&mut chain, &t), ChainSight::InBlock { confirmations: 2, height: 1, .. }));
        chain.apply(0, ChainEvent::Reorg { depth: 2, drop_txs: false });
        assert_eq!((chain.height(), sight(&mut chain, &t)), (3, ChainSight::InMempool));
        chain.apply(0, ChainEvent::Mine);
        chain.apply(0, ChainEvent::Reorg { depth: 1, drop_txs: true });
        assert_eq!(sight(&mut chain, &t), ChainSight::Absent);
    }

    #[test]
    fn a_double_spend_is_a_confirmed_conflict_and_refuses_the_broadcast() {
        let mut chain = SimChain::default();
        let t = tx(2);
        ask(&mut chain, true, &t);
        chain.apply(0, ChainEvent::DoubleSpendFirstInMempool);
        let spender = chain.double_spent[&t.compute_txid()];
        assert_eq!(
            sight(&mut chain, &t),
            ChainSight::Conflict { input: 0, spender: Some(spender.to_string()), confirmations: 1 }
        );
        let ChainReport::Broadcast { outcome: Err(reason), .. } = ask(&mut chain, true, &t) else { panic!() };
        assert!(reason.contains("missingorspent"), "{reason}");
    }

    #[test]
    fn an_outage_answers_every_request_with_the_reason() {
        let mut chain = SimChain::default();
        chain.apply(0, ChainEvent::Outage { node: NodeId(1), down: true });
        assert!(matches!(ask(&mut chain, false, &tx(3)), ChainReport::Checked { sight: Err(_), .. }));
        assert!(matches!(ask(&mut chain, true, &tx(3)), ChainReport::Broadcast { outcome: Err(_), .. }));
        assert!(!chain.in_mempool(&tx(3).compute_txid()));
        chain.apply(0, ChainEvent::Outage { node: NodeId(1), down: false });
        assert!(matches!(ask(&mut chain, true, &tx(3)), ChainReport::Broadcast { outcome: Ok(()), .. }));
    }
}
