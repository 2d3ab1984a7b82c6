//! Pauses between retries: exponential, capped and jittered (`backon`), so
//! that five nodes retrying against one recovering etcd or database spread
//! out instead of arriving in step. Production code only: the core never
//! waits and never draws ambient randomness.

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// The pauses of [`jittered`]. `Sync` (the generator's state sits behind a
/// lock only `&mut` reaches), so a task that keeps one in its state can
/// still lend `&self` across an await.
#[derive(Debug)]
pub struct Pauses(Mutex<ExponentialBackoff>);

impl Iterator for Pauses {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        self.0.get_mut().unwrap_or_else(PoisonError::into_inner).next()
    }
}

/// An endless sequence of pauses: the `n`-th (from 0) is drawn from
/// `[d, 2d)` with `d = min(first * 2^n, cap / 2)`, so no pause reaches
/// `cap` and none is shorter than `first` (up to float rounding: `backon`
/// computes in `f32` seconds).
///
/// `backon` adds its jitter on top of the base delay (up to 100% of it);
/// capping the base at half of `cap` is what keeps the pauses below `cap`.
pub fn jittered(first: Duration, cap: Duration) -> Pauses {
    let cap = cap.max(first * 2);
    let pauses = ExponentialBuilder::default()
        .with_min_delay(first)
        .with_max_delay(cap / 2)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build();
    Pauses(Mutex::new(pauses))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_grow_stay_within_bounds_and_vary() {
        let (first, cap) = (Duration::from_millis(100), Duration::from_secs(2));
        let pauses: Vec<Duration> = jittered(first, cap).take(200).collect();
        assert_eq!(pauses.len(), 200, "the sequence does not end");
        for (n, p) in pauses.iter().enumerate() {
            let base = (first * 2u32.pow(n.min(20) as u32)).min(cap / 2);
            // backon multiplies in f32 seconds: allow for its rounding.
            let (low, high) = (base.mul_f64(0.999), base.mul_f64(2.001));
            assert!(*p >= low && *p < high, "pause {n} = {p:?} outside [{base:?}, {:?})", base * 2);
            assert!(*p < cap.mul_f64(1.001), "pause {n} = {p:?} passes the cap");
        }
        assert!(pauses[0] < Duration::from_millis(200) && pauses[4] >= Duration::from_millis(1000), "{pauses:?}");
        let late = &pauses[10..];
        assert!(late.iter().any(|p| *p != late[0]), "no jitter: {late:?}");
    }

    #[test]
    fn a_cap_below_twice_the_first_pause_still_bounds_it() {
        let pauses: Vec<Duration> = jittered(Duration::from_secs(1), Duration::from_secs(1)).take(10).collect();
        assert!(pauses.iter().all(|p| *p >= Duration::from_secs(1) && *p < Duration::from_secs(2)), "{pauses:?}");
    }
}
