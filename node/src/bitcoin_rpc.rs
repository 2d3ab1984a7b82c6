//! A typed client for the parts of Bitcoin Core's JSON-RPC the node uses:
//! broadcasting a signed transaction and following it into the chain.
//!
//! Plain reqwest and serde, one method per RPC: no crate tracks Bitcoin
//! Core's versions and the `bitcoin` crate's at once, and the node needs
//! five calls. Requests are JSON-RPC 2.0 (Bitcoin Core 28 and later, and
//! Knots, answer errors with HTTP 200 and an `error` object); a 1.0-style
//! HTTP 500 with the same body is read the same way, so older servers work.
//!
//! Credentials are a user and password, or Bitcoin Core's cookie file,
//! read again after a 401 (the cookie changes when bitcoind restarts).
//! Neither is ever logged: [`RpcAuth`]'s `Debug` shows the user only.

use bitcoin::consensus::encode::serialize_hex;
use bitcoin::{BlockHash, OutPoint, Transaction, Txid};
use mpc_core::error_text::with_sources;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use url::Url;
use zeroize::Zeroizing;

/// Bitcoin Core's error codes the node tells apart (`src/rpc/protocol.h`).
pub mod codes {
    /// `RPC_INVALID_ADDRESS_OR_KEY`: e.g. no such transaction.
    pub const NOT_FOUND: i64 = -5;
    /// `RPC_VERIFY_ERROR`: e.g. inputs missing or already spent.
    pub const VERIFY_ERROR: i64 = -25;
    /// `RPC_VERIFY_REJECTED`: refused by the mempool's rules.
    pub const VERIFY_REJECTED: i64 = -26;
    /// `RPC_VERIFY_ALREADY_IN_UTXO_SET`: the transaction is in the chain.
    pub const ALREADY_IN_CHAIN: i64 = -27;
    /// `RPC_IN_WARMUP`: the node is still starting.
    pub const IN_WARMUP: i64 = -28;
}

/// How to log in to bitcoind.
#[derive(Clone)]
pub enum RpcAuth {
    UserPassword {
        user: String,
        password: Zeroizing<String>,
    },
    /// Bitcoin Core's `.cookie` (`__cookie__:<random>`), read at each login.
    CookieFile(PathBuf),
}

impl std::fmt::Debug for RpcAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RpcAuth::UserPassword { user, .. } => write!(f, "UserPassword {{ user: {user:?}, password: <redacted> }}"),
            RpcAuth::CookieFile(path) => write!(f, "CookieFile({})", path.display()),
        }
    }
}

/// What went wrong talking to bitcoind, in words an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("bitcoind at {url} is unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    #[error(
        "bitcoind at {url} refused the credentials (HTTP 401): check the RPC user and password or the cookie file"
    )]
    Unauthorized { url: String },
    #[error("bitcoind cookie file {path}: {reason}")]
    Cookie { path: String, reason: String },
    #[error("bitcoind {method}: error {code}: {message}")]
    Rpc { method: &'static str, code: i64, message: String },
    #[error("bitcoind {method}: unexpected answer (HTTP {status}): {reason}")]
    BadAnswer { method: &'static str, status: u16, reason: String },
}

impl RpcError {
    /// The RPC error code, when bitcoind answered with one.
    pub fn code(&self) -> Option<i64> {
        match self {
            RpcError::Rpc { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether bitcoind could not be asked at all (down, starting, wrong
    /// address), as opposed to having answered no.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, RpcError::Unreachable { .. }) || self.code() == Some(codes::IN_WARMUP)
    }
}

/// How a broadcast went, when bitcoind did not refuse it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Broadcast {
    /// Newly accepted into its mempool.
    Accepted(Txid),
    /// Already in its mempool or in the chain: broadcasting is idempotent,
    /// so another node (or an earlier try) having done it is success.
    AlreadyKnown(Txid),
}

/// Where bitcoind sees a transaction (`getrawtransaction <txid> 1`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxStatus {
    /// 0 while in the mempool.
    pub confirmations: u64,
    /// The block holding it, once confirmed.
    pub block_hash: Option<BlockHash>,
}

/// One unspent output (`gettxout`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Utxo {
    pub value: bitcoin::Amount,
    /// 0 when the output is created by a mempool transaction.
    pub confirmations: u64,
    pub script_pubkey: bitcoin::ScriptBuf,
}

/// Part of `getblockchaininfo`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct ChainInfo {
    /// `main`, `test`, `testnet4`, `signet` or `regtest`.
    pub chain: String,
    pub blocks: u64,
    #[serde(rename = "initialblockdownload", default)]
    pub initial_block_download: bool,
}

