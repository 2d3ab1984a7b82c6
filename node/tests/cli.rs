//! `mpc-cli certs`, run as the binary.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mpc-cli")).args(args).output().expect("run mpc-cli")
}

#[test]
fn certs_init_and_issue() {
    let dir = std::env::temp_dir().join(format!("mpc-cli-certs-{}", std::process::id()));
    let ca_dir = dir.with_file_name(format!("mpc-cli-certs-{}-ca", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&ca_dir);
    let d = dir.to_str().unwrap();
    let out = cli(&["certs", "init", "--nodes", "5", "--out", d]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for id in 1..=5 {
        let pem = std::fs::read(dir.join(format!("node-{id}.pem"))).unwrap();
        let der = rustls_pki_types::pem::PemObject::from_pem_slice(&pem)
            .map(|c: rustls_pki_types::CertificateDer| c.to_vec());
        assert_eq!(mpc_io_quic::certs::node_id_of(&der.unwrap()).unwrap(), mpc_core::NodeId(id));
        let mode = std::fs::metadata(dir.join(format!("node-{id}.key"))).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // The CA key is kept apart from what nodes load, in an owner-only
    // directory the command names.
    assert!(!dir.join("ca.key").exists(), "the CA key is in the nodes' certificate directory");
    assert_eq!(std::fs::metadata(ca_dir.join("ca.key")).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(&ca_dir).unwrap().permissions().mode() & 0o777, 0o700);
    assert!(String::from_utf8_lossy(&out.stdout).contains(ca_dir.to_str().unwrap()));

    // A second init would replace the CA: refused.
    let again = cli(&["certs", "init", "--nodes", "5", "--out", d]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("refusing to overwrite"));

    let before = std::fs::read(dir.join("node-4.pem")).unwrap();
    let out = cli(&["certs", "issue", "--node", "4", "--dir", d]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_ne!(before, std::fs::read(dir.join("node-4.pem")).unwrap());

    let missing = cli(&["certs", "issue", "--node", "4", "--dir", "/nonexistent/dir"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/dir-ca/ca.pem"));
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(ca_dir);
}

#[test]
fn cluster_init_writes_a_startable_cluster_directory_once() {
    let dir = std::env::temp_dir().join(format!("mpc-cli-cluster-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_str().unwrap();
    let args = [
        "cluster",
        "init",
        "--nodes",
        "5",
        "--out",
        d,
        "--etcd",
        "http://127.0.0.1:2379",
        "--cluster-id",
        "c1",
        "--allow-destination",
        "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080",
    ];
    let out = cli(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for id in 1..=5u16 {
        let node = dir.join(format!("node-{id}"));
        let config = mpc_node::config::Config::load(&node.join("node.toml")).expect("generated config loads");
        assert_eq!(config.me, mpc_core::NodeId(id));
        assert_eq!(config.core.cluster.cluster_id, "c1");
        assert_eq!(
            (config.core.cluster.threshold, config.core.cluster.approve_quorum, config.core.cluster.reject_quorum),
            (3, 3, 4)
        );
        for secret in ["vote.key", "master.key"] {
            let mode = std::fs::metadata(node.join(secret)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{secret} of node {id}");
        }
        // The node's vote key matches the public key every member lists.
        let secret = mpc_node::config::read_key_file(&node.join("vote.key")).unwrap();
        let public = ed25519_dalek::SigningKey::from_bytes(&secret).verifying_key().to_bytes();
        assert_eq!(config.core.cluster.members[&mpc_core::NodeId(id)].vote_key, public);
    }
    assert_eq!(std::fs::metadata(dir.join("operator.token")).unwrap().permissions().mode() & 0o777, 0o600);
    let cli_file = std::fs::read_to_string(dir.join("mpc-cli.toml")).unwrap();
    assert!(cli_file.contains("5 = \"http://127.0.0.1:8105\""), "{cli_file}");
    // A second init would replace keys that guard funds: refused.
    let again = cli(&args);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("refusing to overwrite"));
    let _ = std::fs::remove_dir_all(dir);
}
