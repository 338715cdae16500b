//! Feature extraction: pure functions and small state machines over numbers.
//!
//! The agent calls this on every cycle and the trainer calls it on every CSV or lake row, so a
//! model sees the same features in training and on the node. Nothing here reads a clock: callers
//! pass timestamps and elapsed seconds.
//!
//! * [`counter_increase`] / [`counter_rate`] turn monotonic counters into rates, handling resets
//!   (a restarted process or a recreated cgroup) and wraps (32-bit counters).
//! * [`RollingWindow`] holds the last `n` values and gives their mean, standard deviation and the
//!   z-score of a new value against them.
//! * [`FeatureExtractor`] turns a stream of signal vectors into feature vectors whose layout is
//!   described by a [`FeatureSpec`] (and written into every model's manifest).

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Version of the feature definitions below. Models record it; an agent refuses a model trained
/// with another version. Bump it whenever a feature's meaning changes.
pub const FEATURE_SCHEMA_VERSION: u32 = 1;

/// Largest |z-score| reported. A value that leaves a perfectly flat window has an infinite
/// z-score; clamping keeps it a large finite number the forest can split on.
pub const Z_CLAMP: f64 = 50.0;

/// The width of a hardware or kernel counter, which decides whether a decrease is a wrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CounterWidth {
    /// A 32-bit counter (some NIC drivers, 32-bit kernels): it wraps at 2^32.
    U32,
    /// A 64-bit counter: a decrease is always a reset.
    U64,
}

/// How a counter moved between two readings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CounterIncrease {
    /// Ordinary increase.
    Normal(u64),
    /// The counter wrapped past its maximum; the value is the increase across the wrap.
    Wrapped(u64),
    /// The counter restarted from zero; the value is the new reading (Prometheus' convention).
    Reset(u64),
}

impl CounterIncrease {
    /// The increase, whatever happened.
    pub fn value(self) -> u64 {
        match self {
            CounterIncrease::Normal(v)
            | CounterIncrease::Wrapped(v)
            | CounterIncrease::Reset(v) => v,
        }
    }
}

/// The increase of a counter from `prev` to `cur`.
///
/// A decrease of a 32-bit counter whose previous reading was in the upper half of its range is
/// taken as a wrap; any other decrease is a reset, and the increase is `cur` (the counter is
/// assumed to have restarted from zero, as Prometheus' `rate()` does).
pub fn counter_increase(prev: u64, cur: u64, width: CounterWidth) -> CounterIncrease {
    if cur >= prev {
        return CounterIncrease::Normal(cur - prev);
    }
    match width {
        CounterWidth::U32 if prev <= u64::from(u32::MAX) && prev > u64::from(u32::MAX / 2) => {
            CounterIncrease::Wrapped(u64::from(u32::MAX) - prev + cur + 1)
        }
        _ => CounterIncrease::Reset(cur),
    }
}

/// A rate that cannot be computed.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum FeatureError {
    /// The time between two readings is zero, negative or not a number.
    #[error("elapsed time must be positive, got {0} s")]
    BadElapsed(f64),
    /// A vector of the wrong length was pushed into an extractor.
    #[error("expected {expected} signals, got {got}")]
    WrongLength {
        /// Signals the extractor was built for.
        expected: usize,
        /// Signals pushed.
        got: usize,
    },
}

/// Per-second rate of a counter between two readings `elapsed_secs` apart.
pub fn counter_rate(
    prev: u64,
    cur: u64,
    elapsed_secs: f64,
    width: CounterWidth,
) -> Result<(f64, CounterIncrease), FeatureError> {
    if !(elapsed_secs > 0.0 && elapsed_secs.is_finite()) {
        return Err(FeatureError::BadElapsed(elapsed_secs));
    }
    let inc = counter_increase(prev, cur, width);
    Ok((inc.value() as f64 / elapsed_secs, inc))
}

/// The last `capacity` values of a series.
///
/// Statistics are computed exactly (two passes over at most `capacity` values) rather than from
/// running sums, which drift and cancel catastrophically on large, nearly constant series such as
/// byte counters. Windows are small (minutes of samples), so this is cheap.
#[derive(Debug, Clone)]
pub struct RollingWindow {
    values: VecDeque<f64>,
    capacity: usize,
}

impl RollingWindow {
    /// An empty window holding at most `capacity` values (at least 1).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        RollingWindow {
            values: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    /// Adds a value, evicting the oldest when full.
    pub fn push(&mut self, v: f64) {
        if self.values.len() == self.capacity {
            self.values.pop_front();
        }
        self.values.push_back(v);
    }

