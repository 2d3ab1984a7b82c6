//! Bitcoin Core's own PSBT decoder is the oracle for what the cluster will
//! even look at. The `bitcoin` crate's parser is laxer than Core's in
//! places: it reads a key type as one byte where Core reads a compact size,
//! it does not tie a `non_witness_utxo` to the outpoint it stands for, and
//! it stops after the last map without looking at what follows. A PSBT
//! that one decoder accepts and another refuses is one that the cluster and
//! the wallet that made it would see differently, so the rule is: whatever
//! the regtest node's `decodepsbt` refuses, `ProposedTx::from_psbt` refuses
//! too, with an error and never a panic.
//!
//! The inputs are real wallet PSBTs: `walletcreatefundedpsbt` in a
//! watch-only descriptor wallet of a fixed test key, so they carry BIP-32
//! derivations and both UTXO forms. A seeded proptest mutates them, a
//! little at the byte level and mostly in the key-value maps themselves
//! (pairs duplicated, dropped, re-keyed or given wrong lengths, version 2
//! fields, UTXOs that contradict the unsigned transaction), and asks both
//! decoders. Unknown and proprietary fields are legal and must stay
//! accepted. A plain test names the cases where the crate's parser alone
//! would let through what Core refuses.

mod regtest;

use base64::Engine as _;
use bitcoin::consensus::encode::{deserialize, serialize};
use bitcoin::psbt::Psbt;
use bitcoin::{Amount, ScriptBuf, Transaction, TxOut};
use mpc_core::tx::{GroupKey, ProposedTx, TxError};
use mpc_node::bitcoin_rpc::BitcoinRpc;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};
use serde_json::{json, Value};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;
use std::time::Duration;

/// The test key: the generator point, valid and recognisable.
const TEST_KEY: &str = "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798";
/// The key origin the watch-only wallet gives it, so the wallet writes
/// BIP-32 derivations into its PSBTs.
const TEST_FINGERPRINT: &str = "d34db33f";
/// Twice the generator: a second valid key for extended keys.
const OTHER_KEY: &str = "02c6047f9441ed7d6d3045406e95c07cd85c778e4b8cef3ca7abac09b95c709ee5";
/// `RPC_DESERIALIZATION_ERROR`: how `decodepsbt` says a PSBT does not decode.
const RPC_DESERIALIZATION_ERROR: i64 = -22;
/// Mutants per run; the seed below makes the run the same each time for
/// the same wallet PSBTs.
const CASES: u32 = 300;
const SEED: [u8; 32] = *b"mpc-custody/psbt-oracle/seed/v1\0";

// ---------------------------------------------------------------------------
// The wallet PSBTs.

/// PSBTs made by Bitcoin Core's wallet, spending the test key's coins.
struct WalletPsbts {
    /// A one-input PSBT, then a two-input one; both pay change to the key.
    psbts: Vec<Vec<u8>>,
    script: ScriptBuf,
}

/// Made once for every test of this file: a wallet and blocks per run.
fn wallet_psbts() -> &'static WalletPsbts {
    static FIXTURE: OnceLock<WalletPsbts> = OnceLock::new();
    FIXTURE.get_or_init(|| runtime().block_on(make_wallet_psbts()))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime")
}

fn test_key() -> GroupKey {
    let bytes: [u8; 33] = hex::decode(TEST_KEY).expect("hex").try_into().expect("33 bytes");
    GroupKey::from_compressed(bytes).expect("the generator is a valid key")
}

async fn make_wallet_psbts() -> WalletPsbts {
    let key = test_key();
    let address = key.address(bitcoin::Network::Regtest).to_string();
    let node = regtest::rpc();
    let (funder, funder_address) = regtest::funded_wallet("psbt-oracle-funder", 101).await;

    let watch_name = format!("psbt-oracle-watch-{}", std::process::id());
    let _: Value =
        node.call("createwallet", vec![json!(watch_name), json!(true), json!(true)]).await.expect("createwallet");
    let watch = node.wallet(&watch_name);
    let descriptor = format!("wpkh([{TEST_FINGERPRINT}]{TEST_KEY})");
    let info: Value = node.call("getdescriptorinfo", vec![json!(descriptor)]).await.expect("getdescriptorinfo");
    let checksum = info["checksum"].as_str().expect("getdescriptorinfo gives a checksum");
    let request = json!([{ "desc": format!("{descriptor}#{checksum}"), "timestamp": "now" }]);
    let imported: Value = watch.call("importdescriptors", vec![request]).await.expect("importdescriptors");
    assert_eq!(imported[0]["success"], json!(true), "importdescriptors: {imported}");

    // Regtest halves the block reward every 150 blocks and the node is
    // shared, so each coin is a quarter of what the funder has.
    let balance: f64 = funder.call("getbalance", vec![]).await.expect("getbalance");
    let coin = (balance * 1e8).round() as u64 / 4;
    assert!(coin > 10_000, "the funder has {balance} BTC: the regtest chain is too long for its block reward");
    let btc = |sat: u64| Amount::from_sat(sat).to_btc();
    let mut sent = Vec::new();
    for _ in 0..2 {
        let params = vec![json!(address), json!(btc(coin))];
        let txid: String = funder.call("sendtoaddress", params).await.expect("sendtoaddress");
        sent.push(txid);
    }
    regtest::mine(&node, &funder_address, 1).await;
    let coins = confirmed_coins(&watch, &sent).await;

    let to: String = funder.call("getnewaddress", vec![json!(""), json!("bech32")]).await.expect("getnewaddress");
    let options = json!({ "changeAddress": address, "fee_rate": 2, "add_inputs": false });
    let mut psbts = Vec::new();
    for (inputs, pay) in [(&coins[..1], coin / 2), (&coins[..], coin * 3 / 2)] {
        let params = vec![json!(inputs), json!([{ to.clone(): btc(pay) }]), json!(0), options.clone(), json!(true)];
        let created: Value = watch.call("walletcreatefundedpsbt", params).await.expect("walletcreatefundedpsbt");
        let b64 = created["psbt"].as_str().expect("walletcreatefundedpsbt gives a psbt");
        psbts.push(base64::engine::general_purpose::STANDARD.decode(b64).expect("base64"));
    }
    WalletPsbts { psbts, script: key.script_pubkey() }
}

