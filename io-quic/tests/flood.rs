//! A member with a valid certificate floods a node (maximal frames as fast
//! as QUIC lets it, from several connections at once, each trying many
//! streams) and cannot grow the node's memory past its budgets, while
//! another member's messages still arrive, in order and complete.
//!
//! The node under attack runs in a child process (this test binary again,
//! running this same test with the victim's spec in its environment, which
//! makes it play the victim), so its resident memory can
//! be read from /proc without the attacker's own buffers in it. The parent
//! plays the flooder (node 3, raw QUIC with node 3's real certificate) and
//! the honest peer (node 2, a real `Transport`), and drives the victim over
//! its stdin and stdout:
//!
//! 1. Warm-up: one honest message and one maximal flood frame go through.
//! 2. The victim stops taking messages; the flood runs until it has
//!    offered many times the budgets. The victim's accounting must show the
//!    flooder's queued bytes within its budget and its reader paused.
//! 3. The victim takes messages again; the honest peer sends its messages
//!    while one flooder connection goes on flooding; all must arrive, in
//!    order.
//! 4. The peak resident memory of the victim, minus its resident memory
//!    after the warm-up, must stay within the budgets plus QUIC's receive
//!    windows plus a margin.
//!
//! Timeouts only guard against hangs; nothing asserts a duration.

#[path = "support/net.rs"]
mod net;

use mpc_core::NodeId;
use mpc_io_quic::frame::DEFAULT_MAX_FRAME;
use mpc_io_quic::transport::{DEFAULT_PEER_INBOUND_BYTES, DEFAULT_RECEIVE_WINDOW};
use mpc_io_quic::{certs, Inbound, Transport};
use net::{cert_dir, config, frame_of_len, member_endpoint, node_addrs, tag_of, tagged, GUARD};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const VICTIM_ENV: &str = "MPC_QUIC_FLOOD_VICTIM";
/// Honest messages sent during the flood (after the warm-up's one): more
/// bytes than the honest member's budget, so they compete with the flood
/// for the victim's attention rather than all waiting in its queue at once.
const HONEST: u64 = 1000;
const HONEST_PAYLOAD: usize = 16 * 1024;
/// Flooder tasks, each holding one connection at a time (the victim keeps
/// only the newest, so they keep replacing each other and reconnecting).
const FLOOD_CONNECTIONS: usize = 4;
/// Streams each flooder connection tries to open.
const FLOOD_STREAMS: usize = 8;
/// What the flood offers while the victim takes nothing: many times what
/// the victim may hold for it.
const FLOOD_OFFERED: u64 = 64 << 20;
/// Allowance for everything that is not queued messages or QUIC receive
/// buffers: allocator slack, connection and TLS state of handshakes in
/// flight, the message being decoded, task stacks.
const RSS_MARGIN: u64 = 16 << 20;

