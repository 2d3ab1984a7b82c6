//! `mpc-node run` refuses a bad start with a clear message and exit code 2
//! (the configuration or a file it names), before it touches anything, and
//! every start draws a fresh seed.

use mpc_tests::{LocalCluster, Options};
use std::process::Command;
use std::time::{Duration, Instant};

/// Runs node 1 of `cluster` to completion (it must refuse to start).
fn refused_start(cluster: &LocalCluster) -> (i32, String) {
    let mut child = Command::new(mpc_tests::workspace_binary("mpc-node"))
        .args(["run", "--config"])
        .arg(cluster.config_path(1))
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("the node kept running on a configuration it should have refused");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).to_string())
}

fn edit_config(cluster: &LocalCluster, f: impl Fn(String) -> String) {
    let path = cluster.config_path(1);
    let text = std::fs::read_to_string(path).unwrap();
    let edited = f(text.clone());
    assert_ne!(edited, text, "the edit changed nothing");
    std::fs::write(path, edited).unwrap();
}

#[test]
fn an_unknown_field_stops_start_up_naming_file_and_field() {
    let cluster = LocalCluster::new("unknown-field", Options::default());
    edit_config(&cluster, |t| t.replacen("[transport]\n", "[transport]\nlisten_adress = \"127.0.0.1:1\"\n", 1));
    let (code, err) = refused_start(&cluster);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("node-1/node.toml"), "the file is not named: {err}");
    assert!(err.contains("transport") && err.contains("unknown field `listen_adress`"), "{err}");
}

#[test]
fn an_unsafe_quorum_is_refused() {
    let cluster = LocalCluster::new("unsafe-quorum", Options::default());
    edit_config(&cluster, |t| t.replacen("reject_quorum = 4", "reject_quorum = 3", 1));
    let (code, err) = refused_start(&cluster);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cluster.reject_quorum") && err.contains("conflicting outcomes"), "{err}");
}

#[test]
fn missing_certificate_files_are_named() {
    let cluster = LocalCluster::new("missing-cert", Options::default());
    std::fs::remove_file(cluster.dir.join("certs/node-1.pem")).unwrap();
    let (code, err) = refused_start(&cluster);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("certs/node-1.pem"), "{err}");
}

#[test]
fn a_certificate_from_another_ca_is_refused() {
    let cluster = LocalCluster::new("foreign-cert", Options::default());
    let other = cluster.dir.join("other-ca");
    mpc_io_quic_certs_init(&other);
    for file in ["node-1.pem", "node-1.key"] {
        std::fs::copy(other.join(file), cluster.dir.join("certs").join(file)).unwrap();
    }
    let (code, err) = refused_start(&cluster);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("transport"), "{err}");
    assert!(err.to_lowercase().contains("ca"), "the message does not say the CA is wrong: {err}");
}

fn mpc_io_quic_certs_init(dir: &std::path::Path) {
    let out = Command::new(mpc_tests::workspace_binary("mpc-cli"))
        .args(["certs", "init", "--nodes", "5", "--out"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_wrong_master_key_is_refused_without_printing_either_key() {
    let cluster = LocalCluster::new("wrong-master-key", Options::default());
    let url = format!("sqlite://{}?mode=rwc", cluster.node_dir(1).join("node.db").display());
    let right = std::fs::read_to_string(cluster.master_key_file(1)).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let key = mpc_io_store::MasterKey::from_hex(&right, "test").unwrap();
        mpc_io_store::Store::open(&url, key, mpc_core::NodeId(1)).await.unwrap().close().await;
    });
    let wrong = mpc_io_store::MasterKey::generate_hex();
    std::fs::write(cluster.master_key_file(1), wrong.as_bytes()).unwrap();
    let (code, err) = refused_start(&cluster);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("master key"), "{err}");
    assert!(!err.contains(right.trim()) && !err.contains(wrong.as_str()), "a key was printed: {err}");
}

#[test]
fn a_world_readable_key_file_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let cluster = LocalCluster::new("open-key", Options::default());
    std::fs::set_permissions(cluster.master_key_file(1), std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, err) = refused_start(&cluster);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("node.master_key_file") && err.contains("chmod 600"), "{err}");
}

/// DESIGN §7: every start draws 32 fresh bytes from the OS. Two nodes built
/// from one database, as two starts build them, have different seeds
/// (compared through the core's one-way fingerprint: the seed itself never
/// leaves the core).
#[test]
fn two_starts_from_one_database_draw_different_seeds() {
    let cluster = LocalCluster::new("fresh-seeds", Options::default());
    let config = mpc_node::config::Config::load(cluster.config_path(1)).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (a, b) = rt.block_on(async {
        let store = mpc_node::run::open_store(&config).await.unwrap();
        let identity = mpc_node::run::identity(&config).unwrap();
        let a = mpc_node::run::build_node(&store, &config, identity.clone()).await.unwrap();
        let b = mpc_node::run::build_node(&store, &config, identity).await.unwrap();
        store.close().await;
        (a.seed_fingerprint(), b.seed_fingerprint())
    });
    assert_ne!(a, b, "two starts drew the same seed");
}