/// The watch-only wallet's confirmed coins from the transactions `sent`
/// this run, as `walletcreatefundedpsbt` inputs, once it has seen them all.
/// (Earlier runs' coins of the same key may show too: a descriptor
/// imported "now" is rescanned from two hours back.)
async fn confirmed_coins(watch: &BitcoinRpc, sent: &[String]) -> Vec<Value> {
    for _ in 0..100 {
        let unspent: Vec<Value> = watch.call("listunspent", vec![json!(1)]).await.expect("listunspent");
        let ours: Vec<Value> = unspent
            .iter()
            .filter(|u| sent.iter().any(|txid| u["txid"] == json!(txid)))
            .map(|u| json!({ "txid": u["txid"], "vout": u["vout"] }))
            .collect();
        if ours.len() == sent.len() {
            return ours;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the watch-only wallet never saw the coins of {sent:?} confirmed");
}

// ---------------------------------------------------------------------------
// The two decoders.

/// `decodepsbt`'s verdict: Ok, or Core's reason for refusing.
async fn core_verdict(node: &BitcoinRpc, bytes: &[u8]) -> Result<(), String> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
    match node.call::<Value>("decodepsbt", vec![json!(b64)]).await {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some(RPC_DESERIALIZATION_ERROR) => Err(e.to_string()),
        Err(e) => panic!("decodepsbt could not judge the PSBT: {e}"),
    }
}

/// `from_psbt`'s verdict, or the panic it must never raise.
fn cluster_verdict(bytes: &[u8], script: &ScriptBuf) -> Result<Result<ProposedTx, TxError>, String> {
    catch_unwind(AssertUnwindSafe(|| ProposedTx::from_psbt(bytes, script))).map_err(|panic| {
        let text =
            panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
        text.unwrap_or_else(|| "a panic without a message".into())
    })
}

// ---------------------------------------------------------------------------
// PSBT key-value maps, read and written by hand so mutations can produce
// what no encoder would.

/// One key-value pair; `raw`, when set, is written instead of the pair's
/// own encoding (a mutation's wrong length prefix).
#[derive(Clone, Debug)]
struct Pair {
    key: Vec<u8>,
    value: Vec<u8>,
    raw: Option<Vec<u8>>,
}

impl Pair {
    fn new(key: Vec<u8>, value: Vec<u8>) -> Pair {
        Pair { key, value, raw: None }
    }
}

/// The maps of a PSBT in order: global, then one per input, then one per
/// output.
#[derive(Clone, Debug)]
struct Maps(Vec<Vec<Pair>>);

const MAGIC: &[u8] = b"psbt\xff";

fn compact(n: u64) -> Vec<u8> {
    match n {
        0..=0xfc => vec![n as u8],
        0xfd..=0xffff => [&[0xfd][..], &(n as u16).to_le_bytes()].concat(),
        0x1_0000..=0xffff_ffff => [&[0xfe][..], &(n as u32).to_le_bytes()].concat(),
        _ => [&[0xff][..], &n.to_le_bytes()].concat(),
    }
}

impl Maps {
    /// Reads maps until the bytes end; None when they end inside one.
    fn parse(bytes: &[u8]) -> Option<Maps> {
        let mut rest = bytes.strip_prefix(MAGIC)?;
        let mut maps = Vec::new();
        while !rest.is_empty() {
            let mut map = Vec::new();
            loop {
                let key = read_vec(&mut rest)?;
                if key.is_empty() {
                    break;
                }
                let value = read_vec(&mut rest)?;
                map.push(Pair::new(key, value));
            }
            maps.push(map);
        }
        Some(Maps(maps))
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        for map in &self.0 {
            for pair in map {
                match &pair.raw {
                    Some(raw) => out.extend_from_slice(raw),
                    None => {
                        out.extend(compact(pair.key.len() as u64));
                        out.extend_from_slice(&pair.key);
                        out.extend(compact(pair.value.len() as u64));
                        out.extend_from_slice(&pair.value);
                    }
                }
            }
            out.push(0);
        }
        out
    }

    fn unsigned_tx(&self) -> Option<Transaction> {
        let pair = self.0.first()?.iter().find(|p| p.key == [0x00])?;
        deserialize(&pair.value).ok()
    }

    /// Indices of the input maps, as the unsigned transaction counts them.
    fn input_maps(&self) -> Vec<usize> {
        let inputs = self.unsigned_tx().map_or(0, |tx| tx.input.len());
        (1..=inputs).filter(|m| *m < self.0.len()).collect()
    }

    fn pair_mut(&mut self, map: usize, key: &[u8]) -> Option<&mut Pair> {
        self.0.get_mut(map)?.iter_mut().find(|p| p.key == key)
    }

    fn set_unsigned_tx(&mut self, tx: &Transaction) {
        if let Some(pair) = self.pair_mut(0, &[0x00]) {
            pair.value = serialize(tx);
        }
    }
}

fn read_compact(bytes: &mut &[u8]) -> Option<u64> {
    let (&first, rest) = bytes.split_first()?;
    let width = match first {
        0xfd => 2,
        0xfe => 4,
        0xff => 8,
        small => {
            *bytes = rest;
            return Some(u64::from(small));
        }
    };
    let raw = rest.get(..width)?;
    *bytes = &rest[width..];
    Some(raw.iter().rev().fold(0, |acc, b| (acc << 8) | u64::from(*b)))
}

fn read_vec(bytes: &mut &[u8]) -> Option<Vec<u8>> {
    let len = usize::try_from(read_compact(bytes)?).ok()?;
    let out = bytes.get(..len)?.to_vec();
    *bytes = &bytes[len..];
    Some(out)
}

// ---------------------------------------------------------------------------
// Mutations.

#[derive(Clone, Debug)]
enum Mutation {
    FlipBit {
        at: Index,
        bit: u8,
    },
    Truncate {
        at: Index,
    },
    Insert {
        at: Index,
        bytes: Vec<u8>,
    },
    Append {
        bytes: Vec<u8>,
    },
    DuplicatePair {
        map: Index,
        pair: Index,
    },
    RemovePair {
        map: Index,
        pair: Index,
    },
    RemoveMap {
        map: Index,
    },
    DuplicateMap {
        map: Index,
    },
    /// A key's or a value's length prefix off by `delta`.
    WrongLength {
        map: Index,
        pair: Index,
        of_value: bool,
        delta: i8,
    },
    /// A length prefix in a wider compact size than needed.
    NonCanonicalLength {
        map: Index,
        pair: Index,
        of_value: bool,
    },
    ExtendKey {
        map: Index,
        pair: Index,
        extra: Vec<u8>,
    },
    /// A key's type written as a wider, non-canonical compact size
    /// (0xfd, 0xfe or 0xff first): Core reads the number, the `bitcoin`
    /// crate reads an unknown type 0xfd..0xff.
    WidenKeyType {
        map: Index,
        pair: Index,
        width: u8,
    },
    ReplaceValue {
        map: Index,
        pair: Index,
        value: Vec<u8>,
    },
    AddField {
        map: Index,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    WitnessUtxoAmount {
        input: Index,
        delta: i64,
    },
    WitnessUtxoScript {
        input: Index,
        script: Vec<u8>,
    },
    /// Changes the previous transaction, and so its txid.
    NonWitnessUtxoAmount {
        input: Index,
        output: Index,
        delta: i64,
    },
    /// Another transaction (another input's, or the unsigned one) as the
    /// input's previous transaction.
    NonWitnessUtxoOfAnother {
        input: Index,
    },
    /// A witness item more in the previous transaction: its txid stays.
    NonWitnessUtxoWitness {
        input: Index,
        item: Vec<u8>,
    },
    UnsignedScriptSig {
        input: Index,
        script: Vec<u8>,
    },
    UnsignedVout {
        input: Index,
        vout: u32,
    },
    /// Two global xpubs, drawn from few enough choices that they often
    /// share a key and chain code and differ elsewhere.
    AddGlobalXpubs {
        xpubs: [XpubSpec; 2],
    },
    /// Legal: must stay accepted when it is the only mutation.
    AddProprietary {
        map: Index,
        identifier: Vec<u8>,
        subtype: u8,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    /// Legal: must stay accepted when it is the only mutation.
    AddUnknown {
        map: Index,
        key_type: u64,
        key: Vec<u8>,
        value: Vec<u8>,
    },
}

impl Mutation {
    fn kind(&self) -> &'static str {
        match self {
            Mutation::FlipBit { .. } => "flip a bit",
            Mutation::Truncate { .. } => "truncate",
            Mutation::Insert { .. } => "insert bytes",
            Mutation::Append { .. } => "append bytes",
            Mutation::DuplicatePair { .. } => "duplicate a pair",
            Mutation::RemovePair { .. } => "remove a pair",
            Mutation::RemoveMap { .. } => "remove a map",
            Mutation::DuplicateMap { .. } => "duplicate a map",
            Mutation::WrongLength { .. } => "wrong length prefix",
            Mutation::NonCanonicalLength { .. } => "non-canonical length",
            Mutation::ExtendKey { .. } => "extend a key",
            Mutation::WidenKeyType { .. } => "widen a key type",
            Mutation::ReplaceValue { .. } => "replace a value",
            Mutation::AddField { .. } => "add a field",
            Mutation::WitnessUtxoAmount { .. } => "witness_utxo amount",
            Mutation::WitnessUtxoScript { .. } => "witness_utxo script",
            Mutation::NonWitnessUtxoAmount { .. } => "non_witness_utxo amount",
            Mutation::NonWitnessUtxoOfAnother { .. } => "non_witness_utxo of another tx",
            Mutation::NonWitnessUtxoWitness { .. } => "non_witness_utxo witness",
            Mutation::UnsignedScriptSig { .. } => "unsigned tx scriptSig",
            Mutation::UnsignedVout { .. } => "unsigned tx vout",
            Mutation::AddGlobalXpubs { .. } => "add two global xpubs",
            Mutation::AddProprietary { .. } => "add proprietary (legal)",
            Mutation::AddUnknown { .. } => "add unknown (legal)",
        }
    }

    fn is_legal(&self) -> bool {
        matches!(self, Mutation::AddProprietary { .. } | Mutation::AddUnknown { .. })
    }

    fn apply(&self, bytes: Vec<u8>) -> Vec<u8> {
        let at = |i: &Index, len: usize| if len == 0 { 0 } else { i.index(len) };
        match self {
            Mutation::FlipBit { at: i, bit } => {
                let mut b = bytes;
                if !b.is_empty() {
                    let p = i.index(b.len());
                    b[p] ^= 1 << (bit % 8);
                }
                b
            }
            Mutation::Truncate { at: i } => bytes[..at(i, bytes.len())].to_vec(),
            Mutation::Insert { at: i, bytes: extra } => {
                let p = at(i, bytes.len() + 1);
                [&bytes[..p], extra, &bytes[p..]].concat()
            }
            Mutation::Append { bytes: extra } => [bytes.as_slice(), extra].concat(),
            _ => match Maps::parse(&bytes) {
                Some(mut maps) => {
                    self.apply_to_maps(&mut maps);
                    maps.to_bytes()
                }
                // The structure is already gone: nothing to edit.
                None => bytes,
            },
        }
    }

    fn apply_to_maps(&self, maps: &mut Maps) {
        let map_count = maps.0.len();
        let pick_map = |i: &Index| (map_count > 0).then(|| i.index(map_count));
        let inputs = maps.input_maps();
        let pick_input = |i: &Index| (!inputs.is_empty()).then(|| inputs[i.index(inputs.len())]);
        match self {
            Mutation::DuplicatePair { map, pair } => {
                if let Some(m) = pick_map(map).filter(|m| !maps.0[*m].is_empty()) {
                    let p = pair.index(maps.0[m].len());
                    let copy = maps.0[m][p].clone();
                    maps.0[m].insert(p, copy);
                }
            }
            Mutation::RemovePair { map, pair } => {
                if let Some(m) = pick_map(map).filter(|m| !maps.0[*m].is_empty()) {
                    let p = pair.index(maps.0[m].len());
                    maps.0[m].remove(p);
                }
            }
            Mutation::RemoveMap { map } => {
                if let Some(m) = pick_map(map) {
                    maps.0.remove(m);
                }
            }
            Mutation::DuplicateMap { map } => {
                if let Some(m) = pick_map(map) {
                    let copy = maps.0[m].clone();
                    maps.0.insert(m, copy);
                }
            }
            Mutation::WrongLength { map, pair, of_value, delta } => edit_pair(maps, map, pair, |p| {
                let (key_len, value_len) = (p.key.len() as i64, p.value.len() as i64);
                let (k, v) = if *of_value {
                    (key_len, (value_len + i64::from(*delta)).max(0))
                } else {
                    ((key_len + i64::from(*delta)).max(0), value_len)
                };
                let raw = [compact(k as u64), p.key.clone(), compact(v as u64), p.value.clone()].concat();
                p.raw = Some(raw);
            }),
            Mutation::NonCanonicalLength { map, pair, of_value } => edit_pair(maps, map, pair, |p| {
                let wide = |n: usize| [&[0xfd][..], &(n as u16).to_le_bytes()].concat();
                let (k, v) = if *of_value {
                    (compact(p.key.len() as u64), wide(p.value.len()))
                } else {
                    (wide(p.key.len()), compact(p.value.len() as u64))
                };
                p.raw = Some([k, p.key.clone(), v, p.value.clone()].concat());
            }),
            Mutation::ExtendKey { map, pair, extra } => edit_pair(maps, map, pair, |p| p.key.extend_from_slice(extra)),
            Mutation::WidenKeyType { map, pair, width } => edit_pair(maps, map, pair, |p| {
                let mut rest = p.key.as_slice();
                if let Some(key_type) = read_compact(&mut rest) {
                    let wide = match width % 3 {
                        0 => [&[0xfd][..], &(key_type as u16).to_le_bytes()].concat(),
                        1 => [&[0xfe][..], &(key_type as u32).to_le_bytes()].concat(),
                        _ => [&[0xff][..], &key_type.to_le_bytes()].concat(),
                    };
                    p.key = [wide.as_slice(), rest].concat();
                }
            }),
            Mutation::ReplaceValue { map, pair, value } => edit_pair(maps, map, pair, |p| p.value = value.clone()),
            Mutation::AddField { map, key, value } => {
                if let Some(m) = pick_map(map) {
                    maps.0[m].push(Pair::new(key.clone(), value.clone()));
                }
            }
            Mutation::WitnessUtxoAmount { input, delta } => {
                if let Some(pair) = pick_input(input).and_then(|m| maps.pair_mut(m, &[0x01])) {
                    if let Ok(mut out) = deserialize::<TxOut>(&pair.value) {
                        out.value = Amount::from_sat(out.value.to_sat().wrapping_add_signed(*delta));
                        pair.value = serialize(&out);
                    }
                }
            }
            Mutation::WitnessUtxoScript { input, script } => {
                if let Some(pair) = pick_input(input).and_then(|m| maps.pair_mut(m, &[0x01])) {
                    if let Ok(mut out) = deserialize::<TxOut>(&pair.value) {
                        out.script_pubkey = ScriptBuf::from_bytes(script.clone());
                        pair.value = serialize(&out);
                    }
                }
            }
            Mutation::NonWitnessUtxoAmount { input, output, delta } => {
                if let Some(pair) = pick_input(input).and_then(|m| maps.pair_mut(m, &[0x00])) {
                    if let Ok(mut tx) = deserialize::<Transaction>(&pair.value) {
                        if !tx.output.is_empty() {
                            let o = output.index(tx.output.len());
                            let value = tx.output[o].value.to_sat().wrapping_add_signed(*delta);
                            tx.output[o].value = Amount::from_sat(value);
                            pair.value = serialize(&tx);
                        }
                    }
                }
            }
            Mutation::NonWitnessUtxoOfAnother { input } => {
                let Some(m) = pick_input(input) else { return };
                let others: Vec<Vec<u8>> = inputs
                    .iter()
                    .filter(|o| **o != m)
                    .filter_map(|o| maps.0[*o].iter().find(|p| p.key == [0x00]).map(|p| p.value.clone()))
                    .collect();
                let replacement = match (others.first(), maps.unsigned_tx()) {
                    (Some(other), _) => other.clone(),
                    (None, Some(unsigned)) => serialize(&unsigned),
                    (None, None) => return,
                };
                if let Some(pair) = maps.pair_mut(m, &[0x00]) {
                    pair.value = replacement;
                }
            }
            Mutation::NonWitnessUtxoWitness { input, item } => {
                if let Some(pair) = pick_input(input).and_then(|m| maps.pair_mut(m, &[0x00])) {
                    if let Ok(mut tx) = deserialize::<Transaction>(&pair.value) {
                        let Some(first) = tx.input.first_mut() else { return };
                        first.witness.push(item.clone());
                        pair.value = serialize(&tx);
                    }
                }
            }
            Mutation::UnsignedScriptSig { input, script } => {
                if let Some(mut tx) = maps.unsigned_tx().filter(|tx| !tx.input.is_empty()) {
                    let i = input.index(tx.input.len());
                    tx.input[i].script_sig = ScriptBuf::from_bytes(script.clone());
                    maps.set_unsigned_tx(&tx);
                }
            }
            Mutation::UnsignedVout { input, vout } => {
                if let Some(mut tx) = maps.unsigned_tx().filter(|tx| !tx.input.is_empty()) {
                    let i = input.index(tx.input.len());
                    tx.input[i].previous_output.vout = *vout;
                    maps.set_unsigned_tx(&tx);
                }
            }
            Mutation::AddGlobalXpubs { xpubs } => {
                if let Some(global) = maps.0.first_mut() {
                    for xpub in xpubs {
                        global.push(Pair::new(xpub.key(), hex::decode(TEST_FINGERPRINT).expect("hex")));
                    }
                }
            }
            Mutation::AddProprietary { map, identifier, subtype, key, value } => {
                if let Some(m) = pick_map(map) {
                    let full_key =
                        [vec![0xfc], compact(identifier.len() as u64), identifier.clone(), vec![*subtype], key.clone()];
                    maps.0[m].push(Pair::new(full_key.concat(), value.clone()));
                }
            }
            Mutation::AddUnknown { map, key_type, key, value } => {
                if let Some(m) = pick_map(map) {
                    maps.0[m].push(Pair::new([compact(*key_type), key.clone()].concat(), value.clone()));
                }
            }
            Mutation::FlipBit { .. }
            | Mutation::Truncate { .. }
            | Mutation::Insert { .. }
            | Mutation::Append { .. } => {
                unreachable!("byte-level mutations are applied to the bytes")
            }
        }
    }
}

/// A BIP 32 extended public key as a `PSBT_GLOBAL_XPUB` key.
#[derive(Clone, Debug)]
struct XpubSpec {
    testnet: bool,
    depth: u8,
    child: u32,
    chain_code: u8,
    other_key: bool,
}

impl XpubSpec {
    fn key(&self) -> Vec<u8> {
        let version: [u8; 4] = if self.testnet { [0x04, 0x35, 0x87, 0xcf] } else { [0x04, 0x88, 0xb2, 0x1e] };
        let public_key = hex::decode(if self.other_key { OTHER_KEY } else { TEST_KEY }).expect("hex");
        let parent = if self.depth == 0 { [0; 4] } else { [1, 2, 3, 4] };
        let child = if self.depth == 0 { 0 } else { self.child };
        [&[0x01][..], &version, &[self.depth], &parent, &child.to_be_bytes(), &[self.chain_code; 32], &public_key]
            .concat()
    }
}

fn xpub_spec() -> impl Strategy<Value = XpubSpec> {
    (any::<bool>(), 0u8..2, 0u32..2, 0u8..2, any::<bool>()).prop_map(
        |(testnet, depth, child, chain_code, other_key)| XpubSpec { testnet, depth, child, chain_code, other_key },
    )
}

fn edit_pair(maps: &mut Maps, map: &Index, pair: &Index, edit: impl FnOnce(&mut Pair)) {
    if maps.0.is_empty() {
        return;
    }
    let m = map.index(maps.0.len());
    if maps.0[m].is_empty() {
        return;
    }
    let p = pair.index(maps.0[m].len());
    edit(&mut maps.0[m][p]);
}

fn small_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..=max)
}

