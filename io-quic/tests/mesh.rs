//! The transport on real loopback sockets with real certificates: a full
//! mesh of five nodes, a rogue CA, an expired certificate, a valid peer
//! naming another sender, garbage and oversized frames, a peer that
//! restarts, a peer that crashes and restarts (its stateless reset), a dead peer, an outsider with a member certificate, and a
//! flood of bad handshakes. Timeouts only guard against hangs; nothing asserts a duration.

use mpc_core::{NodeId, PeerMessage, PresigId};
use mpc_io_quic::certs::{self, ClusterCa};
use mpc_io_quic::frame::{self, WireEnvelope};
use mpc_io_quic::{tls, Inbound, Inbox, ResetSecret, SendError, Transport, TransportConfig};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

const GUARD: Duration = Duration::from_secs(60);

fn cert_dir(name: &str, nodes: u16) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mpc-quic-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(certs::default_ca_dir(&dir));
    certs::init(&dir, &certs::default_ca_dir(&dir), name, nodes, 30).unwrap();
    dir
}

fn free_addrs(n: usize) -> Vec<SocketAddr> {
    let sockets: Vec<_> = (0..n).map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
    sockets.iter().map(|s| s.local_addr().unwrap()).collect()
}

/// Free loopback addresses for nodes 1..=n.
fn node_addrs(n: u16) -> BTreeMap<NodeId, SocketAddr> {
    free_addrs(n as usize).into_iter().zip(1..).map(|(a, id)| (NodeId(id), a)).collect()
}

fn config(me: u16, addrs: &BTreeMap<NodeId, SocketAddr>, dir: &Path) -> TransportConfig {
    let mut cfg = TransportConfig::new(NodeId(me), addrs[&NodeId(me)], dir.to_path_buf());
    cfg.peers = addrs.clone();
    cfg
}

fn msg(origin: u16, seq: u64) -> PeerMessage {
    PeerMessage::PresigAbandon { id: PresigId { origin: NodeId(origin), seq } }
}

async fn next(inbox: &mut Inbox) -> Inbound {
    tokio::time::timeout(GUARD, inbox.recv()).await.expect("hang guard").expect("transport running")
}

