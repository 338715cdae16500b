//! Detection quality: how a series of 0/1 alarms compares with labelled anomaly windows.
//!
//! Everything is point-wise with no point adjustment (an alarm on one point of a window does not
//! credit the whole window), plus window-level and event-level counts that say what an operator
//! would live with: windows hit (at least one alarmed point inside), false-alarm events (maximal
//! runs of alarmed points outside every window) per 1000 points, and the delay from a window's
//! start to its first alarm. [`Counts`] add up over series, so a pooled score over many series is
//! the sum of their counts, not an average of ratios.

use crate::dataset::Windows;
use serde::{Deserialize, Serialize};

/// Raw counts; add them over series with [`Counts::add`], then read [`Counts::metrics`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Points scored.
    pub points: u64,
    /// Points inside a label window.
    pub labelled_points: u64,
    /// Points alarmed.
    pub alarmed_points: u64,
    /// Alarmed points inside a window.
    pub true_positives: u64,
    /// Label windows.
    pub windows: u64,
    /// Windows with at least one alarmed point.
    pub windows_hit: u64,
    /// Sum over hit windows of (first alarmed point - window start), in points.
    pub detection_delay_points: u64,
    /// Alarmed points outside every window.
    pub false_alarm_points: u64,
    /// Maximal runs of alarmed points outside every window.
    pub false_alarm_events: u64,
}

impl Counts {
    /// Counts of `alarms` against `windows` (row ranges of the same series).
    pub fn of(alarms: &[bool], windows: &Windows) -> Counts {
        let labels = windows.points(alarms.len());
        let mut c = Counts {
            points: alarms.len() as u64,
            ..Counts::default()
        };
        let mut in_event = false;
        for (&a, &l) in alarms.iter().zip(&labels) {
            c.labelled_points += u64::from(l);
            c.alarmed_points += u64::from(a);
            c.true_positives += u64::from(a && l);
            let fa = a && !l;
            c.false_alarm_points += u64::from(fa);
            if fa && !in_event {
                c.false_alarm_events += 1;
            }
            in_event = fa;
        }
        for &(start, end) in windows.ranges() {
            if start >= alarms.len() {
                continue;
            }
            c.windows += 1;
            let end = end.min(alarms.len() - 1);
            if let Some(first) = alarms[start..=end].iter().position(|&a| a) {
                c.windows_hit += 1;
                c.detection_delay_points += first as u64;
            }
        }
        c
    }

    /// Adds another series' counts.
    pub fn add(&mut self, o: &Counts) {
        self.points += o.points;
        self.labelled_points += o.labelled_points;
        self.alarmed_points += o.alarmed_points;
        self.true_positives += o.true_positives;
        self.windows += o.windows;
        self.windows_hit += o.windows_hit;
        self.detection_delay_points += o.detection_delay_points;
        self.false_alarm_points += o.false_alarm_points;
        self.false_alarm_events += o.false_alarm_events;
    }

    /// The derived metrics.
    pub fn metrics(&self) -> Metrics {
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let precision = ratio(self.true_positives, self.alarmed_points);
        let recall = ratio(self.true_positives, self.labelled_points);
        let f1 = if precision + recall == 0.0 {
            0.0
        } else {
            2.0 * precision * recall / (precision + recall)
        };
        Metrics {
            counts: *self,
            precision,
            recall,
            f1,
            false_alarm_points_per_1000: 1000.0 * ratio(self.false_alarm_points, self.points),
            false_alarm_events_per_1000: 1000.0 * ratio(self.false_alarm_events, self.points),
            mean_detection_delay_points: (self.windows_hit > 0)
                .then(|| self.detection_delay_points as f64 / self.windows_hit as f64),
        }
    }
}

/// Quality metrics, with the counts they come from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// The counts.
    #[serde(flatten)]
    pub counts: Counts,
    /// Alarmed points that are labelled / alarmed points (0 when nothing alarmed).
    pub precision: f64,
    /// Alarmed labelled points / labelled points (0 when nothing is labelled).
    pub recall: f64,
    /// Harmonic mean of precision and recall.
    pub f1: f64,
    /// False-alarm points per 1000 points.
    pub false_alarm_points_per_1000: f64,
    /// False-alarm events per 1000 points.
    pub false_alarm_events_per_1000: f64,
    /// Mean points from a hit window's start to its first alarm; `None` when no window was hit.
    pub mean_detection_delay_points: Option<f64>,
}

