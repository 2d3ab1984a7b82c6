//! Real `mpc-node` processes on loopback, one directory per cluster.

use crate::fault_proxy::FaultProxy;
use mpc_core::{PoolConfig, Timeouts};
use mpc_node::cluster_init::{self, ClusterInit};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

/// What a test's cluster looks like.
#[derive(Clone, Debug)]
pub struct Options {
    pub nodes: u16,
    pub pool: PoolConfig,
    pub timeouts: Timeouts,
    /// Hand every node the TEST-ONLY fixture primes (else each generates
    /// its own in the background: half a minute of CPU per node).
    pub fixture_primes: bool,
    /// Per node id; the others use SQLite in their directory.
    pub database_urls: BTreeMap<u16, String>,
    /// Destinations every node's policy allows.
    pub allowed_destinations: Vec<String>,
    /// `RUST_LOG` for the nodes.
    pub log_filter: String,
    /// Put a [`FaultProxy`] in front of every node's QUIC port, so the
    /// test can cut links (`LocalCluster::proxy`).
    pub fault_proxy: bool,
    /// cggmp24's multiexponentiation tables, as in production (`[node]
    /// multiexp_tables`, default true): some 20 s of CPU per node at DKG
    /// for faster presigning. Off by default here, where a cluster makes a
    /// handful of presignatures; the e2e suite and the bench turn them on.
    pub multiexp_tables: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            nodes: 5,
            // Refill starts below low water: a suite that waits for four
            // ready after signing needs a low water of at least four.
            pool: PoolConfig { low_water: 4, target: 6, max: 8, parallel_sessions: 3 },
            timeouts: Timeouts::default(),
            fixture_primes: true,
            database_urls: BTreeMap::new(),
            allowed_destinations: vec![mpc_sim::setup::TEST_DESTINATION.to_string()],
            log_filter: "info".into(),
            fault_proxy: false,
            multiexp_tables: false,
        }
    }
}

/// A cluster directory and the node processes started from it.
pub struct LocalCluster {
    pub dir: PathBuf,
    pub name: String,
    pub configs: BTreeMap<u16, PathBuf>,
    pub api_addrs: BTreeMap<u16, String>,
    pub token: String,
    pub options: Options,
    /// With `Options::fault_proxy`: the links between the nodes.
    pub proxy: Option<FaultProxy>,
    children: BTreeMap<u16, Child>,
    binary: PathBuf,
}

static NEXT_BLOCK: AtomicU16 = AtomicU16::new(0);

