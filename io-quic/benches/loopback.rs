//! Messages per second and one-way latency (p50/p99) between two nodes
//! over loopback QUIC with mutual TLS, for a vote-sized message and for
//! protocol messages of presigning-round sizes (cggmp24 rounds carry
//! Paillier ciphertexts and ZK proofs: kilobytes to tens of kilobytes).
//! Ratios are against the vote figure of the same run.
//!
//!   cargo bench -p mpc-io-quic --bench loopback [-- MESSAGES]

use mpc_core::vote::{Decision, SignedVote, VoteBody};
use mpc_core::{NodeId, PeerMessage, PresigId, SessionId, TxId};
use mpc_io_quic::{certs, Inbound, Transport, TransportConfig};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

struct Figures {
    label: String,
    bytes: usize,
    per_second: f64,
    /// One message in flight at a time: the network path itself.
    p50: Duration,
    p99: Duration,
    /// With the queue kept full: what a burst waits.
    loaded_p50: Duration,
}

fn main() {
    let count: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(5000);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let figures = runtime.block_on(run(count));
    println!("loopback QUIC + mutual TLS, node 1 -> node 2, {count} messages per size");
    println!("msgs/s and MB/s with the queue kept full; p50/p99 one-way latency with one message in flight;");
    println!("loaded p50: one-way latency of a message queued behind a full queue");
    println!(
        "{:<26} {:>7} {:>9} {:>8} {:>9} {:>9} {:>11} {:>7}",
        "message", "bytes", "msgs/s", "MB/s", "p50", "p99", "loaded p50", "ratio"
    );
    let base = figures[0].per_second;
    for f in &figures {
        println!(
            "{:<26} {:>7} {:>9.0} {:>8.1} {:>9.2?} {:>9.2?} {:>11.2?} {:>6.2}x",
            f.label,
            f.bytes,
            f.per_second,
            f.per_second * f.bytes as f64 / 1e6,
            f.p50,
            f.p99,
            f.loaded_p50,
            f.per_second / base
        );
    }
    println!("ratio: message rate relative to votes in this run");
}

async fn run(count: usize) -> Vec<Figures> {
    let dir = std::env::temp_dir().join(format!("mpc-quic-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(certs::default_ca_dir(&dir));
    certs::init(&dir, &certs::default_ca_dir(&dir), "bench", 2, 1).unwrap();
    let sockets: Vec<_> = (0..2).map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
    let addrs: BTreeMap<NodeId, std::net::SocketAddr> =
        sockets.iter().enumerate().map(|(i, s)| (NodeId(i as u16 + 1), s.local_addr().unwrap())).collect();
    drop(sockets);
    let start = |me: u16| {
        let mut cfg = TransportConfig::new(NodeId(me), addrs[&NodeId(me)], dir.clone());
        cfg.peers = addrs.clone();
        Transport::start(cfg)
    };
    let (sender, _inbox1) = start(1).await.unwrap();
    let (_receiver, mut inbox) = start(2).await.unwrap();

    let vote = PeerMessage::Vote(SignedVote {
        body: VoteBody { tx: TxId([7; 32]), voter: NodeId(1), decision: Decision::Approve },
        signature: [9; 64],
    });
    let round = |size: usize| PeerMessage::Protocol {
        session: SessionId::Presign(PresigId { origin: NodeId(1), seq: 1 }),
        broadcast: false,
        payload: vec![0x5a; size],
    };
    let cases = [
        ("vote".to_string(), vote),
        ("presigning round, 4 KiB".to_string(), round(4 * 1024)),
        ("presigning round, 16 KiB".to_string(), round(16 * 1024)),
        ("presigning round, 64 KiB".to_string(), round(64 * 1024)),
    ];
    // Warm the connection up.
    sender.send(NodeId(2), cases[0].1.clone()).unwrap();
    inbox.recv().await.unwrap();

    let mut out = Vec::new();
    for (label, message) in cases {
        let bytes = bincode::serialize(&message).unwrap().len();
        let mut sent_at = Vec::with_capacity(count);
        let mut latencies = Vec::with_capacity(count);
        let begin = Instant::now();
        let mut received = 0;
        while received < count {
            // Queue while there is room; collect what has arrived.
            while sent_at.len() < count && sender.send(NodeId(2), message.clone()).is_ok() {
                sent_at.push(Instant::now());
            }
            match tokio::time::timeout(Duration::from_millis(1), inbox.recv()).await {
                Ok(Some(Inbound::Message { .. })) => {
                    latencies.push(sent_at[received].elapsed());
                    received += 1;
                }
                Ok(other) => panic!("unexpected {other:?}"),
                Err(_) => {}
            }
        }
        let total = begin.elapsed();
        latencies.sort();
        let loaded_p50 = latencies[latencies.len() / 2];
        let mut single = Vec::with_capacity(count / 10);
        for _ in 0..(count / 10).max(100) {
            let t = Instant::now();
            sender.send(NodeId(2), message.clone()).unwrap();
            inbox.recv().await.unwrap();
            single.push(t.elapsed());
        }
        single.sort();
        out.push(Figures {
            label,
            bytes,
            per_second: count as f64 / total.as_secs_f64(),
            p50: single[single.len() / 2],
            p99: single[single.len() * 99 / 100],
            loaded_p50,
        });
    }
    let _ = std::fs::remove_dir_all(dir);
    out
}
