//! `mpc-cli certs`, run as the binary.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mpc-cli")).args(args).output().expect("run mpc-cli")
}

#[test]
fn certs_init_and_issue() {
    let dir = std::env::temp_dir().join(format!("mpc-cli-certs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
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
    assert_eq!(std::fs::metadata(dir.join("ca.key")).unwrap().permissions().mode() & 0o777, 0o600);

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
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/dir/ca.pem"));
    let _ = std::fs::remove_dir_all(dir);
}
