//! The cluster's certificates: one CA per cluster, one certificate per node
//! carrying its node id as the DNS name `node-<id>.mpc-custody` in the
//! subject alternative names.
//!
//! Why a DNS name: a node dialling peer 3 asks TLS for the server name
//! `node-3.mpc-custody`, so the standard WebPKI check (chain to the cluster
//! CA, validity period, name) proves it reached node 3 and not some other
//! member; a server reads the client's id from the same SAN after the
//! handshake. Certificates from any other CA fail the chain check.
//!
//! Files in a certificate directory, the one nodes load from: `ca.pem`,
//! `node-<id>.pem`, `node-<id>.key`. The CA's private key is never there:
//! it lives in a CA directory of its own (`ca.pem`, `ca.key`; by default
//! the certificate directory's sibling `<name>-ca`, see
//! [`default_ca_dir`]), so that a node's host never holds the key that
//! could mint a certificate for any member; the operator keeps it offline.
//! Keys are written owner-only (0600), each file through a temporary name
//! and a rename, so a node watching its files for rotation never reads half
//! a certificate.

use mpc_core::NodeId;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

const DNS_SUFFIX: &str = ".mpc-custody";

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{0} already holds a cluster CA: refusing to overwrite it (use `certs issue` to renew a node)")]
    CaExists(PathBuf),
    #[error("{0}: the CA key must not be kept in the directory nodes load their certificates from; give another CA directory")]
    CaKeyWithNodes(PathBuf),
    #[error("node ids run from 1 to {max}; got {got}")]
    BadNode { got: u16, max: u16 },
    #[error("certificate does not parse: {0}")]
    Parse(String),
    #[error("certificate names no mpc-custody node (expected one DNS name node-<id>{DNS_SUFFIX})")]
    NoNodeId,
    #[error("certificate names more than one mpc-custody node")]
    SeveralNodeIds,
}

/// The DNS name carrying `node`'s id in its certificate.
pub fn node_dns_name(node: NodeId) -> String {
    format!("node-{}{DNS_SUFFIX}", node.0)
}

/// The node id in a DNS name made by [`node_dns_name`].
pub fn node_id_from_dns_name(name: &str) -> Option<NodeId> {
    let id = name.strip_prefix("node-")?.strip_suffix(DNS_SUFFIX)?;
    if id.starts_with('0') || id.starts_with('+') {
        return None; // one spelling per id
    }
    id.parse::<u16>().ok().filter(|n| *n > 0).map(NodeId)
}

/// The node id a certificate (DER) carries. Exactly one node name is
/// accepted: a certificate naming two nodes could speak for either.
pub fn node_id_of(cert_der: &[u8]) -> Result<NodeId, CertError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).map_err(|e| CertError::Parse(e.to_string()))?;
    let san = cert.subject_alternative_name().map_err(|e| CertError::Parse(e.to_string()))?;
    let mut ids = san.into_iter().flat_map(|ext| ext.value.general_names.iter()).filter_map(|name| match name {
        x509_parser::extensions::GeneralName::DNSName(dns) => node_id_from_dns_name(dns),
        _ => None,
    });
    let id = ids.next().ok_or(CertError::NoNodeId)?;
    if ids.next().is_some() {
        return Err(CertError::SeveralNodeIds);
    }
    Ok(id)
}

/// A certificate's (DER) validity period as Unix seconds: not before, not
/// after. Preflight warns about a certificate close to its end.
pub fn validity_of(cert_der: &[u8]) -> Result<(i64, i64), CertError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).map_err(|e| CertError::Parse(e.to_string()))?;
    let v = cert.validity();
    Ok((v.not_before.timestamp(), v.not_after.timestamp()))
}

pub fn ca_cert_path(dir: &Path) -> PathBuf {
    dir.join("ca.pem")
}
/// The CA's private key in a CA directory (never in a certificate
/// directory nodes load from).
pub fn ca_key_path(ca_dir: &Path) -> PathBuf {
    ca_dir.join("ca.key")
}

/// The CA directory used when none is given: the certificate directory's
/// sibling with `-ca` appended (`/etc/mpc/certs` -> `/etc/mpc/certs-ca`).
pub fn default_ca_dir(cert_dir: &Path) -> PathBuf {
    let mut name = cert_dir.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "certs".into());
    name.push("-ca");
    cert_dir.with_file_name(name)
}
pub fn node_cert_path(dir: &Path, node: NodeId) -> PathBuf {
    dir.join(format!("node-{}.pem", node.0))
}
pub fn node_key_path(dir: &Path, node: NodeId) -> PathBuf {
    dir.join(format!("node-{}.key", node.0))
}

