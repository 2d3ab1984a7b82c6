//! Coordination against a real etcd. Start one first:
//!
//! ```sh
//! eval "$(scripts/etcd.sh start /tmp/mpc-etcd)"   # exports MPC_TEST_ETCD
//! cargo test -p mpc-io-store --test etcd
//! scripts/etcd.sh stop /tmp/mpc-etcd
//! ```
//!
//! Each test uses its own cluster name, so tests share one server safely.
//! Nothing here asserts a duration: conditions are awaited with generous
//! timeouts, and orderings are checked on recorded instants.

mod common;

use common::{free_port, OwnEtcd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mpc_core::NodeId;
use mpc_io_store::coord::{CoordConfig, CoordError, CoordHandle, CoordView, Coordinator, Health, Published};
use tokio::time::Instant;

/// Long enough for any of these conditions on a loaded 2-core CI machine.
const PATIENCE: Duration = Duration::from_secs(60);

/// Debug logs of this crate, shown by the test harness when a test fails.
fn logs() {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::filter::Targets::new().with_target("mpc_io_store", tracing::Level::DEBUG);
    let _ = tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_ansi(false).with_test_writer())
        .with(filter)
        .try_init();
}

fn etcd_endpoint() -> String {
    logs();
    match std::env::var("MPC_TEST_ETCD") {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "MPC_TEST_ETCD is not set: these tests need a real etcd. Start a throwaway one with \
             `eval \"$(scripts/etcd.sh start /tmp/mpc-etcd)\"` (installs Debian's \
             etcd-server if needed and exports MPC_TEST_ETCD), rerun, then \
             `scripts/etcd.sh stop /tmp/mpc-etcd`"
        ),
    }
}

fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("test-{tag}-{}-{nanos:x}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

fn ids(nums: &[u16]) -> Vec<NodeId> {
    nums.iter().copied().map(NodeId).collect()
}

fn config(endpoint: &str, cluster: &str, node: u16) -> CoordConfig {
    let node = NodeId(node);
    CoordConfig {
        endpoints: vec![endpoint.to_string()],
        cluster: cluster.to_string(),
        node,
        lease_ttl_secs: 2,
        dial_timeout: Duration::from_secs(3),
        request_timeout: Duration::from_secs(1),
        tls: None,
        auth: None,
    }
}

async fn connect(endpoint: &str, cluster: &str, node: u16) -> Coordinator {
    Coordinator::connect(config(endpoint, cluster, node))
        .await
        .unwrap_or_else(|e| panic!("connecting node {node} to {endpoint}: {e}"))
}

/// Polls `cond` until it holds; panics with `what` after [`PATIENCE`].
async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let give_up = Instant::now() + PATIENCE;
    while !cond().await {
        assert!(Instant::now() < give_up, "gave up waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Records every view a handle publishes, with the instant it was seen.
fn record(handle: &CoordHandle) -> Arc<Mutex<Vec<(Instant, CoordView)>>> {
    let log = Arc::new(Mutex::new(vec![(Instant::now(), handle.current())]));
    let mut rx = handle.view();
    let sink = log.clone();
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let v = rx.borrow_and_update().clone();
            sink.lock().unwrap().push((Instant::now(), v));
        }
    });
    log
}

