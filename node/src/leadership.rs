//! When this node is fit to hold the etcd leadership: only while it
//! reaches enough members to run a presigning session, i.e. itself and
//! `threshold - 1` peers over QUIC.
//!
//! The lease holder is the only node that refills the presignature pool.
//! A holder cut off on the small side of a partition that etcd itself does
//! not split would keep its lease, and the side that can still sign would
//! run out of presignatures for its own members with nobody to make new
//! ones (the network_partition suite's 2/3 split). Like Raft's CheckQuorum,
//! such a holder gives the lease up ([`mpc_io_store::coord::LeadershipGate`])
//! and a member that reaches enough peers takes it over.
//!
//! Losing peers closes the gate only after [`STEP_DOWN_GRACE`] below the
//! bar, so a peer's restart or a certificate rotation does not move the
//! leadership; regaining them opens it at once.

use std::time::{Duration, Instant};

/// How long connectivity must stay below the bar before the node steps
/// down.
pub const STEP_DOWN_GRACE: Duration = Duration::from_secs(3);

/// The rule, fed the number of connected peers; see the module docs.
#[derive(Debug)]
pub struct LeadershipRule {
    /// Peers needed besides this node: `threshold - 1`.
    needed_peers: usize,
    /// Since when connectivity has been below the bar, while the gate is
    /// still open.
    below_since: Option<Instant>,
    fit: bool,
}

impl LeadershipRule {
    /// Starts unfit: a node that has not reached its peers yet does not
    /// claim the leadership.
    pub fn new(threshold: u16) -> Self {
        LeadershipRule { needed_peers: usize::from(threshold.saturating_sub(1)), below_since: None, fit: false }
    }

    /// Whether the node is fit to lead, given `connected` peers at `now`.
    pub fn observe(&mut self, connected: usize, now: Instant) -> bool {
        if connected >= self.needed_peers {
            self.below_since = None;
            self.fit = true;
        } else if self.fit {
            let since = *self.below_since.get_or_insert(now);
            if now.duration_since(since) >= STEP_DOWN_GRACE {
                self.fit = false;
                self.below_since = None;
            }
        }
        self.fit
    }

    pub fn needed_peers(&self) -> usize {
        self.needed_peers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unfit_until_enough_peers_then_steps_down_only_after_the_grace() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // 3-of-5: two peers are enough.
        let mut rule = LeadershipRule::new(3);
        assert_eq!(rule.needed_peers(), 2);
        assert!(!rule.observe(0, at(0)), "fit before reaching anyone");
        assert!(!rule.observe(1, at(100)));
        assert!(rule.observe(2, at(200)), "two peers and itself can presign");
        // A dip shorter than the grace changes nothing.
        assert!(rule.observe(1, at(300)));
        assert!(rule.observe(1, at(300 + 2_999)));
        assert!(rule.observe(4, at(3_400)));
        // The grace counts from the latest dip, not the first.
        assert!(rule.observe(1, at(4_000)));
        assert!(rule.observe(0, at(6_999)));
        assert!(!rule.observe(0, at(7_000)), "below the bar for the whole grace");
        assert!(!rule.observe(1, at(20_000)));
        assert!(rule.observe(2, at(20_001)), "regained peers open the gate at once");
    }

    #[test]
    fn a_threshold_of_one_needs_no_peer() {
        let mut rule = LeadershipRule::new(1);
        assert!(rule.observe(0, Instant::now()));
    }
}
