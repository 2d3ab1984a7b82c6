//! What one member can make a node hold, on real loopback QUIC with real
//! certificates: one unidirectional stream per accepted connection and no
//! other streams or datagrams, no streams at all on dialled connections,
//! no more flow-control credit than one receive window beyond what the
//! node has read, a byte budget per member that stops reading instead of
//! dropping, and one live connection per member id sharing that budget.
//! Timeouts only guard against hangs; nothing asserts a duration.

#[path = "support/net.rs"]
mod net;

use mpc_core::NodeId;
use mpc_io_quic::frame;
use mpc_io_quic::transport::QUEUE_ENTRY_BYTES;
use mpc_io_quic::{Inbound, Inbox, Transport, TransportError};
use net::{cert_dir, config, connect, frame_of_len, member_endpoint, node_addrs, now_or_never, tag_of, until, GUARD};
use std::sync::atomic::Ordering::Relaxed;

async fn next(inbox: &mut Inbox) -> Inbound {
    tokio::time::timeout(GUARD, inbox.recv()).await.expect("hang guard").expect("transport running")
}

/// The tag of the next message, which must come from `from`.
async fn next_tag(inbox: &mut Inbox, from: u16) -> u64 {
    match next(inbox).await {
        Inbound::Message { from: f, msg } if f == NodeId(from) => tag_of(&msg).expect("a tagged message"),
        other => panic!("expected a message from node {from}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_carry_one_unidirectional_stream_inbound_and_none_outbound() {
    let dir = cert_dir("streams", 2);
    let addrs = node_addrs(2);
    let (t1, mut inbox) = Transport::start(config(1, &addrs, &dir)).await.unwrap();

    // Accepted by node 1: the peer's one ordered stream, nothing more. The
    // peer learns the limits at the handshake, so whether it may open a
    // stream now is decided by them, not by timing.
    let member = member_endpoint(&dir, 2);
    let conn = connect(&member, addrs[&NodeId(1)], 1).await;
    let mut first = now_or_never(conn.open_uni()).expect("one unidirectional stream is allowed").unwrap();
    assert!(now_or_never(conn.open_uni()).is_none(), "a second concurrent unidirectional stream got credit");
    assert!(now_or_never(conn.open_bi()).is_none(), "a bidirectional stream got credit");
    assert_eq!(conn.max_datagram_size(), None, "datagrams are accepted");
    first.write_all(&frame_of_len(2, 1, 0, 7, 1000)).await.unwrap();
    first.finish().unwrap();
    assert_eq!(next_tag(&mut inbox, 2).await, 7);
    // Once that stream is read to its end, the next one may open.
    tokio::time::timeout(GUARD, conn.open_uni()).await.expect("hang guard").unwrap();

    // Dialled by node 1: it only sends, so the peer may open nothing on it.
    let peer_tls = mpc_io_quic::tls::load(&dir, NodeId(2)).unwrap();
    let server = quinn::Endpoint::server(peer_tls.server, addrs[&NodeId(2)]).unwrap();
    t1.send(NodeId(2), net::tagged(1, 9, 100)).unwrap();
    let incoming = tokio::time::timeout(GUARD, server.accept()).await.expect("hang guard").unwrap();
    let dialled = incoming.await.unwrap();
    assert!(now_or_never(dialled.open_uni()).is_none(), "a stream got credit on a dialled connection");
    assert!(now_or_never(dialled.open_bi()).is_none(), "a bidirectional stream got credit on a dialled connection");
    assert_eq!(dialled.max_datagram_size(), None, "datagrams are accepted on a dialled connection");
    // Node 1's own stream to it works.
    let mut stream = tokio::time::timeout(GUARD, dialled.accept_uni()).await.expect("hang guard").unwrap();
    let mut decoder = frame::FrameDecoder::new(frame::DEFAULT_MAX_FRAME);
    let envelope = loop {
        let chunk = stream.read_chunk(decoder.wanted(), true).await.unwrap().expect("a frame");
        decoder.push(&chunk.bytes).unwrap();
        if let Some(e) = decoder.next_envelope().unwrap() {
            break e;
        }
    };
    assert_eq!((envelope.from, tag_of(&envelope.msg)), (NodeId(1), Some(9)));
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_node_grants_a_sender_one_receive_window_and_loses_nothing() {
    const MAX: usize = 64 * 1024;
    const WINDOW: usize = 256 * 1024;
    const FRAMES: u64 = 24; // 1.5 MiB: far more than the budget and the window
    let dir = cert_dir("window", 2);
    let addrs = node_addrs(2);
    let mut cfg = config(1, &addrs, &dir);
    cfg.max_frame = MAX;
    cfg.peer_inbound_bytes = MAX + QUEUE_ENTRY_BYTES; // exactly one maximal frame
    cfg.receive_window = WINDOW as u32;
    let (t1, mut inbox) = Transport::start(cfg).await.unwrap();
    let budget = t1.stats.inbound[&NodeId(2)].clone();

    let member = member_endpoint(&dir, 2);
    let conn = connect(&member, addrs[&NodeId(1)], 1).await;
    let mut stream = conn.open_uni().await.unwrap();
    let bytes: Vec<u8> = (0..FRAMES).flat_map(|seq| frame_of_len(2, 1, seq, seq, MAX)).collect();
    let frame = MAX + 4;
    // Nobody takes messages: the first frame fills the budget, and the
    // second's length is read, charged, and waits.
    stream.write_all(&bytes[..frame + 4]).await.unwrap();
    until("the reader waits for budget", || budget.waits.load(Relaxed) == 1).await;
    assert_eq!(budget.queued.load(Relaxed), (MAX + QUEUE_ENTRY_BYTES) as u64);
    let consumed = frame + 4;

    // Write whatever QUIC accepts right now: the initial window is granted
    // at the handshake, and more only as the node reads, which it has
    // stopped doing.
    let mut written = consumed;
    while let Some(n) = now_or_never(stream.write(&bytes[written..])) {
        written += n.unwrap();
        assert!(written < bytes.len(), "all {} bytes accepted by a node that stopped reading", bytes.len());
    }
    assert!(written >= WINDOW, "the initial window was not granted: {written} bytes accepted");
    assert!(
        written <= consumed + WINDOW,
        "{written} bytes accepted, more than the {consumed} read plus one {WINDOW}-byte window"
    );

    // Pushed back, not dropped: once the node takes messages, all of them
    // arrive in order, and the budget was never exceeded.
    let writer = tokio::spawn(async move {
        stream.write_all(&bytes[written..]).await.unwrap();
        stream.finish().unwrap();
        stream
    });
    for seq in 0..FRAMES {
        assert_eq!(next_tag(&mut inbox, 2).await, seq);
    }
    let _stream = writer.await.unwrap();
    assert_eq!(budget.high_water.load(Relaxed), budget.budget);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_connection_from_a_member_replaces_the_older_and_shares_its_budget() {
    const MAX: usize = 64 * 1024;
    let dir = cert_dir("replace", 2);
    let addrs = node_addrs(2);
    let mut cfg = config(1, &addrs, &dir);
    cfg.max_frame = MAX;
    cfg.peer_inbound_bytes = 2 * (MAX + QUEUE_ENTRY_BYTES);
    let (t1, mut inbox) = Transport::start(cfg).await.unwrap();
    let budget = t1.stats.inbound[&NodeId(2)].clone();

    // The first connection fills node 2's budget (nobody takes messages)
    // and its reader waits with a third frame half read.
    let old_endpoint = member_endpoint(&dir, 2);
    let old = connect(&old_endpoint, addrs[&NodeId(1)], 1).await;
    let mut old_stream = old.open_uni().await.unwrap();
    for tag in 0..3 {
        old_stream.write_all(&frame_of_len(2, 1, tag, tag, MAX)).await.unwrap();
    }
    until("the first connection's reader waits", || budget.waits.load(Relaxed) == 1).await;

    // A second connection with node 2's certificate: the first is closed.
    let new_endpoint = member_endpoint(&dir, 2);
    let new = connect(&new_endpoint, addrs[&NodeId(1)], 1).await;
    let closed = tokio::time::timeout(GUARD, old.closed()).await.expect("the older connection is closed");
    assert!(closed.to_string().contains("replaced by a newer connection"), "{closed}");
    assert_eq!(t1.stats.connections_replaced.load(Relaxed), 1);

    // The newer connection does not bring a budget of its own: the two
    // frames the first one queued still fill it, so its reader waits too.
    let mut new_stream = new.open_uni().await.unwrap();
    for seq in 0..3 {
        new_stream.write_all(&frame_of_len(2, 1, seq, 100 + seq, MAX)).await.unwrap();
    }
    until("the newer connection's reader waits on the same budget", || budget.waits.load(Relaxed) == 2).await;
    assert_eq!(budget.queued.load(Relaxed), budget.budget, "two frames of the first connection and no more");

    // What the first connection queued is delivered, then the second's.
    let mut tags = Vec::new();
    for _ in 0..5 {
        tags.push(next_tag(&mut inbox, 2).await);
    }
    assert_eq!(tags, [0, 1, 100, 101, 102], "the closed connection's queued messages kept, in order");
    // Its half-read third frame died with it.
    assert_eq!(inbox.try_recv(), None);
    assert!(budget.high_water.load(Relaxed) <= budget.budget);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_message_is_refused_when_taken_and_its_connection_closed() {
    let dir = cert_dir("malformed", 2);
    let addrs = node_addrs(2);
    let (t1, mut inbox) = Transport::start(config(1, &addrs, &dir)).await.unwrap();
    let member = member_endpoint(&dir, 2);
    let conn = connect(&member, addrs[&NodeId(1)], 1).await;
    let mut stream = conn.open_uni().await.unwrap();
    // A frame whose header (sender, recipient, sequence) is right but whose
    // message is not a message: the header is checked as it arrives, the
    // message only when the node takes it.
    let mut bad = frame_of_len(2, 1, 0, 0, 1000);
    // length (4), version, from, to, seq (one byte each): the message's variant.
    bad[8] = 200;
    stream.write_all(&bad).await.unwrap();
    match next(&mut inbox).await {
        Inbound::Refused { peer: Some(NodeId(2)), reason, .. } => assert!(reason.contains("malformed"), "{reason}"),
        other => panic!("a malformed message was not refused: {other:?}"),
    }
    let closed = tokio::time::timeout(GUARD, conn.closed()).await.expect("the connection is closed");
    assert!(closed.to_string().contains("malformed envelope"), "{closed}");
    // The member is not shut out: a new connection is heard.
    let conn = connect(&member, addrs[&NodeId(1)], 1).await;
    let mut stream = conn.open_uni().await.unwrap();
    stream.write_all(&frame_of_len(2, 1, 0, 5, 1000)).await.unwrap();
    assert_eq!(next_tag(&mut inbox, 2).await, 5);
    // Once the transport is shut down, the inbox ends.
    t1.shutdown().await;
    let end = tokio::time::timeout(GUARD, inbox.recv()).await.expect("hang guard");
    assert_eq!(end, None);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_that_cannot_hold_the_largest_frame_or_a_zero_window_is_refused_at_start() {
    let dir = cert_dir("budget-config", 2);
    let addrs = node_addrs(2);
    let mut cfg = config(1, &addrs, &dir);
    let needed = cfg.max_frame + QUEUE_ENTRY_BYTES;
    cfg.peer_inbound_bytes = needed - 1;
    match Transport::start(cfg.clone()).await {
        Err(TransportError::Budget { budget, min, .. }) => assert_eq!((budget, min), (needed - 1, needed)),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a budget below one maximal frame was accepted: such a frame could never be read"),
    }
    cfg.peer_inbound_bytes = needed;
    cfg.receive_window = 0;
    assert!(matches!(Transport::start(cfg.clone()).await, Err(TransportError::ZeroWindow)), "a zero receive window");
    cfg.receive_window = 1;
    Transport::start(cfg).await.expect("exactly one maximal frame is enough");
    let _ = std::fs::remove_dir_all(dir);
}
