//! The manifest's k-of-n alarm rule, one state per scored series.
//!
//! A single high score is often noise (a GC pause, a scrape landing on a burst); the model's
//! [`AlarmRule`] says a series is anomalous only when at least `k` of its last `n` scores reached
//! the threshold. The rule itself is [`selfheal_core::model::AlarmState`], the one the trainer's
//! offline `score`/`eval` use too, so an evaluation predicts the node's decisions; this wrapper
//! holds the model's threshold and refuses (rather than silently normalizes) a bad rule from a
//! manifest. The `score` stage keeps one [`AlarmState`] per series (subject and family).

use selfheal_core::model::{AlarmRule, AlarmState as KOfN};

/// Largest `n` accepted from a manifest: the core rule's window.
pub const MAX_ALARM_WINDOW: u32 = KOfN::MAX_N;

/// An alarm rule that cannot be applied.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum AlarmRuleError {
    /// `k` is 0, or larger than `n`, or `n` exceeds [`MAX_ALARM_WINDOW`].
    #[error("alarm rule {k}-of-{n} is invalid: need 1 <= k <= n <= {MAX_ALARM_WINDOW}")]
    Invalid {
        /// Alarms needed.
        k: u32,
        /// Window length.
        n: u32,
    },
    /// The rule adapts (`adapt_window`) but the manifest has no finite `ordinary_score` to
    /// measure a series' level against.
    #[error("alarm rule adapts over {window} samples but the manifest has no ordinary_score")]
    NoOrdinaryScore {
        /// `adapt_window`.
        window: u32,
    },
    /// The manifest's `spike_threshold` is not a finite number.
    #[error("spike_threshold {value} is not a finite number")]
    BadSpikeThreshold {
        /// Value found.
        value: f64,
    },
}

/// Checks `rule` is usable: `1 <= k <= n <= MAX_ALARM_WINDOW`, an adapting rule comes with
/// the model's finite `ordinary` score, and a `spike` threshold, if any, is finite.
pub fn validate_rule(
    rule: AlarmRule,
    ordinary: Option<f64>,
    spike: Option<f64>,
) -> Result<(), AlarmRuleError> {
    if let Some(value) = spike.filter(|v| !v.is_finite()) {
        return Err(AlarmRuleError::BadSpikeThreshold { value });
    }
    if rule.k == 0 || rule.k > rule.n || rule.n > MAX_ALARM_WINDOW {
        return Err(AlarmRuleError::Invalid {
            k: rule.k,
            n: rule.n,
        });
    }
    if rule.adapt_window > 0 && !ordinary.is_some_and(f64::is_finite) {
        return Err(AlarmRuleError::NoOrdinaryScore {
            window: rule.adapt_window,
        });
    }
    Ok(())
}

/// What one score did to its series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AlarmDecision {
    /// This score (smoothed, when the rule smooths) reached the threshold.
    pub alarm: bool,
    /// At least `k` of the last `n` scores (this one included) reached it.
    pub anomalous: bool,
    /// Alarms among the last `n` scores.
    pub alarms_in_window: u32,
    /// The score that decided: EWMA-smoothed when the rule smooths, else the model's score
    /// itself; the raw score when only the spike threshold was reached.
    pub compared_score: f64,
    /// The threshold `compared_score` was compared with: the model's (or its spike threshold),
    /// raised when the series adapted to a new normal.
    pub threshold: f64,
    /// The raw score reached the model's spike threshold: one sample that alone is anomalous.
    pub spike: bool,
}

/// The k-of-n state of one series under one model's threshold.
#[derive(Debug, Clone)]
pub struct AlarmState {
    rule: KOfN,
    threshold: f64,
}

impl AlarmState {
    /// A fresh series: no history, so the first `k - 1` scores can never be anomalous (unless
    /// one reaches the `spike` threshold). `ordinary` is the manifest's `ordinary_score`,
    /// required by an adapting rule; `spike` its `spike_threshold`.
    pub fn new(
        rule: AlarmRule,
        threshold: f64,
        ordinary: Option<f64>,
        spike: Option<f64>,
    ) -> Result<Self, AlarmRuleError> {
        validate_rule(rule, ordinary, spike)?;
        let mut state = KOfN::new(rule).with_spike(spike);
        if let Some(o) = ordinary {
            state = state.with_ordinary(o);
        }
        Ok(AlarmState {
            rule: state,
            threshold,
        })
    }

    /// Records the next score of the series. A NaN score counts as no alarm.
    pub fn push(&mut self, score: f32) -> AlarmDecision {
        let v = self.rule.push_scored(f64::from(score), self.threshold);
        AlarmDecision {
            alarm: v.above,
            anomalous: v.alarms,
            alarms_in_window: self.rule.alarms_in_window(),
            compared_score: v.score,
            threshold: v.threshold,
            spike: v.spike,
        }
    }

