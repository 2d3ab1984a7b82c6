//! Mutual TLS for QUIC between nodes: both sides present a certificate from
//! the cluster CA ([`crate::certs`]), TLS 1.3 only, with the ring provider.
//!
//! - Dialling peer N, a node asks for the server name `node-N.mpc-custody`:
//!   WebPKI verification (chain to the cluster CA, validity period, name)
//!   proves the other end is node N.
//! - Accepting, a node requires a client certificate chaining to the
//!   cluster CA and valid now; the transport then takes the peer's node id
//!   from that certificate ([`crate::certs::node_id_of`]).
//!
//! A certificate from another CA, an expired one, or none at all fails the
//! handshake.

use crate::certs::{self, CertError};
use mpc_core::NodeId;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

/// ALPN of this protocol: a node speaks to nothing else.
pub const ALPN: &[u8] = b"mpc-custody/1";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Cert(#[from] CertError),
    #[error("{path}: {reason}")]
    Pem { path: String, reason: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(String),
    #[error("QUIC crypto: {0}")]
    Quic(String),
    #[error("{path}: {reason}")]
    NotUsable { path: String, reason: String },
    #[error("{path} is the certificate of {found}, but this node is {expected}")]
    WrongNode { path: String, expected: NodeId, found: NodeId },
}

/// One node's TLS identity and trust, as QUIC configurations.
#[derive(Clone)]
pub struct NodeTls {
    pub server: quinn::ServerConfig,
    pub client: quinn::ClientConfig,
}

fn pem_err(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::Pem { path: path.display().to_string(), reason: e.to_string() }
}

/// Loads `node`'s certificate and key and the cluster CA from `dir`.
pub fn load(dir: &Path, node: NodeId) -> Result<NodeTls, TlsError> {
    let ca_path = certs::ca_cert_path(dir);
    let cert_path = certs::node_cert_path(dir, node);
    let key_path = certs::node_key_path(dir, node);
    let cas: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&ca_path)
        .map_err(|e| pem_err(&ca_path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem_err(&ca_path, e))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in &cas {
        roots.add(ca.clone())?;
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .map_err(|e| pem_err(&cert_path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem_err(&cert_path, e))?;
    let leaf = chain.first().ok_or_else(|| pem_err(&cert_path, "no certificate in the file"))?;
    let found = certs::node_id_of(leaf)?;
    if found != node {
        return Err(TlsError::WrongNode { path: cert_path.display().to_string(), expected: node, found });
    }
    check_own(leaf, &cas, &cert_path)?;
    // The key's own parse errors could quote key material: name the file only.
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|_| pem_err(&key_path, "no readable private key"))?;
    build(roots, chain, key)
}

/// The validity period (Unix seconds) of `node`'s own certificate in `dir`.
pub fn own_validity(dir: &Path, node: NodeId) -> Result<(i64, i64), TlsError> {
    let path = certs::node_cert_path(dir, node);
    let leaf = CertificateDer::pem_file_iter(&path)
        .map_err(|e| pem_err(&path, e))?
        .next()
        .ok_or_else(|| pem_err(&path, "no certificate in the file"))?
        .map_err(|e| pem_err(&path, e))?;
    Ok(certs::validity_of(&leaf)?)
}

/// Our own certificate must chain to the cluster CA and be valid now: a
/// rotation to a certificate of another CA, or to an expired one, is
/// refused here rather than discovered by every peer at its handshake.
fn check_own(leaf: &CertificateDer<'_>, cas: &[CertificateDer<'_>], path: &Path) -> Result<(), TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).map_err(|e| pem_err(path, e))?;
    if !cert.validity().is_valid() {
        return Err(TlsError::NotUsable {
            path: path.display().to_string(),
            reason: "outside its validity period".into(),
        });
    }
    let signed = cas.iter().any(|ca| {
        x509_parser::parse_x509_certificate(ca)
            .map(|(_, ca)| cert.issuer() == ca.subject() && cert.verify_signature(Some(ca.public_key())).is_ok())
            .unwrap_or(false)
    });
    if !signed {
        return Err(TlsError::NotUsable {
            path: path.display().to_string(),
            reason: "not signed by the cluster CA".into(),
        });
    }
    Ok(())
}

/// QUIC configurations from trust roots, a certificate chain and its key.
/// [`load`] is the way in for a node; this builder is public so tests can
/// present certificates a node would refuse to load as its own (an expired
/// one), and see its peers refuse them at the handshake.
pub fn build(
    roots: rustls::RootCertStore,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<NodeTls, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = Arc::new(roots);
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())?;
    server.alpn_protocols = vec![ALPN.to_vec()];
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    client.alpn_protocols = vec![ALPN.to_vec()];
    let server =
        quinn::crypto::rustls::QuicServerConfig::try_from(server).map_err(|e| TlsError::Quic(e.to_string()))?;
    let client =
        quinn::crypto::rustls::QuicClientConfig::try_from(client).map_err(|e| TlsError::Quic(e.to_string()))?;
    Ok(NodeTls {
        server: quinn::ServerConfig::with_crypto(Arc::new(server)),
        client: quinn::ClientConfig::new(Arc::new(client)),
    })
}

/// The node id in the certificate a QUIC peer presented.
pub fn peer_node(conn: &quinn::Connection) -> Result<NodeId, CertError> {
    let identity = conn.peer_identity().ok_or(CertError::NoNodeId)?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().map_err(|_| CertError::NoNodeId)?;
    certs::node_id_of(chain.first().ok_or(CertError::NoNodeId)?)
}
