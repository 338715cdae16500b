//! The manifest's k-of-n alarm rule, one state per scored series.
//!
//! A single high score is often noise (a GC pause, a scrape landing on a burst); the model's
//! [`AlarmRule`] says a series is anomalous only when at least `k` of its last `n` scores reached
//! the threshold. The `score` stage keeps one [`AlarmState`] per series (subject and family) and
//! feeds it every score in order.

use selfheal_core::model::AlarmRule;
use std::collections::VecDeque;

/// Largest `n` accepted from a manifest: bounds the memory one series can hold.
pub const MAX_ALARM_WINDOW: u32 = 1024;

/// An alarm rule that cannot be applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AlarmRuleError {
    /// `k` is 0, or larger than `n`, or `n` exceeds [`MAX_ALARM_WINDOW`].
    #[error("alarm rule {k}-of-{n} is invalid: need 1 <= k <= n <= {MAX_ALARM_WINDOW}")]
    Invalid {
        /// Alarms needed.
        k: u32,
        /// Window length.
        n: u32,
    },
}

/// Checks `rule` is usable: `1 <= k <= n <= MAX_ALARM_WINDOW`.
pub fn validate_rule(rule: AlarmRule) -> Result<(), AlarmRuleError> {
    if rule.k == 0 || rule.k > rule.n || rule.n > MAX_ALARM_WINDOW {
        return Err(AlarmRuleError::Invalid {
            k: rule.k,
            n: rule.n,
        });
    }
    Ok(())
}

/// What one score did to its series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlarmDecision {
    /// This score reached the threshold.
    pub alarm: bool,
    /// At least `k` of the last `n` scores (this one included) reached it.
    pub anomalous: bool,
    /// Alarms among the last `n` scores.
    pub alarms_in_window: u32,
}

/// The last `n` alarm bits of one series.
#[derive(Debug, Clone)]
pub struct AlarmState {
    rule: AlarmRule,
    threshold: f64,
    window: VecDeque<bool>,
    alarms: u32,
}

impl AlarmState {
    /// A fresh series: no history, so the first `k - 1` scores can never be anomalous.
    pub fn new(rule: AlarmRule, threshold: f64) -> Result<Self, AlarmRuleError> {
        validate_rule(rule)?;
        Ok(AlarmState {
            rule,
            threshold,
            window: VecDeque::with_capacity(rule.n as usize),
            alarms: 0,
        })
    }

    /// Records the next score of the series. A NaN score counts as no alarm.
    pub fn push(&mut self, score: f32) -> AlarmDecision {
        let alarm = f64::from(score) >= self.threshold;
        if self.window.len() == self.rule.n as usize && self.window.pop_front() == Some(true) {
            self.alarms -= 1;
        }
        self.window.push_back(alarm);
        self.alarms += u32::from(alarm);
        AlarmDecision {
            alarm,
            anomalous: self.alarms >= self.rule.k,
            alarms_in_window: self.alarms,
        }
    }

    /// Forgets the history (after a gap in the series, or a model change).
    pub fn reset(&mut self) {
        self.window.clear();
        self.alarms = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_of_five_needs_three_alarms_within_five_scores() {
        let mut s = AlarmState::new(AlarmRule { k: 3, n: 5 }, 0.6).expect("valid rule");
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
        let mut s = AlarmState::new(AlarmRule { k: 1, n: 1 }, 0.5).expect("valid rule");
        assert!(s.push(0.5).anomalous);
        assert!(!s.push(f32::NAN).alarm);
    }

    #[test]
    fn invalid_rules_are_refused() {
        for (k, n) in [(0, 5), (6, 5), (1, MAX_ALARM_WINDOW + 1)] {
            assert_eq!(
                AlarmState::new(AlarmRule { k, n }, 0.5).err(),
                Some(AlarmRuleError::Invalid { k, n })
            );
        }
    }

    #[test]
    fn reset_forgets_history() {
        let mut s = AlarmState::new(AlarmRule { k: 2, n: 3 }, 0.5).expect("valid rule");
        s.push(0.9);
        s.reset();
        assert!(!s.push(0.9).anomalous);
        assert!(s.push(0.9).anomalous);
    }
}