/// Keys worth adding: the version 2 fields, every one-byte type, typed keys
/// of the wrong size, key types wider than a byte (canonical or not), raw
/// proprietary keys, and key types that take a public key.
fn interesting_key() -> impl Strategy<Value = Vec<u8>> {
    let v2_only = vec![0x02u8, 0x03, 0x04, 0x05, 0x06, 0x0e, 0x0f, 0x10, 0x11, 0x12];
    let pubkey = hex::decode(TEST_KEY).expect("hex");
    prop_oneof![
        prop::sample::select(v2_only).prop_map(|t| vec![t]),
        any::<u8>().prop_map(|t| vec![t]),
        (any::<u8>(), small_bytes(40)).prop_map(|(t, d)| [vec![t], d].concat()),
        (prop::sample::select(vec![0xfdu8, 0xfe, 0xff]), small_bytes(9)).prop_map(|(t, d)| [vec![t], d].concat()),
        small_bytes(6).prop_map(|d| [vec![0xfc], d].concat()),
        prop::sample::select(vec![0x02u8, 0x06, 0x01]).prop_map(move |t| [vec![t], pubkey.clone()].concat()),
    ]
}

fn interesting_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        small_bytes(12),
        prop::sample::select(vec![0u32, 1, 2, 0x81, 0x83]).prop_map(|v| v.to_le_bytes().to_vec()),
        prop::collection::vec(any::<u8>(), 31..=34),
        prop::collection::vec(any::<u8>(), 63..=66),
    ]
}

