//! A UDP proxy in front of every node's QUIC port, so a test can cut and
//! repair each directed link between real processes.
//!
//! Node `j` listens on its real port; the member list (what every node
//! dials) names the proxy's port for `j` instead. The proxy tells the
//! sender by its source address (each node sends from its one listening
//! socket), forwards through an upstream socket per sender, and passes
//! the replies back. A cut link `(from, to)` drops every datagram from
//! `from` to `to`, both the ones `from` sends to `to`'s proxy and the
//! replies `to` sends back to `from` through it: QUIC sees silence, as on
//! a pulled cable.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

type Cuts = Arc<Mutex<BTreeSet<(u16, u16)>>>;

pub struct FaultProxy {
    cuts: Cuts,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    ids: Vec<u16>,
}

/// What each proxy thread needs.
#[derive(Clone)]
struct Link {
    cuts: Cuts,
    stop: Arc<AtomicBool>,
    /// Real listening address of each node, and the node at each.
    senders: Arc<BTreeMap<SocketAddr, u16>>,
}

impl Link {
    fn is_cut(&self, from: u16, to: u16) -> bool {
        self.cuts.lock().expect("cuts").contains(&(from, to))
    }
}

const POLL: Duration = Duration::from_millis(100);

impl FaultProxy {
    /// Proxies for `nodes`: node id to (the address the members dial, the
    /// node's real listening address).
    pub fn start(nodes: &BTreeMap<u16, (SocketAddr, SocketAddr)>) -> FaultProxy {
        let link = Link {
            cuts: Arc::new(Mutex::new(BTreeSet::new())),
            stop: Arc::new(AtomicBool::new(false)),
            senders: Arc::new(nodes.iter().map(|(id, (_, real))| (*real, *id)).collect()),
        };
        let mut threads = Vec::new();
        for (to, (public, real)) in nodes {
            let front = UdpSocket::bind(public).unwrap_or_else(|e| panic!("proxy for node {to} on {public}: {e}"));
            front.set_read_timeout(Some(POLL)).unwrap();
            let (to, real, link) = (*to, *real, link.clone());
            threads.push(std::thread::spawn(move || serve(front, to, real, link)));
        }
        FaultProxy { cuts: link.cuts, stop: link.stop, threads, ids: nodes.keys().copied().collect() }
    }

    /// Drops everything `from` sends to `to` (one direction).
    pub fn cut(&self, from: u16, to: u16) {
        self.cuts.lock().expect("cuts").insert((from, to));
    }

    /// Cuts every link between a node of `a` and a node of `b`, both ways.
    pub fn split(&self, a: &[u16], b: &[u16]) {
        for x in a {
            for y in b {
                self.cut(*x, *y);
                self.cut(*y, *x);
            }
        }
    }

    /// Cuts `id` off from every other node.
    pub fn isolate(&self, id: u16) {
        let others: Vec<u16> = self.ids.iter().copied().filter(|n| *n != id).collect();
        self.split(&[id], &others);
    }

    /// Repairs every link.
    pub fn heal(&self) {
        self.cuts.lock().expect("cuts").clear();
    }
}

/// The front socket of node `to`: forwards each sender's datagrams to the
/// node through that sender's upstream socket, made at its first datagram.
fn serve(front: UdpSocket, to: u16, real: SocketAddr, link: Link) {
    let front = Arc::new(front);
    let mut upstreams: BTreeMap<SocketAddr, Arc<UdpSocket>> = BTreeMap::new();
    let mut repliers = Vec::new();
    let mut buf = vec![0u8; 65_536];
    while !link.stop.load(Ordering::Relaxed) {
        let (len, src) = match front.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
            Err(_) => continue,
        };
        let Some(from) = link.senders.get(&src).copied() else { continue };
        if link.is_cut(from, to) {
            continue;
        }
        let up = upstreams.entry(src).or_insert_with(|| {
            let up = UdpSocket::bind("127.0.0.1:0").expect("upstream socket");
            up.connect(real).expect("connect upstream");
            up.set_read_timeout(Some(POLL)).unwrap();
            let up = Arc::new(up);
            let (up2, front2, link2) = (up.clone(), front.clone(), link.clone());
            repliers.push(std::thread::spawn(move || reply(up2, front2, src, from, to, link2)));
            up
        });
        let _ = up.send(&buf[..len]);
    }
    for r in repliers {
        let _ = r.join();
    }
}

/// Passes node `to`'s answers to `from` back out of the front socket.
fn reply(up: Arc<UdpSocket>, front: Arc<UdpSocket>, dst: SocketAddr, from: u16, to: u16, link: Link) {
    let mut buf = vec![0u8; 65_536];
    while !link.stop.load(Ordering::Relaxed) {
        match up.recv(&mut buf) {
            Ok(len) => {
                if !link.is_cut(to, from) {
                    let _ = front.send_to(&buf[..len], dst);
                }
            }
            Err(_) => continue,
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket() -> UdpSocket {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        s
    }

    fn free_addr() -> SocketAddr {
        socket().local_addr().unwrap()
    }

    /// Node 1 sends to node 2's public address; node 2 answers whoever it
    /// heard from. A cut drops each direction on its own; heal restores.
    #[test]
    fn cuts_drop_one_direction_and_heal_restores_both() {
        let (one, two) = (socket(), socket());
        let nodes = BTreeMap::from([
            (1u16, (free_addr(), one.local_addr().unwrap())),
            (2u16, (free_addr(), two.local_addr().unwrap())),
        ]);
        let proxy = FaultProxy::start(&nodes);
        let two_public = nodes[&2].0;
        let mut buf = [0u8; 64];
        let round_trip = |payload: &[u8], buf: &mut [u8]| -> (bool, bool) {
            one.send_to(payload, two_public).unwrap();
            let Ok((len, from)) = two.recv_from(buf) else { return (false, false) };
            assert_eq!(&buf[..len], payload);
            two.send_to(b"ack", from).unwrap();
            (true, one.recv_from(buf).is_ok())
        };
        assert_eq!(round_trip(b"hello", &mut buf), (true, true));
        proxy.cut(2, 1);
        assert_eq!(round_trip(b"half", &mut buf), (true, false), "the answer crossed a cut link");
        proxy.heal();
        proxy.isolate(1);
        assert_eq!(round_trip(b"cut", &mut buf), (false, false), "a datagram crossed an isolation");
        proxy.heal();
        assert_eq!(round_trip(b"again", &mut buf), (true, true));
    }
}