/// Polls `cond` until it holds; the guard only catches a hang.
async fn until(what: &str, cond: impl Fn() -> bool) {
    let give_up = std::time::Instant::now() + GUARD;
    while !cond() {
        assert!(std::time::Instant::now() < give_up, "hang guard: never {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn mesh(dir: &Path, n: u16) -> (BTreeMap<NodeId, SocketAddr>, Vec<(Transport, Inbox)>) {
    let addrs = node_addrs(n);
    let mut nodes = Vec::new();
    for id in 1..=n {
        nodes.push(Transport::start(config(id, &addrs, dir)).await.unwrap());
    }
    (addrs, nodes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_in_full_mesh_deliver_in_order_from_certified_senders() {
    let dir = cert_dir("mesh", 5);
    let (_, mut nodes) = mesh(&dir, 5).await;
    const EACH: u64 = 30;
    for (transport, _) in &nodes {
        let me = transport.me();
        for to in 1..=5u16 {
            if NodeId(to) != me {
                for k in 0..EACH {
                    transport.send(NodeId(to), msg(me.0, k)).unwrap();
                }
            }
        }
    }
    for (transport, inbox) in nodes.iter_mut() {
        let mut got: BTreeMap<NodeId, Vec<u64>> = BTreeMap::new();
        while got.values().map(Vec::len).sum::<usize>() < 4 * EACH as usize {
            match next(inbox).await {
                Inbound::Message { from, msg: PeerMessage::PresigAbandon { id } } => {
                    assert_eq!(id.origin, from, "{}: the sender is the certificate's node", transport.me());
                    got.entry(from).or_default().push(id.seq);
                }
                other => panic!("{}: unexpected {other:?}", transport.me()),
            }
        }
        for (from, seqs) in got {
            assert_eq!(seqs, (0..EACH).collect::<Vec<_>>(), "{} from {from}: in order, none lost", transport.me());
        }
    }
    assert!(nodes[0].0.send(NodeId(9), msg(1, 0)).is_err(), "unknown peer refused");
    let _ = std::fs::remove_dir_all(dir);
}

/// `Inbox::last_wait` is the time a message sat in the inbox: one taken as
/// soon as it arrives waited next to nothing, one left there 300 ms waited
/// at least that long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbox_tells_how_long_a_message_waited_in_it() {
    let dir = cert_dir("inbox-wait", 2);
    let (_, mut nodes) = mesh(&dir, 2).await;
    let (a, b) = nodes.split_at_mut(1);
    let (sender, inbox) = (&a[0].0, &mut b[0].1);
    assert_eq!(inbox.last_wait(), None, "nothing taken yet");
    sender.send(NodeId(2), msg(1, 0)).unwrap();
    next(inbox).await;
    let prompt = inbox.last_wait().expect("a message was taken");
    sender.send(NodeId(2), msg(1, 1)).unwrap();
    // Arrived (the transport read it) well before the node takes it.
    until("the second message is queued", || !inbox.is_empty()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    next(inbox).await;
    let waited = inbox.last_wait().expect("a message was taken");
    assert!(waited >= Duration::from_millis(300), "waited {waited:?}");
    assert!(prompt < Duration::from_millis(300), "taken at once, yet {prompt:?}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rogue_ca_and_expired_certificates_are_refused_at_the_handshake() {
    let dir = cert_dir("trusted", 3);
    let (addrs, mut nodes) = mesh(&dir, 1).await;
    let (_, inbox) = &mut nodes[0];

    // Node 2 with a certificate from another CA.
    let rogue_dir = cert_dir("rogue", 3);
    let mut rogue_addrs = addrs.clone();
    rogue_addrs.insert(NodeId(2), free_addrs(1)[0]);
    let (rogue, _rogue_inbox) = Transport::start(config(2, &rogue_addrs, &rogue_dir)).await.unwrap();
    rogue.send(NodeId(1), msg(2, 0)).unwrap();
    match next(inbox).await {
        Inbound::Refused { peer: None, reason, .. } => assert!(reason.contains("handshake"), "{reason}"),
        other => panic!("rogue CA got through: {other:?}"),
    }

    // Node 3 with an expired certificate from the right CA: a node refuses
    // to start with it, and a peer refuses it at the handshake.
    let expired_dir = std::env::temp_dir().join(format!("mpc-quic-expired-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&expired_dir);
    std::fs::create_dir_all(&expired_dir).unwrap();
    std::fs::copy(certs::ca_cert_path(&dir), certs::ca_cert_path(&expired_dir)).unwrap();
    let ca = ClusterCa::load(&certs::default_ca_dir(&dir)).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let old = ca.issue(NodeId(3), now - time::Duration::days(60), now - time::Duration::days(30)).unwrap();
    certs::write_file(&certs::node_cert_path(&expired_dir, NodeId(3)), &old.cert_pem, false).unwrap();
    certs::write_file(&certs::node_key_path(&expired_dir, NodeId(3)), &old.key_pem, true).unwrap();
    let mut expired_addrs = addrs.clone();
    expired_addrs.insert(NodeId(3), free_addrs(1)[0]);
    let err = Transport::start(config(3, &expired_addrs, &expired_dir)).await.err().expect("expired refused");
    assert!(err.to_string().contains("validity"), "{err}");
    let endpoint = raw_client(&expired_dir, 3);
    // In TLS 1.3 the client may finish its side before the server judges
    // its certificate; then the server closes the connection.
    if let Ok(conn) = endpoint.connect(addrs[&NodeId(1)], &certs::node_dns_name(NodeId(1))).unwrap().await {
        tokio::time::timeout(GUARD, conn.closed()).await.expect("the server closes the connection");
    }
    match next(inbox).await {
        Inbound::Refused { peer: None, reason, .. } => assert!(reason.contains("handshake"), "{reason}"),
        other => panic!("expired certificate got through: {other:?}"),
    }
    for d in [dir, rogue_dir, expired_dir] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// A bare client endpoint presenting `me`'s certificate from `dir` as it is,
/// without the checks a node makes on its own certificate.
fn raw_client(dir: &Path, me: u16) -> quinn::Endpoint {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(certs::ca_cert_path(dir)).unwrap()).unwrap();
    let chain = vec![CertificateDer::from_pem_file(certs::node_cert_path(dir, NodeId(me))).unwrap()];
    let key = PrivateKeyDer::from_pem_file(certs::node_key_path(dir, NodeId(me))).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(tls::build(roots, chain, key).unwrap().client);
    endpoint
}

/// A raw connection to `to` as `me`, with the cluster's real certificates.
async fn raw_stream(dir: &Path, me: u16, to: SocketAddr, to_id: u16) -> (quinn::Endpoint, quinn::SendStream) {
    let node_tls = tls::load(dir, NodeId(me)).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(node_tls.client);
    let conn = endpoint.connect(to, &certs::node_dns_name(NodeId(to_id))).unwrap().await.unwrap();
    let stream = conn.open_uni().await.unwrap();
    (endpoint, stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_sender_garbage_and_oversized_frames_are_refused_without_harming_others() {
    let dir = cert_dir("hostile", 3);
    let (addrs, mut nodes) = mesh(&dir, 3).await;
    let node1 = addrs[&NodeId(1)];

    // Node 2's valid certificate, an envelope claiming node 3, then an
    // honest one: the first is dropped and reported, the second delivered.
    let (_e, mut stream) = raw_stream(&dir, 2, node1, 1).await;
    let forged = WireEnvelope { from: NodeId(3), to: NodeId(1), seq: 0, msg: msg(3, 0) };
    let honest = WireEnvelope { from: NodeId(2), to: NodeId(1), seq: 1, msg: msg(2, 1) };
    for env in [&forged, &honest] {
        stream.write_all(&frame::encode(env, frame::DEFAULT_MAX_FRAME).unwrap()).await.unwrap();
    }
    {
        let inbox = &mut nodes[0].1;
        let refused = next(inbox).await;
        match &refused {
            Inbound::Refused { peer: Some(NodeId(2)), reason, .. } => {
                assert!(reason.contains("names sender node-3"), "{reason}")
            }
            other => panic!("forged sender not refused: {other:?}"),
        }
        // What the core is given: the refusal, naming the certified peer.
        match refused.into_input() {
            mpc_core::Input::TransportRefused { peer, reason } => {
                assert_eq!(peer, Some(NodeId(2)));
                assert!(reason.contains("names sender node-3") && reason.contains("127.0.0.1"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(next(inbox).await, Inbound::Message { from: NodeId(2), msg: msg(2, 1) });
    }

    // Garbage, then a length of 4 GiB, each on its own connection. Each is
    // awaited before the next connection opens: a member's newer connection
    // replaces its older one, which may not have been read yet.
    let (_g, mut garbage) = raw_stream(&dir, 2, node1, 1).await;
    garbage.write_all(&[0, 0, 0, 9, 7, 1, 2, 3, 4, 5, 6, 7, 8]).await.unwrap();
    garbage.finish().unwrap();
    match next(&mut nodes[0].1).await {
        Inbound::Refused { peer: Some(NodeId(2)), reason, .. } => assert!(reason.contains("version 7"), "{reason}"),
        other => panic!("unexpected {other:?}"),
    }
    let (_o, mut oversized) = raw_stream(&dir, 2, node1, 1).await;
    oversized.write_all(&[0xff, 0xff, 0xff, 0xff, 1]).await.unwrap();
    match next(&mut nodes[0].1).await {
        Inbound::Refused { peer: Some(NodeId(2)), reason, .. } => {
            assert!(reason.contains("exceeds the limit"), "{reason}")
        }
        other => panic!("unexpected {other:?}"),
    }

    // Node 3's traffic to node 1 is untouched by all of it.
    nodes[2].0.send(NodeId(1), msg(3, 0)).unwrap();
    assert_eq!(next(&mut nodes[0].1).await, Inbound::Message { from: NodeId(3), msg: msg(3, 0) });
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_restarts_is_reconnected() {
    let dir = cert_dir("restart", 2);
    let (addrs, mut nodes) = mesh(&dir, 2).await;
    let (t2, _inbox2) = nodes.pop().unwrap();
    let (t1, _inbox1) = &nodes[0];
    t1.send(NodeId(2), msg(1, 0)).unwrap();
    // Node 2 goes away mid-stream and comes back on the same address.
    t2.shutdown().await;
    t1.send(NodeId(2), msg(1, 1)).unwrap();
    // The old socket is released once its tasks have wound down.
    let mut attempts = 0;
    let (_t2, mut inbox2) = loop {
        match Transport::start(config(2, &addrs, &dir)).await {
            Ok(started) => break started,
            Err(e) if attempts < 200 => {
                attempts += 1;
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("restart: {e}"),
        }
    };
    for k in 2..5 {
        t1.send(NodeId(2), msg(1, k)).unwrap();
    }
    // What was sent after the restart arrives, in order (earlier messages
    // may have died with the old process: the core retries those).
    let mut seen = Vec::new();
    while !seen.contains(&4) {
        match next(&mut inbox2).await {
            Inbound::Message { from: NodeId(1), msg: PeerMessage::PresigAbandon { id } } => seen.push(id.seq),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "in order: {seen:?}");
    let _ = std::fs::remove_dir_all(dir);
}

/// A node on a runtime of its own, so the test can crash it: dropping the
/// runtime's tasks unpolled ends its connections without a word to its
/// peers (no CONNECTION_CLOSE), as a killed process would.
struct Crashable {
    runtime: tokio::runtime::Runtime,
    transport: Transport,
    inbox: Inbox,
}

impl Crashable {
    /// Starts `cfg`, retrying while the address is still held by a crashed
    /// predecessor whose socket is being released.
    fn start(cfg: TransportConfig) -> Crashable {
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
            let (transport, inbox) = runtime.block_on(async {
                for _ in 0..200 {
                    match Transport::start(cfg.clone()).await {
                        Ok(started) => return started,
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
                panic!("the address never came free")
            });
            Crashable { runtime, transport, inbox }
        })
        .join()
        .unwrap()
    }

    fn crash(self) {
        self.runtime.shutdown_background();
        drop((self.transport, self.inbox));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_crashes_and_restarts_with_its_secret_resets_the_stale_connection() {
    use std::sync::atomic::Ordering::Relaxed;
    let dir = cert_dir("crash", 2);
    let addrs = node_addrs(2);
    let with_secret = |me: u16, byte: u8| {
        let mut cfg = config(me, &addrs, &dir);
        cfg.reset_secret = Some(ResetSecret([byte; 32]));
        cfg
    };
    let (t1, _inbox1) = Transport::start(with_secret(1, 1)).await.unwrap();
    let mut node2 = Crashable::start(with_secret(2, 2));
    t1.send(NodeId(2), msg(1, 0)).unwrap();
    assert!(matches!(next(&mut node2.inbox).await, Inbound::Message { from: NodeId(1), .. }));

    // Crash and restart with the same secret: node 1's next packet to the
    // new process (a message or a keep-alive) is answered with a stateless
    // reset, so node 1 redials at once instead of writing into the dead
    // connection until its idle timeout (30 s, inside the hang guard: the
    // count of resets is what tells the two apart).
    node2.crash();
    let mut node2 = Crashable::start(with_secret(2, 2));
    until("node 1 sees the reset", || t1.stats.peer_resets.load(Relaxed) == 1).await;
    t1.send(NodeId(2), msg(1, 1)).unwrap();
    match next(&mut node2.inbox).await {
        Inbound::Message { from: NodeId(1), msg: m } => assert_eq!(m, msg(1, 1)),
        other => panic!("unexpected {other:?}"),
    }

    // The control: a restart with another secret cannot reset anything.
    // Node 1 goes on pinging the dead connection (a keep-alive a second)
    // and counts no reset.
    node2.crash();
    let node2 = Crashable::start(with_secret(2, 3));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(t1.stats.peer_resets.load(Relaxed), 1, "a reset under another secret was accepted");
    node2.crash();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_while_traffic_flows_and_bad_ones_are_refused() {
    let dir = cert_dir("rotate", 2);
    let addrs = node_addrs(2);
    let mut nodes = Vec::new();
    for id in 1..=2 {
        let mut cfg = config(id, &addrs, &dir);
        cfg.cert_poll = Duration::from_millis(50);
        nodes.push(Transport::start(cfg).await.unwrap());
    }
    let (t2, mut inbox2) = nodes.pop().unwrap();
    let (t1, _inbox1) = nodes.pop().unwrap();
    let stat = |t: &Transport, f: fn(&mpc_io_quic::transport::Stats) -> &std::sync::atomic::AtomicU64| {
        f(&t.stats).load(std::sync::atomic::Ordering::Relaxed)
    };
    const TOTAL: u64 = 300;
    // Traffic before, during and after the renewal: sending goes on until
    // the watcher has picked the new files up, then as much again.
    let mut sent = 0u64;
    while sent < TOTAL / 3 {
        t1.send(NodeId(2), msg(1, sent)).unwrap();
        sent += 1;
    }
    certs::issue(&dir, &certs::default_ca_dir(&dir), NodeId(1), 30).unwrap(); // renewed on disk, as `mpc-cli certs issue` does it
    let give_up = std::time::Instant::now() + GUARD;
    while stat(&t1, |s| &s.rotations) == 0 {
        assert!(std::time::Instant::now() < give_up, "hang guard: the renewal was never picked up");
        t1.send(NodeId(2), msg(1, sent)).unwrap();
        sent += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rotated_at = sent;
    while sent < rotated_at + TOTAL / 3 {
        t1.send(NodeId(2), msg(1, sent)).unwrap();
        sent += 1;
    }
    let mut received = Vec::new();
    while received.len() < sent as usize {
        match next(&mut inbox2).await {
            Inbound::Message { from: NodeId(1), msg: PeerMessage::PresigAbandon { id } } => received.push(id.seq),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(stat(&t1, |s| &s.rotations), 1, "the renewed certificate was picked up while messages flowed");
    received.sort();
    assert_eq!(received, (0..sent).collect::<Vec<_>>(), "nothing lost across the rotation");

    // A certificate from another CA put in place of node 1's: refused, and
    // node 1 keeps working with the one it has. The refusal counter is read
    // relative to its value now: the legitimate renewal above may already
    // have raised it (a poll between its key and its certificate sees a
    // pair that does not match).
    let refused_before = stat(&t1, |s| &s.rotations_refused);
    let rogue = cert_dir("rotate-rogue", 2);
    let staged: Vec<_> = [certs::node_key_path(&dir, NodeId(1)), certs::node_cert_path(&dir, NodeId(1))]
        .into_iter()
        .zip([certs::node_key_path(&rogue, NodeId(1)), certs::node_cert_path(&rogue, NodeId(1))])
        .map(|(to, from)| {
            let tmp = std::path::PathBuf::from(format!("{}.staged", to.display()));
            std::fs::copy(from, &tmp).unwrap();
            (tmp, to)
        })
        .collect();
    for (tmp, to) in staged {
        std::fs::rename(tmp, to).unwrap(); // both in place within microseconds of each other
    }
    until("the bad rotation examined", || stat(&t1, |s| &s.rotations_refused) > refused_before).await;
    // Twenty more polls: whatever the watcher saw last, nothing was applied.
    tokio::time::sleep(Duration::from_millis(50 * 20)).await;
    assert_eq!(stat(&t1, |s| &s.rotations), 1, "a certificate from another CA was applied");
    t1.send(NodeId(2), msg(1, sent)).unwrap();
    assert_eq!(next(&mut inbox2).await, Inbound::Message { from: NodeId(1), msg: msg(1, sent) });
    drop(t2);
    for d in [dir, rogue] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_peer_costs_a_bounded_queue_and_sending_never_blocks() {
    let dir = cert_dir("dead", 2);
    // Node 2's address is bound by a plain UDP socket that never answers.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addrs: BTreeMap<NodeId, SocketAddr> =
        [(NodeId(1), free_addrs(1)[0]), (NodeId(2), silent.local_addr().unwrap())].into();
    let mut cfg = config(1, &addrs, &dir);
    cfg.peer_queue = 8;
    let (t1, _inbox) = Transport::start(cfg).await.unwrap();
    let mut refused = 0;
    for k in 0..1000 {
        match t1.send(NodeId(2), msg(1, k)) {
            Ok(()) => {}
            Err(SendError::QueueFull(NodeId(2))) => refused += 1,
            Err(e) => panic!("{e}"),
        }
    }
    // At most the queue and the one message the sender holds for its next
    // dial are kept; everything else was refused at once and counted.
    assert!(refused >= 1000 - 8 - 1, "only {refused} of 1000 refused");
    assert_eq!(t1.stats.dropped_full.load(std::sync::atomic::Ordering::Relaxed), refused);
    drop(silent);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_certificate_for_a_node_outside_the_peer_list_is_refused() {
    let dir = cert_dir("outsider", 3);
    // Nodes 1 and 2 form the mesh; node 3's certificate is from the same CA.
    let addrs = node_addrs(2);
    let (_t1, mut inbox1) = Transport::start(config(1, &addrs, &dir)).await.unwrap();
    let outsider = raw_client(&dir, 3);
    let conn = outsider.connect(addrs[&NodeId(1)], &certs::node_dns_name(NodeId(1))).unwrap().await.unwrap();
    let closed = tokio::time::timeout(GUARD, conn.closed()).await.expect("the node closes the connection");
    assert!(closed.to_string().contains("not a peer"), "{closed}");
    match next(&mut inbox1).await {
        Inbound::Refused { peer: Some(NodeId(3)), reason, .. } => assert!(reason.contains("not a peer"), "{reason}"),
        other => panic!("outsider got through: {other:?}"),
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bad_handshakes_neither_blocks_nor_crowds_out_peers() {
    let dir = cert_dir("flood", 2);
    let rogue_dir = cert_dir("flood-rogue", 2);
    let addrs = node_addrs(2);
    let mut cfg = config(1, &addrs, &dir);
    cfg.refusal_queue = 4;
    let (t1, mut inbox1) = Transport::start(cfg).await.unwrap();
    // Twenty handshakes with another CA's certificate while nobody reads
    // the inbox: at most four reports are queued, the rest only counted.
    let rogue = raw_client(&rogue_dir, 2);
    for _ in 0..20 {
        if let Ok(conn) = rogue.connect(addrs[&NodeId(1)], &certs::node_dns_name(NodeId(1))).unwrap().await {
            let _ = tokio::time::timeout(GUARD, conn.closed()).await;
        }
    }
    let counted = |t: &Transport| {
        use std::sync::atomic::Ordering::Relaxed;
        (t.stats.refused.load(Relaxed), t.stats.refusals_unreported.load(Relaxed))
    };
    until("twenty refusals counted", || counted(&t1).0 >= 20).await;
    assert_eq!(counted(&t1), (20, 16), "four reports queued, sixteen counted only");
    // Node 2's message still comes through behind the queued reports.
    let (t2, _inbox2) = Transport::start(config(2, &addrs, &dir)).await.unwrap();
    t2.send(NodeId(1), msg(2, 0)).unwrap();
    let mut reports = 0;
    loop {
        match next(&mut inbox1).await {
            Inbound::Refused { peer: None, .. } => reports += 1,
            Inbound::Message { from: NodeId(2), msg: m } => {
                assert_eq!(m, msg(2, 0));
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(reports, 4);
    for d in [dir, rogue_dir] {
        let _ = std::fs::remove_dir_all(d);
    }
}
