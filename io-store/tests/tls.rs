//! TLS settings are honoured, not ignored: against the plain loopback test
//! servers (scripts/postgres.sh, scripts/etcd.sh), a client told to use TLS
//! must fail, promptly and saying why, where the same client without TLS
//! connects.
//!
//! ```sh
//! eval "$(scripts/postgres.sh start /tmp/mpc-pg)"; eval "$(scripts/etcd.sh start /tmp/mpc-etcd)"
//! cargo test -p mpc-io-store --test tls
//! ```

use mpc_core::NodeId;
use mpc_io_store::coord::{CoordConfig, CoordError, Coordinator, EtcdAuth, EtcdTls};
use mpc_io_store::{MasterKey, PostgresTls, SslMode, Store, StoreError};
use sqlx::Connection;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

fn env(var: &str) -> String {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!("{var} is not set: start the test servers (scripts/postgres.sh, scripts/etcd.sh) first"),
    }
}

/// A CA certificate (TEST ONLY), written to a file.
fn ca_file(label: &str) -> (PathBuf, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["etcd.test".to_string()]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let pem = params.self_signed(&key).unwrap().pem();
    let dir = std::env::temp_dir().join("mpc-io-store-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{label}-{}-ca.pem", std::process::id()));
    std::fs::write(&path, &pem).unwrap();
    (path, pem)
}

fn with_query(url: &str, query: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{query}")
}

fn test_key() -> MasterKey {
    MasterKey::from_hex(&"5a".repeat(32), "test key").unwrap()
}

#[tokio::test]
async fn postgres_verify_full_against_a_server_without_tls_is_refused() {
    let admin = env("MPC_TEST_POSTGRES");
    let (ca, _) = ca_file("pg");
    // The same server, plain: it answers (so the refusal below is the TLS
    // setting's doing) ...
    let plain = sqlx::PgConnection::connect(&with_query(&admin, "sslmode=disable")).await.expect("plain connect");
    plain.close().await.unwrap();
    // ... and `prefer` falls back to plain text, as libpq does.
    let preferred = sqlx::PgConnection::connect(&with_query(&admin, "sslmode=prefer")).await.expect("prefer");
    preferred.close().await.unwrap();

    let url = with_query(&admin, &format!("sslmode=verify-full&sslrootcert={}", ca.display()));
    let tls = PostgresTls::of_url(&url).unwrap();
    assert_eq!((tls.mode, tls.root_cert.as_deref()), (SslMode::VerifyFull, Some(ca.as_path())));
    let started = Instant::now();
    let err = Store::open(&url, test_key(), NodeId(1)).await.expect_err("a server without TLS must be refused");
    eprintln!("refused after {:?}: {err}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());
    let StoreError::Connect { source: sqlx::Error::Tls(why), .. } = &err else {
        panic!("expected a TLS error, got {err:?}");
    };
    // Not "built without TLS support": the TLS feature is compiled in and
    // the setting reached the server.
    assert!(why.to_string().contains("server does not support TLS"), "{err}");
    assert!(err.to_string().contains("sslmode=verify-full"), "the message names the URL: {err}");
}

fn etcd_config(endpoint: &str, cluster: &str) -> CoordConfig {
    let mut cfg = CoordConfig::new(vec![endpoint.to_string()], cluster, NodeId(1));
    cfg.dial_timeout = Duration::from_secs(3);
    cfg.request_timeout = Duration::from_secs(2);
    cfg
}

fn cluster(tag: &str) -> String {
    format!("test-tls-{tag}-{}", std::process::id())
}

#[tokio::test]
async fn etcd_tls_against_a_plain_server_fails_promptly_and_says_why() {
    let plain = env("MPC_TEST_ETCD");
    assert!(plain.starts_with("http://"), "{plain}");
    let name = cluster("plain-server");
    Coordinator::connect(etcd_config(&plain, &name)).await.expect("the plain server answers a plain client");

    let (_, ca_pem) = ca_file("etcd");
    let mut cfg = etcd_config(&plain.replacen("http://", "https://", 1), &name);
    cfg.tls = Some(EtcdTls { ca_pem: ca_pem.into_bytes(), client: None, server_name: Some("etcd.test".into()) });
    let started = Instant::now();
    let err = Coordinator::connect(cfg).await.expect_err("TLS to a plain server must fail");
    let took = started.elapsed();
    eprintln!("refused after {took:?}: {err}");
    // Bounded by the dial timeout (3 s) plus slack for a loaded machine.
    assert!(took < Duration::from_secs(15), "took {took:?}: {err}");
    assert!(matches!(err, CoordError::Unreachable(_)), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("with TLS") && msg.contains("does etcd serve TLS"), "{msg}");
}

#[tokio::test]
async fn an_unusable_ca_is_a_configuration_error() {
    let endpoint = env("MPC_TEST_ETCD").replacen("http://", "https://", 1);
    let mut cfg = etcd_config(&endpoint, &cluster("bad-ca"));
    let garbage = b"-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n".to_vec();
    cfg.tls = Some(EtcdTls { ca_pem: garbage, client: None, server_name: None });
    let err = Coordinator::connect(cfg).await.expect_err("an unusable CA");
    eprintln!("{err}");
    assert!(matches!(err, CoordError::Config(_)), "{err:?}");
    assert!(err.to_string().to_lowercase().contains("certificate"), "the cause is named: {err}");
}

#[tokio::test]
async fn tls_settings_with_a_plain_endpoint_are_refused_before_connecting() {
    let (_, ca_pem) = ca_file("etcd-http");
    let mut cfg = etcd_config(&env("MPC_TEST_ETCD"), &cluster("mixed"));
    cfg.tls = Some(EtcdTls { ca_pem: ca_pem.into_bytes(), client: None, server_name: None });
    let err = Coordinator::connect(cfg).await.expect_err("TLS settings with http://");
    assert!(matches!(&err, CoordError::Config(m) if m.contains("must be https://")), "{err:?}");
}

/// The test etcd has authentication off, and then etcd ignores credentials;
/// this shows the user is sent (a login is attempted and answered) and that
/// the password stays out of the error.
#[tokio::test]
async fn credentials_reach_etcd_and_stay_out_of_messages() {
    let mut cfg = etcd_config(&env("MPC_TEST_ETCD"), &cluster("auth"));
    cfg.auth = Some(EtcdAuth { user: "mpc-node-1".into(), password: Zeroizing::new("hunter2-secret".into()) });
    match Coordinator::connect(cfg).await {
        // etcd with auth disabled refuses Authenticate with
        // FAILED_PRECONDITION ("authentication is not enabled").
        Err(e) => {
            let msg = e.to_string();
            eprintln!("{msg}");
            assert!(matches!(e, CoordError::Denied(_)), "{e:?}");
            assert!(msg.contains("mpc-node-1") && !msg.contains("hunter2-secret"), "{msg}");
        }
        Ok(c) => panic!("etcd accepted a login although authentication is off: {c:?}"),
    }
}