    /// Forgets the history (after a gap in the series, or a model change).
    pub fn reset(&mut self) {
        self.rule.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_of_five_needs_three_alarms_within_five_scores() {
        let mut s = AlarmState::new(AlarmRule::k_of_n(3, 5), 0.6, None, None).expect("valid rule");
        let decisions: Vec<bool> = [0.7, 0.1, 0.7, 0.1, 0.1, 0.1, 0.7, 0.7, 0.1, 0.7]
            .iter()
            .map(|&x| s.push(x).anomalous)
            .collect();
        // Alarms at 0, 2, 6, 7, 9: the window [5..=9] holds 6, 7, 9 -> anomalous at 9 only;
        // at 7 the window [3..=7] holds only 6 and 7.
        assert_eq!(
            decisions,
            [
                false, false, false, false, false, false, false, false, false, true
            ]
        );
    }

    #[test]
    fn score_equal_to_threshold_alarms_and_nan_does_not() {
        let mut s = AlarmState::new(AlarmRule::k_of_n(1, 1), 0.5, None, None).expect("valid rule");
        assert!(s.push(0.5).anomalous);
        assert!(!s.push(f32::NAN).alarm);
    }

    #[test]
    fn invalid_rules_are_refused() {
        for (k, n) in [(0, 5), (6, 5), (1, MAX_ALARM_WINDOW + 1)] {
            assert_eq!(
                AlarmState::new(AlarmRule::k_of_n(k, n), 0.5, None, None).err(),
                Some(AlarmRuleError::Invalid { k, n })
            );
        }
    }

    #[test]
    fn an_adapting_rule_needs_the_ordinary_score_and_raises_the_threshold() {
        let rule = AlarmRule::k_of_n(1, 1).adapting(100);
        for ordinary in [None, Some(f64::NAN)] {
            assert_eq!(
                AlarmState::new(rule, 0.5, ordinary, None).err(),
                Some(AlarmRuleError::NoOrdinaryScore { window: 100 })
            );
        }
        let mut s = AlarmState::new(rule, 0.5, Some(0.3), None).expect("valid rule");
        // A series that settles at 0.6 for good: the threshold rises by 0.6 - 0.3.
        let decisions: Vec<AlarmDecision> = (0..200).map(|_| s.push(0.6)).collect();
        assert_eq!(decisions[0].threshold, 0.5);
        let anomalous = decisions.iter().filter(|d| d.anomalous).count();
        assert!((75..=101).contains(&anomalous), "{anomalous}");
        let risen = s.push(0.9);
        assert!((risen.threshold - 0.8).abs() < 1e-6);
        assert!(risen.anomalous, "a rise above the new normal alarms");
    }

    #[test]
    fn a_spike_alarms_alone_and_carries_the_spike_threshold() {
        assert_eq!(
            AlarmState::new(AlarmRule::k_of_n(3, 5), 0.5, None, Some(f64::INFINITY)).err(),
            Some(AlarmRuleError::BadSpikeThreshold {
                value: f64::INFINITY
            })
        );
        let rule = AlarmRule::k_of_n(3, 5).smoothed(10);
        let mut s = AlarmState::new(rule, 0.5, None, Some(0.8)).expect("valid rule");
        assert!((0..10).all(|_| !s.push(0.2).anomalous));
        let d = s.push(0.85);
        assert!(d.anomalous && d.spike && !d.alarm);
        assert_eq!(d.threshold, 0.8);
        assert_eq!(d.compared_score, f64::from(0.85f32));
        assert!(!s.push(0.2).anomalous, "one spike, one anomalous sample");
        // Without a spike threshold the same spike is smoothed away.
        let mut plain = AlarmState::new(rule, 0.5, None, None).expect("valid rule");
        assert!((0..10).all(|_| !plain.push(0.2).anomalous));
        let d = plain.push(0.85);
        assert!(!d.anomalous && !d.spike);
        assert_eq!(d.threshold, 0.5);
    }

    #[test]
    fn reset_forgets_history() {
        let mut s = AlarmState::new(AlarmRule::k_of_n(2, 3), 0.5, None, None).expect("valid rule");
        s.push(0.9);
        s.reset();
        assert!(!s.push(0.9).anomalous);
        assert!(s.push(0.9).anomalous);
    }

    #[test]
    fn smoothed_rule_decides_as_the_core_rule_the_trainer_runs() {
        let rule = AlarmRule::k_of_n(2, 3).smoothed(4);
        let mut agent = AlarmState::new(rule, 0.55, None, None).expect("valid rule");
        let mut core = KOfN::new(rule);
        let scores = [
            0.4f32,
            0.9,
            0.4,
            0.4,
            0.7,
            0.7,
            0.7,
            0.7,
            0.7,
            f32::NAN,
            0.3,
            0.3,
            0.3,
            0.3,
            0.3,
        ];
        let ours: Vec<bool> = scores.iter().map(|&s| agent.push(s).anomalous).collect();
        let theirs: Vec<bool> = scores
            .iter()
            .map(|&s| core.push(f64::from(s), 0.55))
            .collect();
        assert_eq!(ours, theirs);
        assert!(ours.contains(&true) && ours.contains(&false), "{ours:?}");
    }

    #[test]
    fn the_compared_score_is_the_smoothed_one_and_the_raw_one_without_smoothing() {
        let smoothed_rule = AlarmRule::k_of_n(1, 1).smoothed(4);
        let mut agent = AlarmState::new(smoothed_rule, 0.55, None, None).expect("valid rule");
        let raw_scores = [0.4f32, 0.9, 0.7];
        let widened: Vec<f64> = raw_scores.iter().map(|&s| f64::from(s)).collect();
        let expected = selfheal_core::model::smooth_scores(&widened, smoothed_rule);
        let got: Vec<f64> = raw_scores
            .iter()
            .map(|&s| agent.push(s).compared_score)
            .collect();
        assert_eq!(got, expected);
        assert!(
            got[1] < 0.9 && got[1] > 0.4,
            "smoothing pulls the spike down: {got:?}"
        );

        let mut raw =
            AlarmState::new(AlarmRule::k_of_n(1, 1), 0.55, None, None).expect("valid rule");
        assert_eq!(raw.push(0.9).compared_score, f64::from(0.9f32));
    }
}