/// Key types no BIP assigns in any map (and canonical wide ones).
fn unassigned_key_type() -> impl Strategy<Value = u64> {
    prop_oneof![0x20u64..=0xfa, 0x100u64..=0xffff]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let i = any::<Index>;
    prop_oneof![
        1 => (i(), any::<u8>()).prop_map(|(at, bit)| Mutation::FlipBit { at, bit }),
        1 => i().prop_map(|at| Mutation::Truncate { at }),
        1 => (i(), prop::collection::vec(any::<u8>(), 1..8)).prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        1 => prop::collection::vec(any::<u8>(), 1..4).prop_map(|bytes| Mutation::Append { bytes }),
        2 => (i(), i()).prop_map(|(map, pair)| Mutation::DuplicatePair { map, pair }),
        1 => (i(), i()).prop_map(|(map, pair)| Mutation::RemovePair { map, pair }),
        1 => i().prop_map(|map| Mutation::RemoveMap { map }),
        1 => i().prop_map(|map| Mutation::DuplicateMap { map }),
        2 => (i(), i(), any::<bool>(), (-3i8..=3).prop_filter("off", |d| *d != 0))
            .prop_map(|(map, pair, of_value, delta)| Mutation::WrongLength { map, pair, of_value, delta }),
        1 => (i(), i(), any::<bool>()).prop_map(|(map, pair, of_value)| Mutation::NonCanonicalLength { map, pair, of_value }),
        2 => (i(), i(), prop::collection::vec(any::<u8>(), 1..4))
            .prop_map(|(map, pair, extra)| Mutation::ExtendKey { map, pair, extra }),
        2 => (i(), i(), any::<u8>()).prop_map(|(map, pair, width)| Mutation::WidenKeyType { map, pair, width }),
        2 => (i(), i(), interesting_value()).prop_map(|(map, pair, value)| Mutation::ReplaceValue { map, pair, value }),
        5 => (i(), interesting_key(), interesting_value()).prop_map(|(map, key, value)| Mutation::AddField { map, key, value }),
        1 => (i(), prop_oneof![-1000i64..1000, Just(i64::MIN), Just(21_000_000 * 100_000_000)])
            .prop_map(|(input, delta)| Mutation::WitnessUtxoAmount { input, delta }),
        1 => (i(), small_bytes(34)).prop_map(|(input, script)| Mutation::WitnessUtxoScript { input, script }),
        1 => (i(), i(), -1000i64..1000).prop_map(|(input, output, delta)| Mutation::NonWitnessUtxoAmount { input, output, delta }),
        1 => i().prop_map(|input| Mutation::NonWitnessUtxoOfAnother { input }),
        1 => (i(), small_bytes(8)).prop_map(|(input, item)| Mutation::NonWitnessUtxoWitness { input, item }),
        1 => (i(), small_bytes(4)).prop_map(|(input, script)| Mutation::UnsignedScriptSig { input, script }),
        1 => (i(), prop_oneof![0u32..4, Just(u32::MAX)]).prop_map(|(input, vout)| Mutation::UnsignedVout { input, vout }),
        1 => [xpub_spec(), xpub_spec()].prop_map(|xpubs| Mutation::AddGlobalXpubs { xpubs }),
        2 => (i(), small_bytes(5), 0u8..0xfd, small_bytes(5), small_bytes(16)).prop_map(
            |(map, identifier, subtype, key, value)| Mutation::AddProprietary { map, identifier, subtype, key, value }
        ),
        2 => (i(), unassigned_key_type(), small_bytes(8), small_bytes(16))
            .prop_map(|(map, key_type, key, value)| Mutation::AddUnknown { map, key_type, key, value }),
    ]
}

