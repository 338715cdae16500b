//! Exponential backoff with jitter: how long to wait before retrying a call that failed in a way
//! that may pass (throttling, a dropped connection, an API server restarting).
//!
//! Replaces the three copies: `backoff()` in agent/src/forward/mod.rs and `Backoff` in
//! aggregator/src/consume/mod.rs (both "equal jitter"), and the doubling in agent/src/pods.rs,
//! which had no jitter at all, so after an API server restart every node of a fleet re-listed
//! its pods in the same instant, again and again.
//!
//! The ceiling of attempt `n` is `min(max, initial · 2^n)`. [`Jitter::Full`] (the default) draws
//! the delay uniformly from `[0, ceiling]`: of the usual schemes it spreads a crowd of clients
//! best and finishes the crowd's work with the fewest calls (AWS Architecture Blog, "Exponential
//! Backoff And Jitter", 2015). [`Jitter::Equal`] draws from `[ceiling/2, ceiling]`, for a caller
//! that must also guarantee each client a minimum pause (a throttled Kinesis shard, whose limit
//! is per second, gets no relief from a client that retries after 3 ms).
//!
//! Sleeping belongs to the caller, so it can log the delay first and cut the sleep short at
//! shutdown ([`crate::shutdown::Shutdown::sleep`]).

use std::time::Duration;

/// How the delay is drawn below the attempt's ceiling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Jitter {
    /// Uniform in `[0, ceiling]`.
    #[default]
    Full,
    /// Uniform in `[ceiling/2, ceiling]`.
    Equal,
}

/// Retry delays for one sequence of failures; [`Backoff::reset`] after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    jitter: Jitter,
    attempt: u32,
    rng: fastrand::Rng,
}

impl Backoff {
    /// Delays growing from `initial`, doubling per attempt, capped at `max`; full jitter, seeded
    /// from the OS so clients started together still draw differently. A `max` below `initial`
    /// caps at `initial`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
            jitter: Jitter::Full,
            attempt: 0,
            rng: fastrand::Rng::new(),
        }
    }

    /// The same with another kind of jitter.
    pub fn with_jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// The same with a fixed seed, for tests and reproducible benchmarks.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.rng = fastrand::Rng::with_seed(seed);
        self
    }

    /// The delay before the next retry; each call counts one more failed attempt.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.delay_for(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        d
    }

    /// A delay for failed attempt number `attempt` (0 for the first failure), without changing
    /// the count: for callers that keep the attempt number themselves (one per batch in flight).
    pub fn delay_for(&mut self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        let low = match self.jitter {
            Jitter::Full => 0,
            Jitter::Equal => nanos / 2,
        };
        Duration::from_nanos(self.rng.u64(low..=nanos))
    }

    /// The largest delay attempt `attempt` can draw: `min(max, initial · 2^attempt)`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        // 2^31 already overflows any useful Duration product; saturate instead of wrapping.
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// Failed attempts counted since the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Starts over from `initial`: call after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shutdown;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn ceilings_double_then_cap() {
        let b = Backoff::new(100 * MS, 1000 * MS);
        let c: Vec<u128> = (0..6).map(|a| b.ceiling(a).as_millis()).collect();
        assert_eq!(c, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.ceiling(u32::MAX), 1000 * MS);
        // A cap below the start is the start.
        assert_eq!(Backoff::new(100 * MS, MS).ceiling(5), 100 * MS);
    }

    #[test]
    fn full_jitter_spreads_over_the_whole_range() {
        let mut b = Backoff::new(100 * MS, 1000 * MS).with_seed(7);
        let draws: Vec<Duration> = (0..2000).map(|_| b.delay_for(3)).collect();
        let ceiling = 800 * MS;
        assert!(draws.iter().all(|d| *d <= ceiling));
        let min = draws.iter().min().copied().unwrap_or_default();
        let max = draws.iter().max().copied().unwrap_or_default();
        assert!(min < ceiling / 20, "min {min:?}");
        assert!(max > ceiling * 19 / 20, "max {max:?}");
        let mean = draws.iter().sum::<Duration>() / 2000;
        assert!(
            mean > ceiling * 45 / 100 && mean < ceiling * 55 / 100,
            "mean {mean:?}"
        );
    }

    #[test]
    fn equal_jitter_keeps_half_the_ceiling() {
        let mut b = Backoff::new(100 * MS, 350 * MS)
            .with_jitter(Jitter::Equal)
            .with_seed(1);
        for _ in 0..200 {
            b.reset();
            let d: Vec<Duration> = (0..4).map(|_| b.next_delay()).collect();
            assert!(d[0] >= 50 * MS && d[0] <= 100 * MS, "{d:?}");
            assert!(d[1] >= 100 * MS && d[1] <= 200 * MS, "{d:?}");
            assert!(d[3] >= 175 * MS && d[3] <= 350 * MS, "{d:?}");
        }
    }

    #[test]
    fn clients_seeded_differently_do_not_retry_in_lockstep() {
        let mut a = Backoff::new(100 * MS, 10_000 * MS).with_seed(1);
        let mut b = Backoff::new(100 * MS, 10_000 * MS).with_seed(2);
        let same = (0..10).filter(|_| a.next_delay() == b.next_delay()).count();
        assert_eq!(same, 0);
    }

    #[test]
    fn reset_starts_over_and_the_count_follows_next_delay() {
        let mut b = Backoff::new(100 * MS, 10_000 * MS).with_seed(3);
        for _ in 0..5 {
            b.next_delay();
        }
        assert_eq!(b.attempt(), 5);
        b.reset();
        assert_eq!(b.attempt(), 0);
        assert!(b.next_delay() <= 100 * MS);
        // delay_for does not count.
        b.delay_for(9);
        assert_eq!(b.attempt(), 1);
    }

    /// A retry loop as a service writes it: the virtual time it spends is bounded by the sum of
    /// the ceilings, and a shutdown cuts the current wait short.
    #[tokio::test(start_paused = true)]
    async fn a_retry_loop_waits_within_the_ceilings_and_stops_at_shutdown() {
        let (trigger, mut stop) = shutdown::channel();
        let mut b = Backoff::new(100 * MS, 1000 * MS).with_seed(11);
        let start = tokio::time::Instant::now();
        let mut bound = Duration::ZERO;
        for attempt in 0..6 {
            bound += b.ceiling(attempt);
            let d = b.next_delay();
            assert!(!stop.sleep(d).await, "no shutdown yet");
        }
        let spent = start.elapsed();
        assert!(spent <= bound, "{spent:?} > {bound:?}");
        // A shutdown during a long wait ends it at once.
        let long = tokio::spawn(async move { stop.sleep(Duration::from_secs(3600)).await });
        tokio::time::sleep(10 * MS).await;
        let before = tokio::time::Instant::now();
        trigger.trigger();
        assert!(long.await.expect("join"), "woken by the shutdown");
        assert!(before.elapsed() < MS);
    }
}