impl ChainInfo {
    /// Whether this is the chain of `network`.
    pub fn is_network(&self, network: bitcoin::Network) -> bool {
        self.chain == network.to_core_arg()
    }
}

/// `testmempoolaccept`'s verdict on one transaction.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct MempoolAccept {
    pub txid: Txid,
    pub allowed: bool,
    #[serde(rename = "reject-reason", default)]
    pub reject_reason: Option<String>,
}

/// A connection to one bitcoind. Cheap to clone: clones share the HTTP
/// connection pool and the cookie.
#[derive(Clone)]
pub struct BitcoinRpc {
    inner: std::sync::Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    url: Url,
    auth: RpcAuth,
    /// The cookie's `user:password` as last read.
    cookie: Mutex<Option<Zeroizing<String>>>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for BitcoinRpc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BitcoinRpc").field("url", &self.url()).field("auth", &self.inner.auth).finish()
    }
}

#[derive(Deserialize)]
struct Response {
    #[serde(default)]
    result: Value,
    #[serde(default)]
    error: Option<ErrorObject>,
}

#[derive(Deserialize)]
struct ErrorObject {
    code: i64,
    message: String,
}

impl BitcoinRpc {
    /// A client for `url` (`http://host:port`, optionally with a wallet
    /// path). Nothing is sent until the first call.
    pub fn new(url: Url, auth: RpcAuth, timeout: Duration) -> Result<BitcoinRpc, RpcError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| RpcError::Unreachable { url: redacted(&url), reason: format!("HTTP client: {e}") })?;
        let inner = Inner { http, url, auth, cookie: Mutex::new(None), next_id: AtomicU64::new(1) };
        Ok(BitcoinRpc { inner: std::sync::Arc::new(inner) })
    }

    /// The server's address, without any credentials it may carry.
    pub fn url(&self) -> String {
        redacted(&self.inner.url)
    }

    /// The same server and login, for one of its wallets
    /// (`/wallet/<name>`): wallet RPCs need it once several are loaded.
    pub fn wallet(&self, name: &str) -> BitcoinRpc {
        let mut url = self.inner.url.clone();
        url.set_path(&format!("/wallet/{name}"));
        let inner = Inner {
            http: self.inner.http.clone(),
            url,
            auth: self.inner.auth.clone(),
            cookie: Mutex::new(self.inner.cookie.lock().expect("cookie lock").clone()),
            next_id: AtomicU64::new(1),
        };
        BitcoinRpc { inner: std::sync::Arc::new(inner) }
    }

    /// Any RPC, its result decoded as `T`. The typed methods below are
    /// what the node uses; this is for the rest (tests drive bitcoind's
    /// wallet and mining with it).
    pub async fn call<T: DeserializeOwned>(&self, method: &'static str, params: Vec<Value>) -> Result<T, RpcError> {
        let value = self.call_value(method, &params, true).await?;
        serde_json::from_value(value).map_err(|e| RpcError::BadAnswer { method, status: 200, reason: e.to_string() })
    }

    async fn call_value(&self, method: &'static str, params: &[Value], retry_login: bool) -> Result<Value, RpcError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let body = json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params });
        let (user, password) = self.credentials()?;
        let sent =
            self.inner.http.post(self.inner.url.clone()).basic_auth(user, Some(password.as_str())).json(&body).send();
        let response = sent.await.map_err(|e| RpcError::Unreachable { url: self.url(), reason: with_sources(&e) })?;
        let status = response.status();
        if status == reqwest::StatusCode::UNAUTHORIZED {
            if retry_login && matches!(self.inner.auth, RpcAuth::CookieFile(_)) {
                // bitcoind may have restarted with a new cookie.
                *self.inner.cookie.lock().expect("cookie lock") = None;
                return Box::pin(self.call_value(method, params, false)).await;
            }
            return Err(RpcError::Unauthorized { url: self.url() });
        }
        let text =
            response.text().await.map_err(|e| RpcError::Unreachable { url: self.url(), reason: with_sources(&e) })?;
        let bad = |reason: String| RpcError::BadAnswer { method, status: status.as_u16(), reason };
        let parsed: Response = serde_json::from_str(&text).map_err(|e| {
            let head: String = text.chars().take(200).collect();
            bad(format!("{e}; body starts {head:?}"))
        })?;
        match parsed.error {
            Some(ErrorObject { code, message }) => Err(RpcError::Rpc { method, code, message }),
            None if status.is_success() => Ok(parsed.result),
            None => Err(bad("an HTTP error without an error object".into())),
        }
    }

    fn credentials(&self) -> Result<(String, Zeroizing<String>), RpcError> {
        match &self.inner.auth {
            RpcAuth::UserPassword { user, password } => Ok((user.clone(), password.clone())),
            RpcAuth::CookieFile(path) => {
                let mut cached = self.inner.cookie.lock().expect("cookie lock");
                if cached.is_none() {
                    let cookie_error = |reason: String| RpcError::Cookie { path: path.display().to_string(), reason };
                    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| cookie_error(e.to_string()))?);
                    if !text.trim().contains(':') {
                        return Err(cookie_error("not in the form user:password".into()));
                    }
                    *cached = Some(Zeroizing::new(text.trim().to_string()));
                }
                let cookie = cached.as_ref().expect("set above");
                let (user, password) = cookie.split_once(':').expect("checked when read");
                Ok((user.to_string(), Zeroizing::new(password.to_string())))
            }
        }
    }

    /// Which chain bitcoind follows and how far it is.
    pub async fn chain_info(&self) -> Result<ChainInfo, RpcError> {
        self.call("getblockchaininfo", vec![]).await
    }

    /// The height of bitcoind's best chain.
    pub async fn block_count(&self) -> Result<u64, RpcError> {
        self.call("getblockcount", vec![]).await
    }

    /// The hash of the block at `height` in bitcoind's best chain.
    pub async fn block_hash(&self, height: u64) -> Result<BlockHash, RpcError> {
        self.call("getblockhash", vec![json!(height)]).await
    }

    /// Hands `tx` to bitcoind for its mempool and peers. Already in the
    /// mempool or the chain is success ([`Broadcast::AlreadyKnown`]); any
    /// other refusal is an [`RpcError::Rpc`] with bitcoind's reason.
    pub async fn send_raw_transaction(&self, tx: &Transaction) -> Result<Broadcast, RpcError> {
        let txid = tx.compute_txid();
        match self.call::<Txid>("sendrawtransaction", vec![json!(serialize_hex(tx))]).await {
            Ok(got) if got == txid => Ok(Broadcast::Accepted(txid)),
            Ok(got) => Err(RpcError::BadAnswer {
                method: "sendrawtransaction",
                status: 200,
                reason: format!("answered txid {got}, the transaction's is {txid}"),
            }),
            Err(e) if is_already_known(&e) => Ok(Broadcast::AlreadyKnown(txid)),
            Err(e) => Err(e),
        }
    }

    /// Where bitcoind sees `txid`: `None` when it knows no such
    /// transaction (not in its mempool, and not in the chain; the chain
    /// is searched only with `-txindex`).
    pub async fn transaction_status(&self, txid: Txid) -> Result<Option<TxStatus>, RpcError> {
        #[derive(Deserialize)]
        struct Verbose {
            #[serde(default)]
            confirmations: u64,
            #[serde(default)]
            blockhash: Option<BlockHash>,
        }
        match self.call::<Verbose>("getrawtransaction", vec![json!(txid), json!(1)]).await {
            Ok(v) => Ok(Some(TxStatus { confirmations: v.confirmations, block_hash: v.blockhash })),
            Err(e) if e.code() == Some(codes::NOT_FOUND) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Output `vout` of `txid` if it is unspent (counting spends in the
    /// mempool when `include_mempool`).
    pub async fn tx_out(&self, txid: Txid, vout: u32, include_mempool: bool) -> Result<Option<Utxo>, RpcError> {
        #[derive(Deserialize)]
        struct Out {
            confirmations: u64,
            #[serde(with = "bitcoin::amount::serde::as_btc")]
            value: bitcoin::Amount,
            #[serde(rename = "scriptPubKey")]
            script_pub_key: Script,
        }
        #[derive(Deserialize)]
        struct Script {
            hex: String,
        }
        let out: Option<Out> = self.call("gettxout", vec![json!(txid), json!(vout), json!(include_mempool)]).await?;
        out.map(|o| {
            let script = hex::decode(&o.script_pub_key.hex).map_err(|e| RpcError::BadAnswer {
                method: "gettxout",
                status: 200,
                reason: format!("scriptPubKey hex: {e}"),
            })?;
            Ok(Utxo { value: o.value, confirmations: o.confirmations, script_pubkey: script.into() })
        })
        .transpose()
    }

    /// The mempool transaction spending `outpoint`, if any
    /// (`gettxspendingprevout`, Bitcoin Core 24 and later).
    pub async fn mempool_spender(&self, outpoint: OutPoint) -> Result<Option<Txid>, RpcError> {
        #[derive(Deserialize)]
        struct Spending {
            #[serde(default)]
            spendingtxid: Option<Txid>,
        }
        let query = json!([{ "txid": outpoint.txid, "vout": outpoint.vout }]);
        let answers: Vec<Spending> = self.call("gettxspendingprevout", vec![query]).await?;
        Ok(answers.into_iter().next().and_then(|s| s.spendingtxid))
    }

    /// The transactions of block `hash`, each with the outputs it spends
    /// (`getblock` at verbosity 2; coinbase inputs left out).
    pub async fn block_spends(&self, hash: BlockHash) -> Result<Vec<(Txid, Vec<OutPoint>)>, RpcError> {
        #[derive(Deserialize)]
        struct Block {
            tx: Vec<BlockTx>,
        }
        #[derive(Deserialize)]
        struct BlockTx {
            txid: Txid,
            vin: Vec<Input>,
        }
        #[derive(Deserialize)]
        struct Input {
            #[serde(default)]
            txid: Option<Txid>,
            #[serde(default)]
            vout: Option<u32>,
        }
        let block: Block = self.call("getblock", vec![json!(hash), json!(2)]).await?;
        Ok(block
            .tx
            .into_iter()
            .map(|t| {
                let spends = t.vin.iter().filter_map(|i| Some(OutPoint { txid: i.txid?, vout: i.vout? })).collect();
                (t.txid, spends)
            })
            .collect())
    }

    /// Whether bitcoind's mempool would take each of `txs` (nothing is
    /// broadcast).
    pub async fn test_mempool_accept(&self, txs: &[Transaction]) -> Result<Vec<MempoolAccept>, RpcError> {
        let hex: Vec<String> = txs.iter().map(serialize_hex).collect();
        self.call("testmempoolaccept", vec![json!(hex)]).await
    }
}

/// bitcoind's ways of saying it has `tx` already: in the chain (-27), or
/// in its mempool (-26 `txn-already-in-mempool`, from versions that do
/// not answer a repeat with the txid).
fn is_already_known(e: &RpcError) -> bool {
    match e {
        RpcError::Rpc { code, message, .. } => {
            *code == codes::ALREADY_IN_CHAIN
                || (*code == codes::VERIFY_REJECTED && message.contains("txn-already-in-mempool"))
                || (*code == codes::VERIFY_REJECTED && message.contains("txn-already-known"))
        }
        _ => false,
    }
}

/// `url` without user or password.
fn redacted(url: &Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_show_in_debug_or_in_the_url() {
        let auth = RpcAuth::UserPassword { user: "ops".into(), password: Zeroizing::new("hunter2".into()) };
        let url = Url::parse("http://ops:hunter2@127.0.0.1:18999/").unwrap();
        let rpc = BitcoinRpc::new(url, auth, Duration::from_secs(1)).unwrap();
        let shown = format!("{rpc:?} {}", rpc.url());
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("ops"), "the user is shown: {shown}");
    }

    #[test]
    fn a_transaction_bitcoind_already_has_counts_as_broadcast() {
        let rpc = |code, message: &str| RpcError::Rpc { method: "sendrawtransaction", code, message: message.into() };
        assert!(is_already_known(&rpc(-27, "Transaction outputs already in utxo set")));
        assert!(is_already_known(&rpc(-26, "txn-already-in-mempool")));
        assert!(!is_already_known(&rpc(-26, "txn-mempool-conflict")), "a conflict is not ours");
        assert!(!is_already_known(&rpc(-25, "bad-txns-inputs-missingorspent")));
        assert!(!is_already_known(&RpcError::Unreachable { url: "u".into(), reason: "down".into() }));
    }
}