// ---------------------------------------------------------------------------
// The tests.

#[test]
fn wallet_psbts_with_bip32_derivations_are_accepted_by_core_and_by_the_cluster() {
    let fixture = wallet_psbts();
    let rt = runtime();
    let node = regtest::rpc();
    for (bytes, inputs) in fixture.psbts.iter().zip([1, 2]) {
        let psbt = Psbt::deserialize(bytes).expect("the bitcoin crate reads the wallet's PSBT");
        assert_eq!(psbt.inputs.len(), inputs);
        for input in &psbt.inputs {
            assert!(!input.bip32_derivation.is_empty(), "the wallet wrote a BIP-32 derivation: {input:?}");
            assert!(input.witness_utxo.is_some() && input.non_witness_utxo.is_some(), "{input:?}");
        }
        rt.block_on(core_verdict(&node, bytes)).expect("decodepsbt accepts the wallet's own PSBT");
        let proposed = ProposedTx::from_psbt(bytes, &fixture.script).expect("from_psbt accepts the wallet's PSBT");
        assert_eq!(proposed.prevouts.len(), inputs);
    }
}

/// Mutants per mutation kind (of the first mutation): seen, refused by
/// Core, refused by the cluster.
#[derive(Default)]
struct Tally {
    cases: u32,
    core_refused: u32,
    ours_refused: u32,
    /// Core refused, the `bitcoin` crate's parser alone accepted: the
    /// cluster's own checks were needed.
    crate_alone_accepted: u32,
    /// The cluster refused what Core accepts (its stricter rules and
    /// policy: a missing witness_utxo, a foreign input, version 2 fields).
    only_ours_refused: u32,
    by_kind: BTreeMap<&'static str, [u32; 3]>,
    /// Set at the first failure: what follows is shrinking, not cases.
    shrinking: bool,
}

