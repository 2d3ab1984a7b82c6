//! Loopback helpers for the bounds tests: real certificates from
//! `certs::init`, free ports, raw QUIC endpoints that present a member's
//! real certificate and write whatever frames a test wants.

#![allow(dead_code)] // each includer uses part of it

use mpc_core::{NodeId, PeerMessage, PresigId, SessionId};
use mpc_io_quic::frame::{self, WireEnvelope};
use mpc_io_quic::{certs, tls, TransportConfig};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// Only catches a hang; nothing asserts a duration.
pub const GUARD: Duration = Duration::from_secs(60);

pub fn cert_dir(name: &str, nodes: u16) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mpc-quic-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(certs::default_ca_dir(&dir));
    certs::init(&dir, &certs::default_ca_dir(&dir), name, nodes, 30).unwrap();
    dir
}

/// Free loopback addresses for nodes 1..=n.
pub fn node_addrs(n: u16) -> BTreeMap<NodeId, SocketAddr> {
    let sockets: Vec<_> = (0..n).map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
    sockets.iter().zip(1..).map(|(s, id)| (NodeId(id), s.local_addr().unwrap())).collect()
}

pub fn config(me: u16, addrs: &BTreeMap<NodeId, SocketAddr>, dir: &Path) -> TransportConfig {
    let mut cfg = TransportConfig::new(NodeId(me), addrs[&NodeId(me)], dir.to_path_buf());
    cfg.peers = addrs.clone();
    cfg
}

/// A client endpoint presenting member `me`'s real certificate, with a send
/// window large enough that only the receiver's flow control limits what
/// it may write.
pub fn member_endpoint(dir: &Path, me: u16) -> quinn::Endpoint {
    let mut client = tls::load(dir, NodeId(me)).unwrap().client;
    let mut transport = quinn::TransportConfig::default();
    transport.send_window(256 << 20);
    client.transport_config(Arc::new(transport));
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(client);
    endpoint
}

pub async fn connect(endpoint: &quinn::Endpoint, to: SocketAddr, to_id: u16) -> quinn::Connection {
    endpoint.connect(to, &certs::node_dns_name(NodeId(to_id))).unwrap().await.unwrap()
}

/// A protocol message of `payload` bytes whose first eight carry `tag`.
pub fn tagged(origin: u16, tag: u64, payload: usize) -> PeerMessage {
    let mut bytes = vec![0x5a; payload.max(8)];
    bytes[..8].copy_from_slice(&tag.to_be_bytes());
    PeerMessage::Protocol {
        session: SessionId::Presign(PresigId { origin: NodeId(origin), seq: 1 }),
        broadcast: true,
        payload: bytes,
    }
}

/// The tag of a [`tagged`] message.
pub fn tag_of(msg: &PeerMessage) -> Option<u64> {
    match msg {
        PeerMessage::Protocol { payload, .. } if payload.len() >= 8 => {
            Some(u64::from_be_bytes(payload[..8].try_into().unwrap()))
        }
        _ => None,
    }
}

/// A frame from `from` to `to` with sequence `seq`, carrying a message
/// tagged `tag`, exactly `len` bytes long as the length field counts them
/// (the version byte and the envelope): `len = max_frame` is a maximal frame.
pub fn frame_of_len(from: u16, to: u16, seq: u64, tag: u64, len: usize) -> Vec<u8> {
    let encode = |payload: usize| {
        let envelope = WireEnvelope { from: NodeId(from), to: NodeId(to), seq, msg: tagged(from, tag, payload) };
        frame::encode(&envelope, usize::MAX).unwrap()
    };
    // Converge on the payload size from below (the payload's varint length
    // prefix grows at 2^16 and 2^32).
    let mut payload = len - 64;
    for _ in 0..3 {
        let bytes = encode(payload);
        match (bytes.len() - 4).cmp(&len) {
            std::cmp::Ordering::Equal => return bytes,
            std::cmp::Ordering::Less => payload += len - (bytes.len() - 4),
            std::cmp::Ordering::Greater => payload -= (bytes.len() - 4) - len,
        }
    }
    panic!("no payload size gives a frame of exactly {len} bytes")
}

/// Polls `f` once: its output if it is ready now, without waiting. Used to
/// ask what QUIC allows at this moment (a stream, flow-control credit),
/// which the peer's limits decide, not timing.
pub fn now_or_never<F: Future>(f: F) -> Option<F::Output> {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

/// Polls `cond` until it holds; the guard only catches a hang.
pub async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let give_up = std::time::Instant::now() + GUARD;
    while !cond() {
        assert!(std::time::Instant::now() < give_up, "hang guard: never {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