#[test]
fn a_flooding_member_cannot_grow_the_node_past_its_budgets() {
    if let Ok(spec) = std::env::var(VICTIM_ENV) {
        return victim_process(spec);
    }
    let dir = cert_dir("flood", 3);
    let addrs = node_addrs(3);
    let mut victim = Victim::start(&dir, &addrs);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let _enter = rt.enter();
    let victim_addr = addrs[&NodeId(1)];
    let (honest, _honest_inbox) = rt.block_on(Transport::start(config(2, &addrs, &dir))).unwrap();
    let flood = Arc::new(Flood::default());

    // 1. Warm-up, the victim taking messages.
    honest.send(NodeId(1), tagged(2, 0, HONEST_PAYLOAD)).unwrap();
    rt.block_on(async {
        let endpoint = member_endpoint(&dir, 3);
        let conn = net::connect(&endpoint, victim_addr, 1).await;
        let mut stream = conn.open_uni().await.unwrap();
        stream.write_all(&frame_of_len(3, 1, 0, 0, DEFAULT_MAX_FRAME)).await.unwrap();
        stream.finish().unwrap();
        let _ = stream.stopped().await;
    });
    victim.until("the warm-up arrived", |s| s.honest == 1 && s.flood == 1);
    victim.command("hold");
    let baseline = rss_kib(victim.pid(), "VmRSS");

    // 2. The flood, with nobody taking messages. One connection first,
    // until the flooder's budget is full and the victim stops reading from
    // it (or, were nothing bounding it, until it has offered everything)...
    let mut tasks = vec![rt.spawn(flood_from(dir.clone(), victim_addr, flood.clone()))];
    victim.until("the flooder's budget filled", |s| {
        s.peers[&3].waits >= 1 || flood.offered.load(Relaxed) >= FLOOD_OFFERED
    });
    // ...then more connections, which keep replacing each other: each new
    // one is given a receive window of credit, and nothing more, as the
    // member's budget is still full.
    for _ in 1..FLOOD_CONNECTIONS {
        tasks.push(rt.spawn(flood_from(dir.clone(), victim_addr, flood.clone())));
    }
    wait_for("the flood offered its bytes", || flood.offered.load(Relaxed) >= FLOOD_OFFERED);
    let held = victim.stats();
    let held_rss = rss_kib(victim.pid(), "VmRSS");
    let flooder = &held.peers[&3];
    assert!(flooder.high <= flooder.budget, "flooder queued {} bytes, budget {}", flooder.high, flooder.budget);
    assert!(flooder.waits >= 1, "the victim never stopped reading from the flooder");

    // 3. The victim takes messages again. The churning connections give
    // way to one that floods steadily (many connections only cost the
    // flooder its own partial frames), and the honest peer sends meanwhile.
    for t in tasks.drain(1..) {
        t.abort();
    }
    victim.command("drain");
    let offered_at_drain = flood.offered.load(Relaxed);
    let flood_at_drain = held.flood;
    // The flood flows again before the honest messages go out, and nothing
    // stops it until they have all arrived.
    wait_for("the flood resumed", || flood.offered.load(Relaxed) > offered_at_drain + DEFAULT_MAX_FRAME as u64);
    let flood_resumed = victim.stats().flood;
    for k in 1..=HONEST {
        honest.send(NodeId(1), tagged(2, k, HONEST_PAYLOAD)).unwrap();
    }
    victim.until("every honest message arrived", |s| s.honest == HONEST + 1);
    let during = victim.stats();
    flood.stop.store(true, Relaxed);
    for t in tasks {
        t.abort();
    }
    let peak = rss_kib(victim.pid(), "VmHWM");

    // Memory: what the victim may hold for its two members, plus a margin.
    let members = 2;
    let allowed = members * (DEFAULT_PEER_INBOUND_BYTES as u64 + DEFAULT_RECEIVE_WINDOW as u64) + RSS_MARGIN;
    let grown = (peak.saturating_sub(baseline)) * 1024;
    let (connections, streams) = (flood.connections.load(Relaxed), flood.streams.load(Relaxed));
    eprintln!(
        "flood: offered {} MiB on {connections} connections ({streams} streams); victim RSS {} MiB after warm-up, \
         {} MiB held, peak {} MiB (grew {} MiB, allowed {} MiB); flooder queued at most {} bytes of {}; \
         {} flood frames taken while {HONEST} honest messages arrived",
        flood.offered.load(Relaxed) >> 20,
        baseline >> 10,
        held_rss >> 10,
        peak >> 10,
        grown >> 20,
        allowed >> 20,
        during.peers[&3].high,
        during.peers[&3].budget,
        during.flood - flood_resumed,
    );
    assert!(grown <= allowed, "the victim grew by {grown} bytes, more than the {allowed} its budgets allow");

    // In order and complete, while the flooder kept sending.
    assert!(during.in_order, "honest messages out of order or missing");
    assert!(during.flood > flood_at_drain, "what the flooder had queued was not delivered");
    // The victim's own accounting, for both members.
    for (peer, p) in &during.peers {
        assert!(p.high <= p.budget, "node {peer}: {} bytes queued at most, budget {}", p.high, p.budget);
    }
    assert_eq!(during.refused, 0, "the flood was valid traffic: bounded by pushback, not by refusing frames");
    // Several connections, each allowed one stream.
    assert!(connections > FLOOD_CONNECTIONS as u64, "the flooder's connections were not replaced: {connections}");
    assert!(during.replaced > 0);
    assert!(streams <= connections, "{streams} streams opened on {connections} connections");

    victim.command("quit");
    drop(honest);
    let _ = std::fs::remove_dir_all(dir);
}

/// Counters shared by the flooder's tasks.
#[derive(Default)]
struct Flood {
    /// Bytes QUIC accepted from the flooder's writes.
    offered: AtomicU64,
    connections: AtomicU64,
    streams: AtomicU64,
    stop: AtomicBool,
}