    /// Values held.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// True when no value is held.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// True when the window holds `capacity` values.
    pub fn is_full(&self) -> bool {
        self.values.len() == self.capacity
    }

    /// Mean of the values held, `None` when empty.
    pub fn mean(&self) -> Option<f64> {
        if self.values.is_empty() {
            return None;
        }
        Some(self.values.iter().sum::<f64>() / self.values.len() as f64)
    }

    /// Population standard deviation of the values held, `None` when empty.
    pub fn std(&self) -> Option<f64> {
        let mean = self.mean()?;
        let var = self
            .values
            .iter()
            .map(|v| (v - mean) * (v - mean))
            .sum::<f64>()
            / self.values.len() as f64;
        Some(var.sqrt())
    }

    /// The z-score of `x` against the values held (not including `x`), clamped to
    /// ±[`Z_CLAMP`]; 0 when the window is empty.
    pub fn zscore(&self, x: f64) -> f64 {
        match (self.mean(), self.std()) {
            (Some(mean), Some(std)) => zscore(x, mean, std),
            _ => 0.0,
        }
    }
}

/// `(x - mean) / std`, clamped to ±[`Z_CLAMP`]. A standard deviation too small to divide by
/// (relative to the mean's magnitude) gives 0 when `x` equals the mean and ±clamp otherwise.
pub fn zscore(x: f64, mean: f64, std: f64) -> f64 {
    let floor = 1e-9 * mean.abs().max(1.0);
    let d = x - mean;
    if std <= floor {
        if d.abs() <= floor {
            0.0
        } else {
            Z_CLAMP.copysign(d)
        }
    } else {
        (d / std).clamp(-Z_CLAMP, Z_CLAMP)
    }
}

/// Which features are derived from each signal, and over which windows.
///
/// The feature vector is laid out signal by signal; for each signal: `value` (if enabled),
/// `delta` (if enabled), then for each window `w`: `mean_w`, `std_w`, `z_w` (each if enabled).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureSpec {
    /// Version of the feature definitions ([`FEATURE_SCHEMA_VERSION`]).
    pub schema_version: u32,
    /// Input signal names, in input order.
    pub signals: Vec<String>,
    /// Include the raw value.
    pub value: bool,
    /// Include the change since the previous sample.
    pub delta: bool,
    /// Rolling window lengths, in samples.
    pub windows: Vec<usize>,
    /// Include the rolling mean of each window.
    pub mean: bool,
    /// Include the rolling standard deviation of each window.
    pub std: bool,
    /// Include the z-score of the value against each window (excluding the value itself).
    pub zscore: bool,
}

impl FeatureSpec {
    /// The default feature set over the given signals: value, delta, and z-score and standard
    /// deviation over windows of 12 and 60 samples.
    pub fn standard(signals: Vec<String>) -> Self {
        FeatureSpec {
            schema_version: FEATURE_SCHEMA_VERSION,
            signals,
            value: true,
            delta: true,
            windows: vec![12, 60],
            mean: false,
            std: true,
            zscore: true,
        }
    }

    /// Only the raw values of `signals`, no derived features (for models whose inputs are
    /// already features, and for tests).
    pub fn raw(signals: Vec<String>) -> Self {
        FeatureSpec {
            schema_version: FEATURE_SCHEMA_VERSION,
            signals,
            value: true,
            delta: false,
            windows: Vec::new(),
            mean: false,
            std: false,
            zscore: false,
        }
    }

    /// Features per signal.
    pub fn per_signal(&self) -> usize {
        usize::from(self.value)
            + usize::from(self.delta)
            + self.windows.len()
                * (usize::from(self.mean) + usize::from(self.std) + usize::from(self.zscore))
    }

    /// Length of the feature vector.
    pub fn len(&self) -> usize {
        self.signals.len() * self.per_signal()
    }

    /// True when the spec yields no feature at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Samples needed before every window is full.
    pub fn warmup(&self) -> usize {
        self.windows
            .iter()
            .copied()
            .max()
            .unwrap_or(0)
            .max(usize::from(self.delta))
    }

    /// Feature names, in vector order: `<signal>`, `<signal>_delta`, `<signal>_mean<w>`,
    /// `<signal>_std<w>`, `<signal>_z<w>`.
    pub fn names(&self) -> Vec<String> {
        let mut out = Vec::with_capacity(self.len());
        for s in &self.signals {
            if self.value {
                out.push(s.clone());
            }
            if self.delta {
                out.push(format!("{s}_delta"));
            }
            for w in &self.windows {
                if self.mean {
                    out.push(format!("{s}_mean{w}"));
                }
                if self.std {
                    out.push(format!("{s}_std{w}"));
                }
                if self.zscore {
                    out.push(format!("{s}_z{w}"));
                }
            }
        }
        out
    }
}