/// A node certificate and its private key, PEM.
pub struct NodeCert {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The cluster CA, loaded for issuing.
pub struct ClusterCa {
    issuer: Issuer<'static, KeyPair>,
    pub cert_pem: String,
}

impl ClusterCa {
    /// A new CA for `cluster`, valid for `days`.
    pub fn generate(cluster: &str, days: i64) -> Result<(ClusterCa, String), CertError> {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, format!("mpc-custody cluster CA {cluster}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::minutes(5);
        params.not_after = now + Duration::days(days);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        let cert_pem = cert.pem();
        Ok((ClusterCa { issuer: Issuer::new(params, key), cert_pem }, key_pem))
    }

    /// The CA kept in a CA directory.
    pub fn load(ca_dir: &Path) -> Result<ClusterCa, CertError> {
        let cert_pem = read(&ca_cert_path(ca_dir))?;
        let key = KeyPair::from_pem(&read(&ca_key_path(ca_dir))?)?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)?;
        Ok(ClusterCa { issuer, cert_pem })
    }

    /// A certificate for `node`, valid from `not_before` to `not_after`
    /// (tests issue expired ones through this).
    pub fn issue(
        &self,
        node: NodeId,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<NodeCert, CertError> {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, format!("mpc-custody {node}"));
        params.subject_alt_names = vec![SanType::DnsName(node_dns_name(node).try_into()?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // Every node is both a server (it accepts) and a client (it dials).
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = not_before;
        params.not_after = not_after;
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(NodeCert { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// A certificate for `node` valid from now for `days`.
    pub fn issue_for_days(&self, node: NodeId, days: i64) -> Result<NodeCert, CertError> {
        let now = OffsetDateTime::now_utc();
        self.issue(node, now - Duration::minutes(5), now + Duration::days(days))
    }
}

/// `mpc-cli certs init`: a new CA in `ca_dir` (its certificate and key)
/// and certificates for nodes 1..=`nodes` in `dir` (with the CA's
/// certificate, never its key). Refuses directories that already hold a
/// CA, and one directory for both.
pub fn init(dir: &Path, ca_dir: &Path, cluster: &str, nodes: u16, days: i64) -> Result<Vec<PathBuf>, CertError> {
    if nodes == 0 {
        return Err(CertError::BadNode { got: 0, max: 0 });
    }
    if same_dir(dir, ca_dir) {
        return Err(CertError::CaKeyWithNodes(dir.to_path_buf()));
    }
    for d in [dir, ca_dir] {
        if ca_key_path(d).exists() || ca_cert_path(d).exists() {
            return Err(CertError::CaExists(d.to_path_buf()));
        }
    }
    for d in [dir, ca_dir] {
        std::fs::create_dir_all(d).map_err(|source| CertError::Io { path: d.to_path_buf(), source })?;
    }
    restrict_dir(ca_dir)?;
    // The CA outlives its node certificates, which are renewed.
    let (ca, ca_key_pem) = ClusterCa::generate(cluster, days.saturating_mul(10))?;
    write_file(&ca_key_path(ca_dir), &ca_key_pem, true)?;
    write_file(&ca_cert_path(ca_dir), &ca.cert_pem, false)?;
    write_file(&ca_cert_path(dir), &ca.cert_pem, false)?;
    let mut written = vec![ca_cert_path(ca_dir), ca_key_path(ca_dir), ca_cert_path(dir)];
    for id in 1..=nodes {
        written.extend(write_node(dir, &ca, NodeId(id), days)?);
    }
    Ok(written)
}

/// `mpc-cli certs issue`: a fresh key and certificate for one node in
/// `dir`, signed by the CA in `ca_dir`, replacing the old files atomically.
pub fn issue(dir: &Path, ca_dir: &Path, node: NodeId, days: i64) -> Result<Vec<PathBuf>, CertError> {
    if node.0 == 0 {
        return Err(CertError::BadNode { got: 0, max: u16::MAX });
    }
    let ca = ClusterCa::load(ca_dir)?;
    write_node(dir, &ca, node, days)
}

fn same_dir(a: &Path, b: &Path) -> bool {
    let canonical = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    a == b || canonical(a) == canonical(b)
}

/// The CA directory is the owner's alone (0700).
fn restrict_dir(dir: &Path) -> Result<(), CertError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|source| CertError::Io { path: dir.to_path_buf(), source })
}

fn write_node(dir: &Path, ca: &ClusterCa, node: NodeId, days: i64) -> Result<Vec<PathBuf>, CertError> {
    let cert = ca.issue_for_days(node, days)?;
    // Key first: a watcher that sees the new certificate finds its key.
    write_file(&node_key_path(dir, node), &cert.key_pem, true)?;
    write_file(&node_cert_path(dir, node), &cert.cert_pem, false)?;
    Ok(vec![node_cert_path(dir, node), node_key_path(dir, node)])
}

/// Writes through a temporary file and a rename; private files are 0600
/// from their creation on.
pub fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), CertError> {
    let io = |source| CertError::Io { path: path.to_path_buf(), source };
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

fn read(path: &Path) -> Result<String, CertError> {
    std::fs::read_to_string(path).map_err(|source| CertError::Io { path: path.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("mpc-certs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(default_ca_dir(&dir));
        dir
    }

    fn der(pem: &str) -> Vec<u8> {
        use rustls_pki_types::pem::PemObject;
        rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec()
    }

    #[test]
    fn init_writes_a_ca_and_one_certificate_per_node_with_private_keys() {
        let dir = scratch("init");
        let ca_dir = default_ca_dir(&dir);
        let files = init(&dir, &ca_dir, "test-cluster", 5, 30).unwrap();
        assert_eq!(files.len(), 3 + 5 * 2);
        assert!(!ca_key_path(&dir).exists(), "the CA key is in the nodes' directory");
        assert!(ca_key_path(&ca_dir).exists());
        assert_eq!(std::fs::metadata(&ca_dir).unwrap().permissions().mode() & 0o777, 0o700);
        for id in 1..=5 {
            let pem = std::fs::read_to_string(node_cert_path(&dir, NodeId(id))).unwrap();
            assert_eq!(node_id_of(&der(&pem)).unwrap(), NodeId(id));
        }
        for path in files {
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            let private = path.extension().unwrap() == "key";
            assert_eq!(mode, if private { 0o600 } else { 0o644 }, "{}", path.display());
        }
        assert!(matches!(init(&dir, &ca_dir, "test-cluster", 5, 30), Err(CertError::CaExists(_))));
        let _ = std::fs::remove_dir_all(dir);
        let _ = std::fs::remove_dir_all(ca_dir);
    }

    #[test]
    fn one_directory_for_nodes_and_ca_key_is_refused() {
        let dir = scratch("same");
        assert!(matches!(init(&dir, &dir, "c", 3, 30), Err(CertError::CaKeyWithNodes(_))));
        assert!(!ca_key_path(&dir).exists());
    }

    #[test]
    fn the_default_ca_directory_is_a_sibling() {
        assert_eq!(default_ca_dir(Path::new("/etc/mpc/certs")), PathBuf::from("/etc/mpc/certs-ca"));
        assert_eq!(default_ca_dir(Path::new("certs")), PathBuf::from("certs-ca"));
    }

    #[test]
    fn issue_renews_one_node_under_the_same_ca() {
        let dir = scratch("issue");
        let ca_dir = default_ca_dir(&dir);
        init(&dir, &ca_dir, "c", 3, 30).unwrap();
        let before = std::fs::read_to_string(node_cert_path(&dir, NodeId(2))).unwrap();
        let other = std::fs::read_to_string(node_cert_path(&dir, NodeId(3))).unwrap();
        issue(&dir, &ca_dir, NodeId(2), 30).unwrap();
        let after = std::fs::read_to_string(node_cert_path(&dir, NodeId(2))).unwrap();
        assert_ne!(before, after);
        assert_eq!(other, std::fs::read_to_string(node_cert_path(&dir, NodeId(3))).unwrap());
        assert_eq!(node_id_of(&der(&after)).unwrap(), NodeId(2));
        // Signed by the directory's CA: its issuer is the CA's subject.
        let ca = der(&std::fs::read_to_string(ca_cert_path(&dir)).unwrap());
        let (_, ca) = x509_parser::parse_x509_certificate(&ca).unwrap();
        let leaf = der(&after);
        let (_, leaf) = x509_parser::parse_x509_certificate(&leaf).unwrap();
        assert_eq!(leaf.issuer(), ca.subject());
        leaf.verify_signature(Some(ca.public_key())).expect("signed by the cluster CA");
        let _ = std::fs::remove_dir_all(dir);
        let _ = std::fs::remove_dir_all(ca_dir);
    }

    #[test]
    fn node_names_have_one_spelling() {
        assert_eq!(node_id_from_dns_name("node-3.mpc-custody"), Some(NodeId(3)));
        for bad in ["node-03.mpc-custody", "node-0.mpc-custody", "node-+3.mpc-custody", "node-3.example", "3"] {
            assert_eq!(node_id_from_dns_name(bad), None, "{bad}");
        }
    }
}