impl std::fmt::Display for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.counts;
        writeln!(f, "points                     {}", c.points)?;
        writeln!(f, "labelled points            {}", c.labelled_points)?;
        writeln!(f, "alarmed points             {}", c.alarmed_points)?;
        writeln!(f, "precision                  {:.3}", self.precision)?;
        writeln!(f, "recall                     {:.3}", self.recall)?;
        writeln!(f, "f1                         {:.3}", self.f1)?;
        writeln!(
            f,
            "windows hit                {}/{}",
            c.windows_hit, c.windows
        )?;
        writeln!(
            f,
            "false-alarm points /1000   {:.2}",
            self.false_alarm_points_per_1000
        )?;
        writeln!(
            f,
            "false-alarm events /1000   {:.2}",
            self.false_alarm_events_per_1000
        )?;
        match self.mean_detection_delay_points {
            Some(d) => writeln!(f, "mean detection delay       {d:.1} points"),
            None => writeln!(f, "mean detection delay       - (no window hit)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(s: &str) -> Vec<bool> {
        s.bytes().map(|b| b == b'1').collect()
    }

    #[test]
    fn hand_made_case() {
        // index:            0123456789012345
        let alarms = bits("1100011100001101");
        let windows = Windows::new(vec![(5, 9), (12, 13)]);
        let c = Counts::of(&alarms, &windows);
        // Labelled: 5..=9 (5 points) and 12..=13 (2 points).
        // Alarmed: 0,1,5,6,7,12,13,15 = 8; true positives 5,6,7,12,13 = 5.
        assert_eq!(c.points, 16);
        assert_eq!(c.labelled_points, 7);
        assert_eq!(c.alarmed_points, 8);
        assert_eq!(c.true_positives, 5);
        // False alarms: {0,1} and {15}: 3 points, 2 events.
        assert_eq!(c.false_alarm_points, 3);
        assert_eq!(c.false_alarm_events, 2);
        assert_eq!((c.windows, c.windows_hit), (2, 2));
        // Delays: window 1 first alarm at 5 (0), window 2 at 12 (0).
        assert_eq!(c.detection_delay_points, 0);
        let m = c.metrics();
        assert!((m.precision - 5.0 / 8.0).abs() < 1e-12);
        assert!((m.recall - 5.0 / 7.0).abs() < 1e-12);
        let f1 = 2.0 * (5.0 / 8.0) * (5.0 / 7.0) / (5.0 / 8.0 + 5.0 / 7.0);
        assert!((m.f1 - f1).abs() < 1e-12);
        assert!((m.false_alarm_events_per_1000 - 125.0).abs() < 1e-12);
        assert_eq!(m.mean_detection_delay_points, Some(0.0));
    }

    #[test]
    fn delay_missed_window_and_pooling() {
        let a = Counts::of(&bits("0000110000"), &Windows::new(vec![(2, 6)]));
        assert_eq!((a.windows_hit, a.detection_delay_points), (1, 2));
        let b = Counts::of(&bits("0000000000"), &Windows::new(vec![(1, 3)]));
        assert_eq!(b.windows_hit, 0);
        let mut pooled = a;
        pooled.add(&b);
        let m = pooled.metrics();
        assert_eq!((m.counts.windows, m.counts.windows_hit), (2, 1));
        assert_eq!(m.mean_detection_delay_points, Some(2.0));
        assert!((m.recall - 2.0 / 8.0).abs() < 1e-12);
        assert_eq!(m.precision, 1.0);
        // An alarm run that continues out of a window is a false-alarm event for its outside part.
        let c = Counts::of(&bits("0011110"), &Windows::new(vec![(2, 3)]));
        assert_eq!((c.false_alarm_points, c.false_alarm_events), (2, 1));
    }

    #[test]
    fn nothing_alarmed_nothing_labelled() {
        let m = Counts::of(&bits("000"), &Windows::default()).metrics();
        assert_eq!((m.precision, m.recall, m.f1), (0.0, 0.0, 0.0));
        assert_eq!(m.mean_detection_delay_points, None);
    }
}