#[derive(Debug, Clone)]
struct SignalState {
    last: Option<f64>,
    windows: Vec<RollingWindow>,
}

/// Turns a stream of signal vectors into feature vectors, per [`FeatureSpec`].
///
/// One extractor follows one series (one subject and family, or one CSV). A missing value (NaN or
/// infinite) is replaced by the signal's last value (or 0 before any), so the forest never sees
/// NaN; [`FeatureExtractor::imputed`] counts how often that happened.
#[derive(Debug, Clone)]
pub struct FeatureExtractor {
    spec: FeatureSpec,
    state: Vec<SignalState>,
    seen: usize,
    imputed: u64,
}

impl FeatureExtractor {
    /// A fresh extractor for `spec`.
    pub fn new(spec: FeatureSpec) -> Self {
        let state = spec
            .signals
            .iter()
            .map(|_| SignalState {
                last: None,
                windows: spec
                    .windows
                    .iter()
                    .map(|&w| RollingWindow::new(w))
                    .collect(),
            })
            .collect();
        FeatureExtractor {
            spec,
            state,
            seen: 0,
            imputed: 0,
        }
    }

    /// The spec this extractor follows.
    pub fn spec(&self) -> &FeatureSpec {
        &self.spec
    }

    /// Samples pushed so far.
    pub fn seen(&self) -> usize {
        self.seen
    }

    /// True once every window has filled; features before that are computed over shorter windows.
    pub fn warmed_up(&self) -> bool {
        self.seen > self.spec.warmup()
    }

    /// Missing values replaced so far.
    pub fn imputed(&self) -> u64 {
        self.imputed
    }

    /// Pushes one sample and writes its features into `out` (cleared first).
    pub fn push_into(&mut self, signals: &[f64], out: &mut Vec<f64>) -> Result<(), FeatureError> {
        if signals.len() != self.state.len() {
            return Err(FeatureError::WrongLength {
                expected: self.state.len(),
                got: signals.len(),
            });
        }
        out.clear();
        out.reserve(self.spec.len());
        for (&raw, st) in signals.iter().zip(self.state.iter_mut()) {
            let x = if raw.is_finite() {
                raw
            } else {
                self.imputed += 1;
                st.last.unwrap_or(0.0)
            };
            if self.spec.value {
                out.push(x);
            }
            if self.spec.delta {
                out.push(st.last.map_or(0.0, |l| x - l));
            }
            for w in &mut st.windows {
                let mean = w.mean();
                let std = w.std();
                if self.spec.mean {
                    out.push(mean.unwrap_or(x));
                }
                if self.spec.std {
                    out.push(std.unwrap_or(0.0));
                }
                if self.spec.zscore {
                    out.push(match (mean, std) {
                        (Some(m), Some(s)) => zscore(x, m, s),
                        _ => 0.0,
                    });
                }
                w.push(x);
            }
            st.last = Some(x);
        }
        self.seen += 1;
        Ok(())
    }