impl Tally {
    fn record(&mut self, kind: &'static str, core_refused: bool, ours_refused: bool, crate_accepts: bool) {
        self.cases += 1;
        self.core_refused += u32::from(core_refused);
        self.ours_refused += u32::from(ours_refused);
        self.crate_alone_accepted += u32::from(core_refused && crate_accepts);
        self.only_ours_refused += u32::from(!core_refused && ours_refused);
        let counts = self.by_kind.entry(kind).or_default();
        counts[0] += 1;
        counts[1] += u32::from(core_refused);
        counts[2] += u32::from(ours_refused);
    }
}

#[test]
fn whatever_core_refuses_from_psbt_refuses_on_mutated_wallet_psbts() {
    let fixture = wallet_psbts();
    let rt = runtime();
    let node = regtest::rpc();
    let config = Config { cases: CASES, failure_persistence: None, max_shrink_iters: 512, ..Config::default() };
    let mut runner = TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &SEED));
    let tally = RefCell::new(Tally::default());
    let strategy = (any::<Index>(), prop::collection::vec(mutation(), 1..=3));

    let outcome = runner.run(&strategy, |(base, mutations)| {
        let mut bytes = fixture.psbts[base.index(fixture.psbts.len())].clone();
        for m in &mutations {
            bytes = m.apply(bytes);
        }
        let core = rt.block_on(core_verdict(&node, &bytes));
        let ours = cluster_verdict(&bytes, &fixture.script).map_err(|panic| {
            TestCaseError::fail(format!("from_psbt panicked: {panic}; PSBT {}", hex::encode(&bytes)))
        })?;
        let crate_accepts = Psbt::deserialize(&bytes).is_ok();

        let failure = match (&core, &ours) {
            (Err(reason), Ok(_)) => Some(format!("Core refuses ({reason}) a PSBT from_psbt accepts")),
            (core, ours) if mutations.len() == 1 && mutations[0].is_legal() && (core.is_err() || ours.is_err()) => {
                Some(format!("a legal field was refused: Core {core:?}, from_psbt {:?}", ours.as_ref().err()))
            }
            _ => None,
        };
        let mut t = tally.borrow_mut();
        if !t.shrinking {
            t.record(mutations[0].kind(), core.is_err(), ours.is_err(), crate_accepts);
        }
        t.shrinking |= failure.is_some();
        match failure {
            Some(failure) => Err(TestCaseError::fail(format!("{failure}: {}", hex::encode(&bytes)))),
            None => Ok(()),
        }
    });

    let t = tally.into_inner();
    eprintln!(
        "psbt oracle: {} mutants; Core refused {}, from_psbt refused {}; of Core's refusals the bitcoin crate alone \
         accepted {}; from_psbt alone refused {}",
        t.cases, t.core_refused, t.ours_refused, t.crate_alone_accepted, t.only_ours_refused
    );
    for (kind, [n, core, ours]) in &t.by_kind {
        eprintln!("  {kind:<32} {n:>4} mutants, Core refused {core:>4}, from_psbt refused {ours:>4}");
    }
    match outcome {
        Ok(()) => {}
        Err(TestError::Fail(reason, (base, mutations))) => {
            panic!("minimal failing case: base PSBT {}, mutations {mutations:?}\n{reason}", base.index(2))
        }
        Err(e) => panic!("{e}"),
    }
    assert!(
        t.core_refused * 5 >= t.cases,
        "Core refused only {} of {} mutants: the mutations are too benign to test anything",
        t.core_refused,
        t.cases
    );
}

