//! Regtest bitcoinds for the multi-process suites: the shared one
//! `scripts/test.sh` starts, or one of a test's own ([`OwnBitcoind`]) that
//! it may stop and start again; a blocking RPC client, funded and
//! watch-only wallets, and the `[bitcoin]` section that points a node at
//! one (the password in an owner-only file next to the node's config,
//! never in the config itself).

use mpc_core::tx::GroupKey;
use mpc_node::bitcoin_rpc::{BitcoinRpc, RpcAuth};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: start bitcoind with `eval \"$(scripts/bitcoind.sh start /tmp/mpc-btc)\"`")
    })
}

/// Where a bitcoind's RPC is and how to log in.
#[derive(Clone, Debug)]
pub struct Login {
    pub url: String,
    pub user: String,
    pub password: String,
}

impl Login {
    /// The shared test bitcoind (`scripts/bitcoind.sh start` exports it).
    pub fn from_env() -> Login {
        Login {
            url: env("MPC_TEST_BITCOIND_URL"),
            user: env("MPC_TEST_BITCOIND_USER"),
            password: env("MPC_TEST_BITCOIND_PASSWORD"),
        }
    }

    /// The `[bitcoin]` section for a node whose config lives in `node_dir`,
    /// looking every `poll_secs`; `extra` holds further `key = value` lines.
    pub fn node_section(&self, node_dir: &Path, poll_secs: u64, extra: &str) -> String {
        use std::os::unix::fs::PermissionsExt;
        let password_file = node_dir.join("bitcoind.password");
        std::fs::write(&password_file, format!("{}\n", self.password)).expect("password file");
        std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o600)).expect("mode 600");
        format!(
            "\n[bitcoin]\nrpc_url = \"{}\"\nrpc_user = \"{}\"\nrpc_password_file = \"{}\"\npoll_secs = {poll_secs}\n{extra}",
            self.url,
            self.user,
            password_file.display()
        )
    }
}

/// A blocking handle on the test bitcoind (or one of its wallets).
pub struct Regtest {
    rpc: BitcoinRpc,
    runtime: std::sync::Arc<tokio::runtime::Runtime>,
}

impl Regtest {
    /// The shared test bitcoind.
    pub fn connect() -> Regtest {
        Regtest::connect_to(&Login::from_env())
    }

    pub fn connect_to(login: &Login) -> Regtest {
        let url = url::Url::parse(&login.url).expect("a bitcoind URL");
        let auth = RpcAuth::UserPassword {
            user: login.user.clone(),
            password: zeroize::Zeroizing::new(login.password.clone()),
        };
        let rpc = BitcoinRpc::new(url, auth, Duration::from_secs(30)).expect("RPC client");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        Regtest { rpc, runtime: std::sync::Arc::new(runtime) }
    }

    pub fn rpc(&self) -> &BitcoinRpc {
        &self.rpc
    }

    pub fn call(&self, method: &'static str, params: Vec<Value>) -> Value {
        self.runtime
            .block_on(self.rpc.call::<Value>(method, params))
            .unwrap_or_else(|e| panic!("bitcoind {method}: {e}"))
    }

    /// A new wallet named `name` (made unique per process) with one mature
    /// coinbase, and an address of it to mine to.
    pub fn funded_wallet(&self, name: &str) -> (Regtest, String) {
        let name = format!("{name}-{}", std::process::id());
        self.call("createwallet", vec![json!(name)]);
        let wallet = Regtest { rpc: self.rpc.wallet(&name), runtime: self.runtime.clone() };
        let address = wallet.call("getnewaddress", vec![json!(""), json!("bech32")]);
        let address = address.as_str().expect("an address").to_string();
        self.call("generatetoaddress", vec![json!(101), json!(address)]);
        (wallet, address)
    }

    pub fn mine(&self, blocks: u64, to: &str) -> Vec<String> {
        let hashes = self.call("generatetoaddress", vec![json!(blocks), json!(to)]);
        hashes.as_array().expect("block hashes").iter().map(|h| h.as_str().unwrap().to_string()).collect()
    }

    /// The `[bitcoin]` section pointing a node at the shared test bitcoind.
    pub fn node_section(node_dir: &Path, poll_secs: u64) -> String {
        Login::from_env().node_section(node_dir, poll_secs, "")
    }

    /// A new watch-only descriptor wallet (no private keys, ever) of
    /// `wpkh([fingerprint]key)`: the wallet an operator keeps for the
    /// cluster address, which writes BIP-32 origins into its PSBTs.
    pub fn watch_only_wallet(&self, name: &str, key: &GroupKey) -> Regtest {
        use bitcoin::hashes::{hash160, Hash};
        let name = format!("{name}-{}", std::process::id());
        let fingerprint = hex::encode(&hash160::Hash::hash(&key.compressed)[..4]);
        let info = self.call("getdescriptorinfo", vec![json!(format!("wpkh([{fingerprint}]{})", key.hex()))]);
        let created = self.call(
            "createwallet",
            // No private keys, blank, no passphrase, no avoid_reuse,
            // descriptors, loaded again when bitcoind restarts.
            vec![json!(name), json!(true), json!(true), json!(""), json!(false), json!(true), json!(true)],
        );
        assert!(created["name"] == json!(name), "{created}");
        let wallet = Regtest { rpc: self.rpc.wallet(&name), runtime: self.runtime.clone() };
        let imported =
            wallet.call("importdescriptors", vec![json!([{ "desc": info["descriptor"], "timestamp": "now" }])]);
        assert_eq!(imported[0]["success"], json!(true), "{imported}");
        wallet
    }