    /// Pushes one sample and returns its features.
    pub fn push(&mut self, signals: &[f64]) -> Result<Vec<f64>, FeatureError> {
        let mut out = Vec::with_capacity(self.spec.len());
        self.push_into(signals, &mut out)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn counter_cases() {
        assert_eq!(
            counter_increase(10, 15, CounterWidth::U64),
            CounterIncrease::Normal(5)
        );
        assert_eq!(
            counter_increase(10, 3, CounterWidth::U64),
            CounterIncrease::Reset(3)
        );
        let near_max = u64::from(u32::MAX) - 4;
        assert_eq!(
            counter_increase(near_max, 5, CounterWidth::U32),
            CounterIncrease::Wrapped(10)
        );
        // A 32-bit counter that drops from low in its range was reset, not wrapped.
        assert_eq!(
            counter_increase(1000, 5, CounterWidth::U32),
            CounterIncrease::Reset(5)
        );
        assert!(counter_rate(1, 2, 0.0, CounterWidth::U64).is_err());
        assert!(counter_rate(1, 2, f64::NAN, CounterWidth::U64).is_err());
        assert_eq!(
            counter_rate(100, 300, 2.0, CounterWidth::U64).map(|r| r.0),
            Ok(100.0)
        );
    }

    #[test]
    fn flat_window_then_jump_is_clamped() {
        let mut w = RollingWindow::new(5);
        for _ in 0..5 {
            w.push(3.0);
        }
        assert_eq!(w.zscore(3.0), 0.0);
        assert_eq!(w.zscore(4.0), Z_CLAMP);
        assert_eq!(w.zscore(2.0), -Z_CLAMP);
    }

    #[test]
    fn extractor_layout_and_names_agree() {
        let spec = FeatureSpec::standard(vec!["a".into(), "b".into()]);
        let names = spec.names();
        assert_eq!(names.len(), spec.len());
        assert_eq!(names[0], "a");
        assert_eq!(names[1], "a_delta");
        assert_eq!(names[2], "a_std12");
        assert_eq!(names[3], "a_z12");
        let mut fx = FeatureExtractor::new(spec);
        let f1 = fx.push(&[1.0, 10.0]).expect("push");
        assert_eq!(f1.len(), names.len());
        assert_eq!(f1[1], 0.0, "first delta is zero");
        let f2 = fx.push(&[3.0, f64::NAN]).expect("push");
        assert_eq!(f2[1], 2.0);
        assert_eq!(f2[6], 10.0, "NaN is carried forward");
        assert_eq!(fx.imputed(), 1);
        assert!(matches!(
            fx.push(&[1.0]),
            Err(FeatureError::WrongLength { .. })
        ));
    }

    proptest! {
        #[test]
        fn increase_never_exceeds_counter_space(prev in any::<u32>(), cur in any::<u32>()) {
            let inc = counter_increase(u64::from(prev), u64::from(cur), CounterWidth::U32).value();
            prop_assert!(inc <= u64::from(u32::MAX));
            // An increase followed by the same increase back to where it was is consistent.
            if cur >= prev {
                prop_assert_eq!(inc, u64::from(cur - prev));
            }
        }

        #[test]
        fn wrap_recovers_true_increase(start in (u32::MAX / 2 + 1)..=u32::MAX, step in 1u32..=u32::MAX / 2) {
            let after = start.wrapping_add(step);
            prop_assume!(after < start);
            let inc = counter_increase(u64::from(start), u64::from(after), CounterWidth::U32);
            prop_assert_eq!(inc, CounterIncrease::Wrapped(u64::from(step)));
        }

        #[test]
        fn rate_is_nonnegative_and_finite(prev in any::<u64>(), cur in any::<u64>(), dt in 0.001f64..3600.0) {
            let (r, _) = counter_rate(prev, cur, dt, CounterWidth::U64).expect("rate");
            prop_assert!(r >= 0.0 && r.is_finite());
        }

        #[test]
        fn rolling_stats_match_naive(xs in proptest::collection::vec(-1e6f64..1e6, 1..200), cap in 1usize..50) {
            let mut w = RollingWindow::new(cap);
            for &x in &xs { w.push(x); }
            let tail = &xs[xs.len().saturating_sub(cap)..];
            let n = tail.len() as f64;
            let mean = tail.iter().sum::<f64>() / n;
            let var = tail.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
            let tol = 1e-9 * (1.0 + mean.abs() + var.sqrt());
            prop_assert!((w.mean().expect("mean") - mean).abs() <= tol);
            prop_assert!((w.std().expect("std") - var.sqrt()).abs() <= 1e-6 * (1.0 + var.sqrt()));
            prop_assert_eq!(w.len(), tail.len());
        }

        #[test]
        fn zscore_is_bounded_and_signed(x in -1e9f64..1e9, mean in -1e9f64..1e9, std in 0.0f64..1e6) {
            let z = zscore(x, mean, std);
            prop_assert!(z.abs() <= Z_CLAMP);
            prop_assert!(z == 0.0 || z.signum() == (x - mean).signum());
        }

        #[test]
        fn extractor_is_deterministic_and_finite(rows in proptest::collection::vec(proptest::collection::vec(prop_oneof![Just(f64::NAN), -1e6f64..1e6], 3), 1..100)) {
            let spec = FeatureSpec::standard(vec!["x".into(), "y".into(), "z".into()]);
            let mut a = FeatureExtractor::new(spec.clone());
            let mut b = FeatureExtractor::new(spec.clone());
            for r in &rows {
                let fa = a.push(r).expect("push");
                let fb = b.push(r).expect("push");
                prop_assert_eq!(fa.len(), spec.len());
                prop_assert!(fa.iter().all(|v| v.is_finite()));
                prop_assert_eq!(fa.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), fb.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
            }
        }
    }
}
