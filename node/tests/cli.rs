//! `mpc-cli cluster init`, run as the binary (`certs` is the cluster_setup
//! suite's INFRA-002, in mpc-tests).

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mpc-cli")).args(args).output().expect("run mpc-cli")
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