/// The first instant at or after `after` at which the recorded view matched.
fn first_after(
    log: &Mutex<Vec<(Instant, CoordView)>>,
    after: Instant,
    pred: impl Fn(&CoordView) -> bool,
) -> Option<Instant> {
    log.lock().unwrap().iter().find(|(t, v)| *t >= after && pred(v)).map(|(t, _)| *t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_key_is_published_once_and_conflicts_are_refused() {
    let endpoint = etcd_endpoint();
    let cluster = unique("pk");
    let a = connect(&endpoint, &cluster, 1).await;
    let b = connect(&endpoint, &cluster, 2).await;
    let first = [0x02; 33];
    let mut other = first;
    other[32] = 0x03;

    assert_eq!(a.public_key().await.unwrap(), None);
    assert_eq!(a.publish_public_key(&first).await.unwrap(), Published::Created);
    assert_eq!(b.publish_public_key(&first).await.unwrap(), Published::AlreadyThere);
    let err = b.publish_public_key(&other).await.unwrap_err();
    let msg = err.to_string();
    match err {
        CoordError::PublicKeyConflict { existing_hex, offered_hex, .. } => {
            assert_eq!(existing_hex, hex::encode(first));
            assert_eq!(offered_hex, hex::encode(other));
        }
        e => panic!("expected a public key conflict, got {e}"),
    }
    assert!(msg.contains(&hex::encode(first)), "{msg}");
    assert!(msg.contains(&hex::encode(other)), "{msg}");
    assert!(msg.contains(&cluster), "{msg}");
    assert_eq!(b.public_key().await.unwrap(), Some(first.to_vec()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_fails_over_when_its_lease_expires() {
    let endpoint = etcd_endpoint();
    let cluster = unique("failover");
    let observer = connect(&endpoint, &cluster, 9).await;
    let mut handles = Vec::new();
    let mut coords = Vec::new();
    for node in 1..=3 {
        let c = connect(&endpoint, &cluster, node).await;
        handles.push(c.start().unwrap());
        coords.push(c);
    }
    assert!(matches!(coords[0].start(), Err(CoordError::AlreadyStarted(NodeId(1)))));

    // Exactly one leads and all three agree on it.
    let agreed = || {
        let views: Vec<CoordView> = handles.iter().map(|h| h.current()).collect();
        let leaders: Vec<usize> = (0..3).filter(|&i| views[i].i_lead).collect();
        match leaders[..] {
            [i] => {
                let l = NodeId(i as u16 + 1);
                views.iter().all(|v| v.leader == Some(l) && v.health == Health::Ok)
            }
            _ => false,
        }
    };
    eventually("one leader that all three views agree on", || async { agreed() }).await;
    let old = handles.iter().position(|h| h.current().i_lead).unwrap();
    let old_id = NodeId(old as u16 + 1);
    let first_term = handles[old].current().term;
    assert!(first_term > 0, "a held lease has a term");
    eventually("all three registered as live", || async { observer.live_nodes().await.unwrap() == ids(&[1, 2, 3]) })
        .await;

    let logs: Vec<_> = handles.iter().map(record).collect();
    let frozen_at = Instant::now();
    handles[old].freeze_lease_for_tests();

    eventually("another node leads", || async {
        handles.iter().enumerate().any(|(i, h)| i != old && h.current().i_lead)
    })
    .await;
    let new = handles.iter().position(|h| h.current().i_lead).unwrap();
    assert_ne!(new, old);
    let new_id = NodeId(new as u16 + 1);
    assert!(!handles[old].current().i_lead);

    // The old leader stepped down before the new one started leading.
    let stepped_down =
        first_after(&logs[old], frozen_at, |v| !v.i_lead).expect("the old leader's view never reported i_lead false");
    let took_over =
        first_after(&logs[new], frozen_at, |v| v.i_lead).expect("the new leader's view never reported i_lead true");
    assert!(stepped_down < took_over, "node {old_id} still claimed the leadership when node {new_id} took it over");
    // Nobody else claimed it in between.
    for (i, log) in logs.iter().enumerate() {
        if i != new {
            assert!(
                first_after(log, stepped_down, |v| v.i_lead).is_none(),
                "node {} led after the old leader stepped down",
                i + 1
            );
        }
    }

    // The old node's liveness key went away with its lease; the others agree
    // on the new leader.
    let mut expected: Vec<NodeId> = ids(&[1, 2, 3]);
    expected.retain(|&n| n != old_id);
    eventually("the old leader's liveness key expires", || async { observer.live_nodes().await.unwrap() == expected })
        .await;
    eventually("the survivors agree on the new leader", || async {
        handles.iter().enumerate().all(|(i, h)| i == old || h.current().leader == Some(new_id))
    })
    .await;
    assert_eq!(handles[old].current().leader, None);
    // What the core is told: the new leader, at every survivor.
    for (i, h) in handles.iter().enumerate().filter(|(i, _)| *i != old) {
        match h.current().leadership_input() {
            mpc_core::Input::Leadership { leader, term } => {
                assert_eq!(leader, Some(new_id), "node {}", i + 1);
                // The new holder's key was created after the old one's, so
                // sessions the old holder starts now are fenced off.
                assert!(term > first_term, "node {}: term {term} after {first_term}", i + 1);
            }
            other => panic!("{other:?}"),
        }
    }

    // Shutting down revokes: the liveness keys go at once.
    for h in handles {
        h.shutdown().await;
    }
    assert_eq!(observer.live_nodes().await.unwrap(), Vec::<NodeId>::new());
}

/// The leadership gate: a closed gate never claims the key, and a holder
/// whose gate closes deletes it at once (well within a lease TTL), so an
/// open node takes over through its watch; reopened, the first can lead
/// again once the key is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_leadership_gate_steps_down_at_once_and_never_claims() {
    let endpoint = etcd_endpoint();
    let cluster = unique("gate");
    let a = connect(&endpoint, &cluster, 1).await;
    let b = connect(&endpoint, &cluster, 2).await;
    let ha = a.start().unwrap();
    eventually("node 1 leads", || async { ha.current().i_lead }).await;
    let first_term = ha.current().term;
    let hb = b.start_gated(false).unwrap();
    assert!(!hb.gate().is_open());
    eventually("node 2 sees node 1 lead", || async { hb.current().leader == Some(NodeId(1)) }).await;

    // Node 2 closed and node 1 steps down: the key is free and stays free
    // (node 1 would claim it again within a round if its gate opened).
    let log_b = record(&hb);
    let closed_at = Instant::now();
    ha.gate().set(false);
    eventually("node 1 steps down", || async { !ha.current().i_lead }).await;
    let stepped_down = closed_at.elapsed();
    // A lease TTL is 2 s here: expiry alone could not explain this.
    assert!(stepped_down < Duration::from_millis(1_500), "stepping down took {stepped_down:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!ha.current().i_lead && !hb.current().i_lead, "a closed gate claimed the key");
    assert_eq!(hb.current().leader, None, "{:?}", hb.current());
    assert!(first_after(&log_b, closed_at, |v| v.i_lead).is_none(), "node 2 led with its gate closed");

    // Node 2 opens: it claims the free key under a newer term.
    hb.gate().set(true);
    eventually("node 2 leads", || async { hb.current().i_lead }).await;
    assert!(hb.current().term > first_term);
    eventually("node 1 sees node 2 lead", || async { ha.current().leader == Some(NodeId(2)) }).await;
    // Node 1 opens again: node 2 keeps the key.
    ha.gate().set(true);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(hb.current().i_lead && !ha.current().i_lead);
    ha.shutdown().await;
    hb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn epochs_only_ever_rise() {
    let endpoint = etcd_endpoint();
    let cluster = unique("epoch");
    let c = connect(&endpoint, &cluster, 4).await;
    assert_eq!(c.epoch(NodeId(4)).await.unwrap(), None);
    assert_eq!(c.advance_epoch(5).await.unwrap(), 5);
    assert_eq!(c.advance_epoch(3).await.unwrap(), 5);
    assert_eq!(c.epoch(NodeId(4)).await.unwrap(), Some(5));
    assert_eq!(c.advance_epoch(7).await.unwrap(), 7);
    assert_eq!(c.epoch(NodeId(4)).await.unwrap(), Some(7));
    assert_eq!(c.epoch(NodeId(5)).await.unwrap(), None);

    // Two writers racing: the maximum wins, and no call ever sees the
    // stored epoch go down.
    let a = Arc::new(connect(&endpoint, &cluster, 4).await);
    let b = Arc::new(connect(&endpoint, &cluster, 4).await);
    let run = |c: Arc<Coordinator>, epochs: Vec<u64>| {
        tokio::spawn(async move {
            let mut seen = 0;
            for e in epochs {
                let now = c.advance_epoch(e).await.unwrap();
                assert!(now >= e && now >= seen, "epoch went from {seen} to {now}");
                seen = now;
            }
        })
    };
    let ta = run(a, (10..60).step_by(2).collect());
    let tb = run(b, (11..60).step_by(2).collect());
    ta.await.unwrap();
    tb.await.unwrap();
    assert_eq!(c.epoch(NodeId(4)).await.unwrap(), Some(59));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_port_is_reported_unreachable() {
    logs();
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut cfg = config(&endpoint, &unique("closed"), 1);
    cfg.dial_timeout = Duration::from_secs(2);
    match Coordinator::connect(cfg).await {
        Err(e @ CoordError::Unreachable(_)) => {
            let msg = e.to_string();
            assert!(msg.contains("unreachable"), "{msg}");
            assert!(msg.contains(&endpoint), "{msg}");
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_etcd_pauses_leadership_and_recovers() {
    // Fail like the other tests when no etcd was set up, even though this
    // one brings its own server.
    etcd_endpoint();
    let mut etcd = OwnEtcd::start("own-etcd");
    let endpoint = etcd.endpoint();
    let cluster = unique("lost");

    let give_up = Instant::now() + PATIENCE;
    let coord = loop {
        match Coordinator::connect(config(&endpoint, &cluster, 1)).await {
            Ok(c) => break c,
            Err(e) => assert!(Instant::now() < give_up, "the private etcd never answered: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let handle = coord.start().unwrap();
    eventually("the only node leads", || async {
        let v = handle.current();
        v.i_lead && v.leader == Some(NodeId(1)) && v.etcd_reachable && v.health == Health::Ok
    })
    .await;
    let first_lease = node_lease(&endpoint, &cluster, 1).await.expect("node 1 registered under a lease");

    etcd.kill();
    eventually("etcd's loss is reported", || async {
        let v = handle.current();
        !v.etcd_reachable && v.leader.is_none() && !v.i_lead
    })
    .await;
    match handle.current().health {
        Health::Degraded { reason } => {
            assert!(reason.contains("etcd unreachable since"), "{reason}");
            assert!(reason.contains("leader-only work paused"), "{reason}");
        }
        Health::Ok => panic!("health stays Ok without etcd"),
    }

    // Stay away longer than the lease lives, so the node must re-register
    // (same ports and data: etcd restores the old lease, which the node
    // revokes), then lead again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    etcd.spawn();
    eventually("the node leads again once etcd is back", || async {
        let v = handle.current();
        v.i_lead && v.etcd_reachable && v.health == Health::Ok
    })
    .await;
    assert_eq!(coord.live_nodes().await.unwrap(), ids(&[1]));
    // Re-registered: its liveness key now hangs on a lease granted after
    // the restart, not on the one etcd restored from its data.
    let second_lease = node_lease(&endpoint, &cluster, 1).await.expect("node 1 registered again");
    assert_ne!(second_lease, first_lease, "node 1 still hangs on the lease it had before etcd went away");
    handle.shutdown().await;
}

/// The lease `nodes/<id>` is attached to, read straight from etcd.
async fn node_lease(endpoint: &str, cluster: &str, node: u16) -> Option<i64> {
    let mut client = etcd_client::Client::connect([endpoint], None).await.expect("connect to etcd");
    let got = client.get(format!("/mpc/{cluster}/nodes/{node}"), None).await.expect("read the liveness key");
    got.kvs().first().map(|kv| kv.lease())
}
