//! mpc-tests: the harness that runs real `mpc-node` processes for the
//! multi-process suites (TEST ONLY).
//!
//! A [`LocalCluster`] is a directory made by `mpc-cli cluster init`'s
//! library half (certificates, keys, one `node.toml` per node) on free
//! loopback ports, with each node a child process of the test. Every
//! process the harness starts is killed when the cluster is dropped, also
//! when a test fails, and each cluster has its own id, so its etcd keys
//! never meet another test's.
//!
//! The nodes are the `mpc-node` binary of this build's target directory:
//! `scripts/test.sh` builds it (`cargo build -p mpc-node --bins`) before
//! these tests run.

pub mod api;
pub mod audit;
pub mod fault_proxy;
pub mod flow;
pub mod process;
pub mod regtest;
pub mod secure_etcd;

pub use api::Api;
pub use process::{LocalCluster, Options};
pub use regtest::Regtest;

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The etcd the tests run against: `scripts/test.sh` starts one and exports
/// its URL (`scripts/etcd.sh start DIR`).
pub fn etcd_endpoint() -> String {
    std::env::var("MPC_TEST_ETCD").unwrap_or_else(|_| {
        panic!("MPC_TEST_ETCD is not set: start etcd with `eval \"$(scripts/etcd.sh start /tmp/mpc-etcd)\"`")
    })
}

/// A new, empty PostgreSQL database on the test server (`scripts/test.sh`
/// starts one and exports `MPC_TEST_POSTGRES`), as a URL for a node.
pub fn fresh_postgres_database(label: &str) -> String {
    let admin = std::env::var("MPC_TEST_POSTGRES").unwrap_or_else(|_| {
        panic!(
            "MPC_TEST_POSTGRES is not set: start PostgreSQL with `eval \"$(scripts/postgres.sh start /tmp/mpc-pg)\"`"
        )
    });
    let name = format!(
        "mpc_tests_{label}_{}_{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros()).unwrap_or(0)
    );
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&admin).await.expect("connect to the test PostgreSQL server");
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.expect("create database");
        conn.close().await.expect("close");
    });
    let (base, _) = admin.rsplit_once('/').expect("a URL with a database path");
    format!("{base}/{name}")
}

/// A binary of this workspace, built into the same target directory as
/// the running test.
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>-<hash>
    let profile_dir = exe.parent().and_then(|d| d.parent()).expect("target/<profile>");
    let bin = profile_dir.join(name);
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build -p mpc-node --bins` (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// The TEST-ONLY fixture primes: public primes made once by the real
/// protocol code, accepted on regtest only.
pub fn fixture_primes() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../sim/fixtures/test-only-safe-primes-5.json"))
}

/// Polls `f` until it returns `Some`, every `every`, for at most `limit`
/// (a guard against hangs, never a measured duration).
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(started.elapsed() < limit, "gave up waiting for {what} after {limit:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}