/// A hand-made case the `bitcoin` crate's parser accepts and Core refuses.
struct Named {
    name: &'static str,
    bytes: Vec<u8>,
    expect: fn(&TxError) -> bool,
}

fn malformed(e: &TxError) -> bool {
    matches!(e, TxError::Malformed(_))
}

fn named_cases(two_inputs: &[u8]) -> Vec<Named> {
    let base = Maps::parse(two_inputs).expect("the wallet PSBT parses");
    let edited = |edit: &dyn Fn(&mut Maps)| {
        let mut maps = base.clone();
        edit(&mut maps);
        maps.to_bytes()
    };
    vec![
        Named {
            name: "input 0's non_witness_utxo is input 1's previous transaction",
            bytes: edited(&|maps| {
                let other = maps.pair_mut(2, &[0x00]).expect("input 1 has a non_witness_utxo").value.clone();
                maps.pair_mut(1, &[0x00]).expect("input 0 has a non_witness_utxo").value = other;
            }),
            expect: |e| matches!(e, TxError::PrevoutMismatch(0)),
        },
        Named {
            name: "input 0 spends an output its non_witness_utxo does not have",
            bytes: edited(&|maps| {
                let mut tx = maps.unsigned_tx().expect("an unsigned tx");
                tx.input[0].previous_output.vout = 1000;
                maps.set_unsigned_tx(&tx);
            }),
            expect: |e| matches!(e, TxError::PrevoutMismatch(0)),
        },
        Named { name: "a byte after the last output map", bytes: [two_inputs, &[0x00]].concat(), expect: malformed },
        Named {
            name: "a key type in a non-canonical compact size (0xfd 0x05 0x00)",
            bytes: edited(&|maps| maps.0[1].push(Pair::new(vec![0xfd, 0x05, 0x00], vec![]))),
            expect: malformed,
        },
        Named {
            name: "a key type cut short (0xfd alone)",
            bytes: edited(&|maps| maps.0[0].push(Pair::new(vec![0xfd], vec![1]))),
            expect: malformed,
        },
        Named {
            name: "a key type above Core's compact size limit",
            bytes: edited(&|maps| maps.0[3].push(Pair::new(vec![0xfe, 0, 0, 0, 0x10], vec![]))),
            expect: malformed,
        },
        Named {
            name: "two global xpubs of one key and chain code, one with mainnet and one with testnet version bytes",
            bytes: edited(&|maps| {
                for testnet in [false, true] {
                    let xpub = XpubSpec { testnet, depth: 0, child: 0, chain_code: 7, other_key: false };
                    maps.0[0].push(Pair::new(xpub.key(), hex::decode(TEST_FINGERPRINT).expect("hex")));
                }
            }),
            expect: malformed,
        },
        Named {
            name: "two global xpubs of one key and chain code at different depths",
            bytes: edited(&|maps| {
                for depth in [0, 1] {
                    let xpub = XpubSpec { testnet: false, depth, child: 1, chain_code: 7, other_key: false };
                    maps.0[0].push(Pair::new(xpub.key(), hex::decode(TEST_FINGERPRINT).expect("hex")));
                }
            }),
            expect: malformed,
        },
        Named {
            name: "a proprietary key whose subtype is a non-canonical compact size",
            bytes: edited(&|maps| maps.0[2].push(Pair::new(b"\xfc\x03abc\xfd\x01\x00".to_vec(), vec![7]))),
            expect: malformed,
        },
    ]
}