    /// `walletcreatefundedpsbt` in this wallet: exactly `inputs` (txid,
    /// vout) in, `btc` to `to`, change to `change`; the PSBT's bytes.
    pub fn wallet_psbt(&self, inputs: &[(String, u32)], to: &str, btc: f64, change: &str) -> Vec<u8> {
        use base64::Engine;
        let inputs: Vec<Value> = inputs.iter().map(|(txid, vout)| json!({ "txid": txid, "vout": vout })).collect();
        let made = self.call(
            "walletcreatefundedpsbt",
            vec![
                json!(inputs),
                json!([{ to: btc }]),
                json!(0),
                json!({ "changeAddress": change, "add_inputs": false }),
            ],
        );
        base64::engine::general_purpose::STANDARD.decode(made["psbt"].as_str().expect("a PSBT")).expect("base64")
    }

    /// This wallet's spendable outputs, oldest first, as (txid, vout).
    pub fn unspent(&self) -> Vec<(String, u32)> {
        let mut all: Vec<(u64, String, u32)> = self
            .call("listunspent", vec![])
            .as_array()
            .expect("a list")
            .iter()
            .map(|u| {
                (
                    u["confirmations"].as_u64().unwrap(),
                    u["txid"].as_str().unwrap().to_string(),
                    u["vout"].as_u64().unwrap() as u32,
                )
            })
            .collect();
        all.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        all.into_iter().map(|(_, txid, vout)| (txid, vout)).collect()
    }
}

/// A regtest bitcoind of a test's own, a child process on a loopback port
/// chosen at start: stopping it does not take the shared node away from
/// the other suites, and it starts again with the same port, login and
/// chain. Its login is in its data directory's `bitcoin.conf`, never on
/// a command line. Killed when dropped.
pub struct OwnBitcoind {
    pub dir: PathBuf,
    pub login: Login,
    port: u16,
    /// The process, and the port it serves on.
    running: Option<(Child, u16)>,
}

impl OwnBitcoind {
    pub fn start(dir: &Path) -> OwnBitcoind {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir.join("data")).expect("data directory");
        let port = free_tcp_port();
        let user = format!("own{}", std::process::id());
        let password = hex::encode(rand_bytes());
        std::fs::write(dir.join("data/bitcoin.conf"), format!("[regtest]\nrpcuser={user}\nrpcpassword={password}\n"))
            .expect("bitcoin.conf");
        let login = Login { url: format!("http://127.0.0.1:{port}"), user, password };
        let mut own = OwnBitcoind { dir: dir.to_path_buf(), login, port, running: None };
        own.run_on(port);
        own
    }

    pub fn regtest(&self) -> Regtest {
        Regtest::connect_to(&self.login)
    }

    /// The port of `login`, where the nodes look for it.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Starts it again (same chain and login) on `port`: its own, or
    /// another where the nodes cannot reach it. Waits until it answers.
    pub fn run_on(&mut self, port: u16) -> Regtest {
        assert!(self.running.is_none(), "bitcoind already runs");
        let exe = std::env::var("BITCOIND_EXE").unwrap_or_else(|_| "bitcoind".into());
        let child = Command::new(&exe)
            .args(["-regtest", "-server", "-txindex", "-listen=0", "-fallbackfee=0.0001", "-printtoconsole=0"])
            .arg("-rpcbind=127.0.0.1")
            .arg("-rpcallowip=127.0.0.1")
            .arg(format!("-rpcport={port}"))
            .arg(format!("-datadir={}", self.dir.join("data").display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{exe}: {e} (set BITCOIND_EXE: scripts/bitcoind.sh install)"));
        self.running = Some((child, port));
        let chain = Regtest::connect_to(&self.login_on(port));
        crate::wait_for("the own bitcoind to answer", Duration::from_secs(60), || {
            if let Some(status) = self.running.as_mut().and_then(|(c, _)| c.try_wait().ok().flatten()) {
                panic!("bitcoind exited at start ({status}): see {}/data/regtest/debug.log", self.dir.display());
            }
            chain.runtime.block_on(chain.rpc.block_count()).ok()
        });
        chain
    }

    /// `stop` over RPC, and waits for the process to exit.
    pub fn stop(&mut self) {
        let Some((mut child, port)) = self.running.take() else { return };
        let chain = Regtest::connect_to(&self.login_on(port));
        let _ = chain.runtime.block_on(chain.rpc.call::<Value>("stop", vec![]));
        let stopped = crate::wait_for("bitcoind to exit", Duration::from_secs(60), || child.try_wait().ok().flatten());
        assert!(stopped.success(), "bitcoind exited with {stopped}");
    }

    fn login_on(&self, port: u16) -> Login {
        Login { url: format!("http://127.0.0.1:{port}"), ..self.login.clone() }
    }
}

impl Drop for OwnBitcoind {
    fn drop(&mut self) {
        if let Some((mut child, _)) = self.running.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A loopback TCP port nobody listens on (as of now).
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0)).and_then(|l| l.local_addr()).expect("a free port").port()
}

/// 24 bytes for a throwaway password, from the kernel.
fn rand_bytes() -> [u8; 24] {
    let mut bytes = [0u8; 24];
    use std::io::Read;
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).expect("/dev/urandom");
    bytes
}
