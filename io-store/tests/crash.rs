//! A writer process killed with SIGKILL in the middle of its writes loses
//! nothing it had acknowledged, on both backends: the child applies one
//! step at a time and prints "acked N" only after each commit; the parent
//! kills it mid-stream, reopens the database, and checks that the node
//! recovered from it is the node replayed from a prefix of the stream that
//! holds every step it saw acknowledged (the child may have committed a few
//! more before the kill landed, and one more before its acknowledgement was
//! printed). Three kills per backend, each resuming where the durable state
//! ends.

mod common;

use common::*;
use mpc_core::{Millis, NodeId, Record};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

const CHILD: &str = "MPC_STORE_CRASH_CHILD";
const TEST: &str = "sigkill_mid_writes_loses_nothing_acknowledged";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_writes_loses_nothing_acknowledged() {
    if let Ok(spec) = std::env::var(CHILD) {
        return child(&spec).await;
    }
    let (_, node, records) = streams().iter().max_by_key(|(_, _, s)| s.len()).unwrap();
    let file = scratch_dir().join(format!("crash-records-{}.json", std::process::id()));
    std::fs::write(&file, serde_json::to_vec(records).unwrap()).unwrap();
    for backend in BACKENDS {
        let url = fresh_db(backend, "crash").await;
        let mut durable = 0usize;
        for round in 0..3 {
            // Kill somewhere in the next quarter of the stream.
            let kill_after = durable + records.len() / 8 + round * 3;
            let spec = format!("{url}|{}|{}|{}", node.0, file.display(), durable);
            let mut child = Command::new(std::env::current_exe().unwrap())
                .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
                .env(CHILD, spec)
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap();
            let mut last_acked = None;
            for line in BufReader::new(child.stdout.take().unwrap()).lines() {
                let line = line.unwrap();
                if let Some(n) = line.strip_prefix("acked ") {
                    let n: usize = n.trim().parse().unwrap();
                    last_acked = Some(n);
                    if n >= kill_after {
                        child.kill().unwrap(); // SIGKILL
                        break;
                    }
                }
            }
            child.wait().unwrap();
            let acked = last_acked.expect("the child acknowledged writes") + 1;
            assert!(acked < records.len(), "killed before the end of the stream");

            let store = open(&url, *node).await;
            let recovered = view_of(*node, store.recover().await.unwrap().records);
            store.verify_audit().await.unwrap_or_else(|e| panic!("{backend:?}: audit chain after SIGKILL: {e}"));
            store.close().await;
            // The child may have run ahead of the acknowledgements read
            // here before the kill landed: the database must hold a prefix
            // of the stream that includes every step read as acknowledged.
            durable = (acked..=records.len())
                .find(|k| recovered == view_of(*node, records[..*k].to_vec()))
                .unwrap_or_else(|| {
                    panic!(
                        "{backend:?}, round {round}: after SIGKILL the database is no prefix of the stream \
                         holding the {acked} acknowledged steps"
                    )
                });
        }
        assert!(durable > records.len() / 4, "{backend:?}: the rounds made progress");
    }
    let _ = std::fs::remove_file(file);
}

/// The writer: one record per step from `start` on, an acknowledgement
/// after each commit, then it waits to be killed.
async fn child(spec: &str) {
    let parts: Vec<&str> = spec.split('|').collect();
    let (url, node, file, start) = (parts[0], NodeId(parts[1].parse().unwrap()), parts[2], parts[3].parse().unwrap());
    let records: Vec<Record> = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
    let store = open(url, node).await;
    let mut out = std::io::stdout().lock();
    for i in start..records.len() {
        store.apply(Millis(i as u64), &records[i..=i]).await.unwrap();
        writeln!(out, "acked {i}").unwrap();
        out.flush().unwrap();
    }
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(60)).await;
    }
}
