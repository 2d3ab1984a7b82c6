//! An etcd secured as a production one is: TLS with a certificate of its
//! own CA, client certificates required (`--client-cert-auth`), and auth
//! enabled with one user per node whose role reaches only the cluster's
//! prefix. A test's own server on free loopback ports, killed on drop.

use crate::regtest::free_tcp_port;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct SecureEtcd {
    pub dir: PathBuf,
    pub endpoint: String,
    child: Child,
}

/// The CA's files, the server's and one client's (`name.pem`, `name.key`).
fn issue(dir: &Path, name: &str, issuer: &Issuer<'_, KeyPair>, server: bool) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::ExplicitNoCa;
    if server {
        params.subject_alt_names =
            vec![SanType::IpAddress([127, 0, 0, 1].into()), SanType::DnsName("localhost".try_into().unwrap())];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    } else {
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    }
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
    write_private(&dir.join(format!("{name}.key")), key.serialize_pem().as_bytes());
}

fn write_private(path: &Path, contents: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

impl SecureEtcd {
    /// Starts one in `dir` for `cluster`'s nodes `1..=nodes`: node N has
    /// the client certificate `mpc-node-N.pem` (key `mpc-node-N.key`) and
    /// logs in as user `mpc-node-N` with the password in
    /// `mpc-node-N.password`; the CA is `ca.pem`.
    pub fn start(dir: &Path, cluster: &str, nodes: u16) -> SecureEtcd {
        std::fs::create_dir_all(dir).unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.distinguished_name.push(DnType::CommonName, "test etcd CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        issue(dir, "server", &issuer, true);
        issue(dir, "root", &issuer, false);
        for id in 1..=nodes {
            issue(dir, &format!("mpc-node-{id}"), &issuer, false);
            write_private(
                &dir.join(format!("mpc-node-{id}.password")),
                format!("pw-{id}-{}\n", std::process::id()).as_bytes(),
            );
        }
        let (client, peer) = (free_tcp_port(), free_tcp_port());
        let endpoint = format!("https://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = std::fs::File::create(dir.join("etcd.log")).unwrap();
        let file = |n: &str| dir.join(n).display().to_string();
        let child = Command::new("etcd")
            .args(["--name", "secure", "--data-dir", &file("data")])
            .args(["--listen-client-urls", &endpoint, "--advertise-client-urls", &endpoint])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("secure={peer_url}")])
            .args(["--cert-file", &file("server.pem"), "--key-file", &file("server.key")])
            .args(["--trusted-ca-file", &file("ca.pem"), "--client-cert-auth"])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run `etcd` ({e}): scripts/etcd.sh installs it"));
        let etcd = SecureEtcd { dir: dir.to_path_buf(), endpoint, child };
        etcd.enable_auth(cluster, nodes);
        etcd
    }

    /// As `root` (its client certificate; auth is still off): a role for
    /// the cluster's prefix, a user per node with it, then auth on.
    fn enable_auth(&self, cluster: &str, nodes: u16) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let read = |n: &str| std::fs::read(self.dir.join(n)).unwrap();
            let tls = etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(read("ca.pem")))
                .identity(etcd_client::Identity::from_pem(read("root.pem"), read("root.key")));
            let options = etcd_client::ConnectOptions::new().with_tls(tls).with_timeout(Duration::from_secs(5));
            let started = Instant::now();
            let mut client = loop {
                let failure = match etcd_client::Client::connect([self.endpoint.as_str()], Some(options.clone())).await
                {
                    Ok(mut c) => match c.status().await {
                        Ok(_) => break c,
                        Err(e) => e,
                    },
                    Err(e) => e,
                };
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "the TLS etcd never answered: {failure}\n{}",
                    std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            client.user_add("root", format!("root-{}", std::process::id()), None).await.unwrap();
            client.user_grant_role("root", "root").await.unwrap();
            let role = format!("mpc-{cluster}");
            client.role_add(role.as_str()).await.unwrap();
            let prefix = format!("/mpc/{cluster}/");
            client
                .role_grant_permission(role.as_str(), etcd_client::Permission::read_write(prefix).with_prefix())
                .await
                .unwrap();
            for id in 1..=nodes {
                let user = format!("mpc-node-{id}");
                let password = String::from_utf8(read(&format!("{user}.password"))).unwrap();
                client.user_add(user.as_str(), password.trim(), None).await.unwrap();
                client.user_grant_role(user.as_str(), role.as_str()).await.unwrap();
            }
            client.auth_enable().await.unwrap();
        });
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// `cluster init`'s templates for the nodes' files and users.
    pub fn template(&self, suffix: &str) -> String {
        self.dir.join(format!("mpc-node-{{id}}{suffix}")).display().to_string()
    }
}

impl Drop for SecureEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