/// One flooder task: connects as node 3, tries `FLOOD_STREAMS` streams, and
/// writes maximal valid frames on each as fast as QUIC accepts them; when
/// the connection goes (replaced by another flooder connection), again.
async fn flood_from(dir: PathBuf, to: SocketAddr, flood: Arc<Flood>) {
    let endpoint = member_endpoint(&dir, 3);
    // The first frames of each stream, encoded once.
    let frames: Arc<Vec<Vec<u8>>> =
        Arc::new((0..4).map(|seq| frame_of_len(3, 1, seq, seq, DEFAULT_MAX_FRAME)).collect());
    while !flood.stop.load(Relaxed) {
        let Ok(connecting) = endpoint.connect(to, &certs::node_dns_name(NodeId(1))) else { continue };
        let Ok(conn) = connecting.await else { continue };
        flood.connections.fetch_add(1, Relaxed);
        let mut streams = tokio::task::JoinSet::new();
        for _ in 0..FLOOD_STREAMS {
            let (conn, flood, frames) = (conn.clone(), flood.clone(), frames.clone());
            streams.spawn(async move {
                let Ok(mut stream) = conn.open_uni().await else { return };
                flood.streams.fetch_add(1, Relaxed);
                for seq in 0u64.. {
                    let fresh;
                    let frame = match frames.get(seq as usize) {
                        Some(f) => f,
                        None => {
                            fresh = frame_of_len(3, 1, seq, seq, DEFAULT_MAX_FRAME);
                            &fresh
                        }
                    };
                    let mut at = 0;
                    while at < frame.len() {
                        match stream.write(&frame[at..]).await {
                            Ok(n) => {
                                at += n;
                                flood.offered.fetch_add(n as u64, Relaxed);
                            }
                            Err(_) => return,
                        }
                    }
                }
            });
        }
        conn.closed().await;
        streams.abort_all();
    }
}