/// Whether `port` is free on loopback for both UDP (QUIC) and TCP (API).
fn free(port: u16) -> bool {
    std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Where node `id` really listens when a fault proxy holds its advertised
/// port `peer_base + id`.
fn proxied_listen_port(peer_base: u16, id: u16) -> u16 {
    peer_base + 10 + id
}

/// Two port bases with `n` free ports after each: peers and API (and the
/// proxied nodes' real ports, see [`proxied_listen_port`]).
pub fn free_port_bases(n: u16) -> (u16, u16) {
    let salt = (std::process::id() % 97) as u16;
    loop {
        let block = NEXT_BLOCK.fetch_add(1, Ordering::SeqCst);
        let base = 20_000 + ((salt * 37 + block) % 400) * 50;
        let (peer, api) = (base, base + 20);
        if (1..=n).all(|i| free(peer + i) && free(api + i) && free(proxied_listen_port(peer, i))) {
            return (peer, api);
        }
    }
}

impl LocalCluster {
    /// Writes a fresh cluster directory for `test` (nothing started yet).
    pub fn new(test: &str, options: Options) -> LocalCluster {
        let name = format!("{test}-{}-{}", std::process::id(), NEXT_BLOCK.load(Ordering::SeqCst));
        let dir = std::env::temp_dir().join(format!("mpc-tests/{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        let (peer_base, api_base) = free_port_bases(options.nodes);
        let mut spec = ClusterInit::local(dir.clone(), options.nodes, vec![crate::etcd_endpoint()]);
        spec.cluster_id = name.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "-");
        spec.peer_port_base = peer_base;
        spec.api_port_base = api_base;
        spec.pool = options.pool.clone();
        spec.timeouts = options.timeouts.clone();
        spec.database_urls = options.database_urls.clone();
        spec.policy.allowed_destinations = options.allowed_destinations.clone();
        if options.fixture_primes {
            spec.safe_primes_file = Some(crate::fixture_primes());
        }
        let written = cluster_init::init(&spec).unwrap_or_else(|e| panic!("cluster init in {}: {e:#}", dir.display()));
        let token = std::fs::read_to_string(&written.token_file).expect("token file");
        let configs: BTreeMap<u16, PathBuf> = written.configs.into_iter().map(|(id, p)| (id.0, p)).collect();
        if !options.multiexp_tables {
            for path in configs.values() {
                let text = std::fs::read_to_string(path).expect("config");
                assert!(text.contains("multiexp_tables = true\n"), "cluster init wrote no multiexp_tables line");
                std::fs::write(path, text.replace("multiexp_tables = true\n", "multiexp_tables = false\n"))
                    .expect("config");
            }
        }
        let api_addrs = (1..=options.nodes).map(|i| (i, format!("http://127.0.0.1:{}", api_base + i))).collect();
        let proxy = options.fault_proxy.then(|| {
            let mut links = BTreeMap::new();
            for (id, path) in &configs {
                let id: u16 = *id;
                let (public, real) = (peer_base + id, proxied_listen_port(peer_base, id));
                let text = std::fs::read_to_string(path).expect("config");
                let from = format!("[transport]\nlisten = \"127.0.0.1:{public}\"");
                assert!(text.contains(&from), "node {id}'s config has no {from:?}");
                std::fs::write(path, text.replace(&from, &format!("[transport]\nlisten = \"127.0.0.1:{real}\"")))
                    .expect("config");
                let addr = |p: u16| std::net::SocketAddr::from(([127, 0, 0, 1], p));
                links.insert(id, (addr(public), addr(real)));
            }
            FaultProxy::start(&links)
        });
        LocalCluster {
            proxy,
            dir,
            name: spec.cluster_id,
            configs,
            api_addrs,
            token,
            options,
            children: BTreeMap::new(),
            binary: crate::workspace_binary("mpc-node"),
        }
    }

    pub fn ids(&self) -> Vec<u16> {
        self.configs.keys().copied().collect()
    }

    pub fn node_dir(&self, id: u16) -> PathBuf {
        self.dir.join(format!("node-{id}"))
    }

    /// Starts node `id` (its log goes to `node-<id>/node.log`, appended).
    pub fn start(&mut self, id: u16) {
        let binary = self.binary.clone();
        self.start_program(id, &binary, &[]);
    }

    /// Starts node `id` as the TEST-ONLY rogue member (`mpc-rogue`, a real
    /// member whose outgoing messages cheat by `act`).
    pub fn start_rogue(&mut self, id: u16, act: &str) {
        self.start_program(id, &crate::workspace_binary("mpc-rogue"), &["--act", act]);
    }

    fn start_program(&mut self, id: u16, program: &Path, extra: &[&str]) {
        assert!(!self.children.contains_key(&id), "node {id} is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.node_dir(id).join("node.log"))
            .expect("log file");
        let mut command = Command::new(program);
        if program == self.binary {
            command.arg("run");
        }
        let child = command
            .arg("--config")
            .arg(&self.configs[&id])
            .args(extra)
            .env("RUST_LOG", &self.options.log_filter)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
        self.children.insert(id, child);
    }

    pub fn start_all(&mut self) {
        for id in self.ids() {
            self.start(id);
        }
    }

    pub fn pid(&self, id: u16) -> u32 {
        self.children[&id].id()
    }

    pub fn is_running(&mut self, id: u16) -> bool {
        self.children.get_mut(&id).is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Sends `signal` (e.g. `libc::SIGSTOP`) to node `id`.
    pub fn signal(&self, id: u16, signal: i32) {
        let pid = self.pid(id) as i32;
        // SAFETY: kill(2) on a child of this process; no memory is involved.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
    }

    /// `kill -9`, and reaps the process.
    pub fn kill9(&mut self, id: u16) {
        if let Some(mut child) = self.children.remove(&id) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for the exit (at most `limit`).
    pub fn terminate(&mut self, id: u16, limit: Duration) -> ExitStatus {
        self.signal(id, libc::SIGTERM);
        let mut child = self.children.remove(&id).expect("running node");
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if started.elapsed() > limit {
                let _ = child.kill();
                panic!("node {id} did not exit within {limit:?} of SIGTERM:\n{}", self.log_tail(id, 30));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The node's log so far.
    pub fn log(&self, id: u16) -> String {
        std::fs::read_to_string(self.node_dir(id).join("node.log")).unwrap_or_default()
    }

    pub fn log_tail(&self, id: u16, lines: usize) -> String {
        let log = self.log(id);
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The API of node `id`.
    pub fn api(&self, id: u16) -> crate::Api {
        crate::Api::new(&self.api_addrs[&id], &self.token)
    }

    /// The node's SQLite database URL (nodes without a configured URL).
    pub fn database_url(&self, id: u16) -> String {
        self.options
            .database_urls
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("sqlite://{}?mode=rw", self.node_dir(id).join("node.db").display()))
    }

    pub fn master_key_file(&self, id: u16) -> PathBuf {
        self.node_dir(id).join("master.key")
    }

    pub fn config_path(&self, id: u16) -> &Path {
        &self.configs[&id]
    }

    /// Rewrites node `id`'s configuration (before it starts).
    pub fn edit_config(&self, id: u16, edit: impl FnOnce(String) -> String) {
        let path = &self.configs[&id];
        let text = std::fs::read_to_string(path).expect("config");
        let edited = edit(text.clone());
        assert_ne!(edited, text, "the edit of node {id}'s config changed nothing");
        std::fs::write(path, edited).expect("config");
    }
}

impl Drop for LocalCluster {
    /// Kills every node this cluster started; the directory stays when the
    /// test failed, for its logs.
    fn drop(&mut self) {
        let ids: Vec<u16> = self.children.keys().copied().collect();
        for id in ids {
            self.kill9(id);
        }
        if std::thread::panicking() {
            eprintln!("cluster {} kept for inspection in {}", self.name, self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