#[test]
fn cases_the_bitcoin_crate_lets_through_and_core_refuses_are_refused() {
    let fixture = wallet_psbts();
    let rt = runtime();
    let node = regtest::rpc();
    for case in named_cases(&fixture.psbts[1]) {
        let name = case.name;
        assert!(Psbt::deserialize(&case.bytes).is_ok(), "{name}: the bitcoin crate alone accepts it");
        let core = rt.block_on(core_verdict(&node, &case.bytes)).expect_err(name);
        let ours = ProposedTx::from_psbt(&case.bytes, &fixture.script).expect_err(name);
        eprintln!("{name}:\n  Core: {core}\n  from_psbt: {ours}");
        assert!((case.expect)(&ours), "{name}: from_psbt refused it, but with {ours:?}");
    }
}

/// BIP 370's fields belong to version 2 PSBTs only. Bitcoin Core 29 reads
/// them in a version 0 PSBT as unknown fields; the cluster refuses them,
/// so that a signer never approves a transaction a version 2 reader would
/// take to be another one. Core's verdict is shown, not asserted.
#[test]
fn version_2_fields_in_a_version_0_psbt_are_refused_naming_the_field() {
    let fixture = wallet_psbts();
    let rt = runtime();
    let node = regtest::rpc();
    let base = Maps::parse(&fixture.psbts[0]).expect("the wallet PSBT parses");
    let cases: [(usize, u8, Vec<u8>, &str); 3] = [
        (0, 0x02, 2u32.to_le_bytes().to_vec(), "PSBT_GLOBAL_TX_VERSION in the global map"),
        (1, 0x0e, vec![0x11; 32], "PSBT_IN_PREVIOUS_TXID in input 0"),
        (2, 0x03, 5_000u64.to_le_bytes().to_vec(), "PSBT_OUT_AMOUNT in output 0"),
    ];
    for (map, key_type, value, field) in cases {
        let mut maps = base.clone();
        maps.0[map].push(Pair::new(vec![key_type], value));
        let bytes = maps.to_bytes();
        assert!(Psbt::deserialize(&bytes).is_ok(), "{field}: the bitcoin crate alone accepts it");
        let err = ProposedTx::from_psbt(&bytes, &fixture.script).expect_err(field);
        assert!(matches!(&err, TxError::Malformed(reason) if reason.contains(field)), "{field}: {err}");
        let core = rt.block_on(core_verdict(&node, &bytes));
        eprintln!("{field}: from_psbt: {err}; Core: {}", core.err().unwrap_or_else(|| "accepted".into()));
    }
}