/// Waits on the parent's side; the guard only catches a hang.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let give_up = Instant::now() + GUARD;
    while !cond() {
        assert!(Instant::now() < give_up, "hang guard: never {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A field of /proc/<pid>/status, in KiB.
fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("no {field}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// What the victim reports.
#[derive(Debug, Default)]
struct Report {
    honest: u64,
    /// Honest tags arrived as 0, 1, 2, ... with none missing.
    in_order: bool,
    flood: u64,
    replaced: u64,
    /// Refusals naming a member (frames refused, not handshakes abandoned).
    refused: u64,
    peers: BTreeMap<u16, PeerReport>,
}

#[derive(Debug, Default)]
struct PeerReport {
    budget: u64,
    high: u64,
    waits: u64,
}

/// The victim process and its control pipes. Dropping it kills the
/// process (by its handle) if the test failed before telling it to quit.
struct Victim {
    child: Child,
    stdin: ChildStdin,
    /// The victim's stdout, line by line, from a reader thread, so that
    /// waiting for a line has a hang guard.
    lines: std::sync::mpsc::Receiver<String>,
}

impl Victim {
    fn start(dir: &Path, addrs: &BTreeMap<NodeId, SocketAddr>) -> Victim {
        let spec = format!("{} {} {} {}", dir.display(), addrs[&NodeId(1)], addrs[&NodeId(2)], addrs[&NodeId(3)]);
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "a_flooding_member_cannot_grow_the_node_past_its_budgets",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(VICTIM_ENV, spec)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout: ChildStdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut victim = Victim { child, stdin, lines };
        victim.expect("ready");
        victim
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The victim's next protocol line. The test harness prints its own
    /// lines, and may start one ("test victim_process ... ") that ours ends.
    fn line(&mut self) -> String {
        loop {
            let line = self.lines.recv_timeout(GUARD).expect("hang guard: the victim said nothing");
            if let Some(at) = line.find("VICTIM ") {
                return line[at + "VICTIM ".len()..].to_string();
            }
        }
    }

    fn expect(&mut self, what: &str) {
        let line = self.line();
        assert_eq!(line, what, "victim said {line:?}");
    }

    fn command(&mut self, command: &str) {
        writeln!(self.stdin, "{command}").unwrap();
        if command != "quit" {
            self.expect("ok");
        } else {
            assert!(self.child.wait().unwrap().success(), "the victim failed");
        }
    }

    fn stats(&mut self) -> Report {
        writeln!(self.stdin, "stats").unwrap();
        let mut report = Report::default();
        loop {
            let line = self.line();
            let mut words = line.split_whitespace();
            let field = |w: Option<&str>| -> u64 { w.and_then(|w| w.split('=').nth(1)).unwrap().parse().unwrap() };
            match words.next() {
                Some("seen") => {
                    report.honest = field(words.next());
                    report.in_order = field(words.next()) == 1;
                    report.flood = field(words.next());
                    report.replaced = field(words.next());
                    report.refused = field(words.next());
                }
                Some("peer") => {
                    let id: u16 = words.next().unwrap().parse().unwrap();
                    let budget = field(words.next());
                    let high = field(words.next());
                    let waits = field(words.next());
                    report.peers.insert(id, PeerReport { budget, high, waits });
                }
                Some("end") => return report,
                other => panic!("victim said {other:?}"),
            }
        }
    }

    fn until(&mut self, what: &str, cond: impl Fn(&Report) -> bool) {
        let give_up = Instant::now() + GUARD;
        loop {
            let report = self.stats();
            if cond(&report) {
                return;
            }
            assert!(Instant::now() < give_up, "hang guard: never {what}: {report:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Victim {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The victim: node 1 with the default configuration, taking messages or
/// not as the parent says, reporting what it saw and its transport's
/// accounting. Runs in the child process the flood test starts.
fn victim_process(spec: String) {
    let mut words = spec.split(' ');
    let dir = PathBuf::from(words.next().unwrap());
    let addrs: BTreeMap<NodeId, SocketAddr> =
        (1..=3).map(|id| (NodeId(id), words.next().unwrap().parse().unwrap())).collect();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(victim(dir, addrs));
}

#[derive(Default)]
struct Seen {
    honest: u64,
    in_order: bool,
    flood: u64,
    /// Refusals naming a member: frames the victim would not take.
    refused_members: u64,
}

async fn victim(dir: PathBuf, addrs: BTreeMap<NodeId, SocketAddr>) {
    let (transport, mut inbox) = Transport::start(config(1, &addrs, &dir)).await.unwrap();
    let seen = Arc::new(Mutex::new(Seen { in_order: true, ..Seen::default() }));
    let (taking, mut taking_rx) = tokio::sync::watch::channel(true);
    let consumer = {
        let seen = seen.clone();
        tokio::spawn(async move {
            loop {
                while !*taking_rx.borrow_and_update() {
                    if taking_rx.changed().await.is_err() {
                        return;
                    }
                }
                let inbound = tokio::select! {
                    biased;
                    changed = taking_rx.changed() => match changed {
                        Ok(()) => continue,
                        Err(_) => return,
                    },
                    inbound = inbox.recv() => inbound,
                };
                let mut seen = seen.lock().unwrap();
                match inbound {
                    Some(Inbound::Message { from: NodeId(2), msg }) => {
                        let in_order = tag_of(&msg) == Some(seen.honest);
                        seen.in_order &= in_order;
                        seen.honest += 1;
                    }
                    Some(Inbound::Message { from: NodeId(3), .. }) => seen.flood += 1,
                    // The flooder abandoning handshakes when its tasks are stopped.
                    Some(Inbound::Refused { peer: None, .. }) => {}
                    Some(other) => {
                        seen.refused_members += 1;
                        eprintln!("the victim refused: {other:?}");
                    }
                    None => return,
                }
            }
        })
    };
    let (commands_tx, mut commands) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if commands_tx.send(line).is_err() {
                return;
            }
        }
        let _ = commands_tx.send("quit".to_string()); // the parent has gone
    });
    println!("VICTIM ready");
    while let Some(command) = commands.recv().await {
        match command.as_str() {
            "hold" => {
                taking.send_replace(false);
                println!("VICTIM ok");
            }
            "drain" => {
                taking.send_replace(true);
                println!("VICTIM ok");
            }
            "stats" => {
                let stats = &transport.stats;
                {
                    let seen = seen.lock().unwrap();
                    println!(
                        "VICTIM seen honest={} in_order={} flood={} replaced={} refused={}",
                        seen.honest,
                        u8::from(seen.in_order),
                        seen.flood,
                        stats.connections_replaced.load(Relaxed),
                        seen.refused_members
                    );
                }
                for (peer, p) in &stats.inbound {
                    println!(
                        "VICTIM peer {} budget={} high={} waits={}",
                        peer.0,
                        p.budget,
                        p.high_water.load(Relaxed),
                        p.waits.load(Relaxed)
                    );
                }
                println!("VICTIM end");
            }
            "quit" => break,
            other => panic!("unknown command {other:?}"),
        }
    }
    drop(taking);
    let _ = consumer.await;
    // Dropped rather than shut down: a graceful shutdown would wait out the
    // retransmission timers of the handshakes the stopped flooder left
    // half done (seconds to tens of seconds).
    drop(transport);
}
