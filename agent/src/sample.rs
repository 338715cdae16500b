//! Sample: the stage between `detect` and the [`crate::forward::spool`]. It decides which of a cycle's
//! records are forwarded, so a node ships a bounded number of bytes per hour and the lake stays
//! usable for training and unbiased for estimates.
//!
//! * Every anomaly is forwarded (inclusion probability 1), and its record is not sent again as
//!   a sample, so each record id appears once downstream.
//! * Normal records are sampled in **contiguous blocks per series** (a series is one subject —
//!   the node or one pod — and one metric family). Wall-clock time is cut into blocks of
//!   `block_cycles` cycles. The first time a series shows up in a block it is included with the
//!   block's probability `p`, and then every one of its records in that block is forwarded, each
//!   carrying `inclusion_probability = p`. Whole blocks keep the rolling feature windows of the
//!   models computable from the lake; since each record's inclusion probability is known, the
//!   Horvitz–Thompson sum of `1/p` over the lake (cluster sampling) estimates what the fleet
//!   produced without bias.
//! * `p` adapts between blocks: an EWMA of the bytes the normal records offer (wire size plus
//!   partition key, what Kinesis bills) and of the bytes anomalies take is compared with
//!   `budget_bytes_per_hour`; anomalies are paid first and normal records get the rest, with `p`
//!   clamped to `[min_probability, 1]`.
//!
//! * An anomaly's flight-recorder window is trimmed to the raw records of its series this agent
//!   has not forwarded yet (as samples or in an earlier anomaly's window). A series that stays
//!   anomalous raises an anomaly every cycle, each with the whole window: untrimmed, a sustained
//!   anomaly costs `window_records` times the bytes of its records. Trimmed, the lake still holds
//!   every raw record of the minutes before each anomaly (joined by series and time), once.
//!
//! Decisions are a pure function of (seed, series, block), drawn from PCG-64 (`rand_pcg`)
//! seeded with the three: the same input gives the same lake, whatever order series arrive in.

use rand_core::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use selfheal_core::schema::{Anomaly, Envelope, Payload, Record, Subject, wire_len};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Sampling settings as written by the user (the `sampling` section of the agent config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingConfig {
    /// Bytes per hour this node may forward (wire records plus partition keys), anomalies
    /// included. Anomalies are always forwarded, even past the budget; normal records share
    /// what anomalies leave.
    pub budget_bytes_per_hour: u64,
    /// Cycles per sampling block. A sampled series ships every record of its block, so this
    /// should cover the longest feature window the models use (60 samples by default).
    pub block_cycles: u32,
    /// Lowest inclusion probability of a normal series, whatever the budget says; keeps every
    /// node represented in the lake.
    pub min_probability: f64,
    /// Half-life, in cycles, of the moving averages of offered bytes that `p` is set from.
    pub ewma_half_life_cycles: f64,
    /// Seed of the sampling decisions; unset derives one from the node name, so nodes decide
    /// independently of each other but each one reproducibly.
    pub seed: Option<u64>,
}

/// Default byte budget: 4 MB per node-hour, ~29× below the ~115 MB per node-hour of shipping
/// every node sample as JSON (Fluent Bit node metrics at 1 s). At a 5 s interval it ships a
/// node without pods in full, and ~1 in 12 series of a node with 100 pods.
pub const DEFAULT_BUDGET_BYTES_PER_HOUR: u64 = 4_000_000;

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            budget_bytes_per_hour: DEFAULT_BUDGET_BYTES_PER_HOUR,
            // Twice the default 60-sample window (`FeatureSpec::default`, `window_records`): a
            // sampled block holds at least 60 records whose windows are complete.
            block_cycles: 120,
            min_probability: 0.001,
            ewma_half_life_cycles: 30.0,
            seed: None,
        }
    }
}

/// A sampling configuration that cannot be used: the runtime's field error (the agent's `ConfigError` adds
/// "invalid agent configuration").
pub type SamplingConfigError = selfheal_runtime::config::FieldError;

/// Validated [`SamplingConfig`].
#[derive(Debug, Clone)]
pub struct SamplingSettings {
    /// Budget, bytes per hour.
    pub budget_bytes_per_hour: f64,
    /// Block length in cycles.
    pub block_cycles: u32,
    /// Block length in time (cycles × interval).
    pub block: Duration,
    /// The cycle interval (rates before the second cycle).
    pub interval: Duration,
    /// Lowest `p`.
    pub min_probability: f64,
    /// EWMA weight of the newest cycle.
    pub alpha: f64,
    /// Decision seed.
    pub seed: u64,
}

impl SamplingConfig {
    /// Checks the fields; `interval` is the cycle interval, `node` seeds the default seed.
    pub fn validate(
        &self,
        interval: Duration,
        node: &str,
    ) -> Result<SamplingSettings, SamplingConfigError> {
        let bad = |field, reason: String| Err(SamplingConfigError { field, reason });
        if self.budget_bytes_per_hour == 0 {
            return bad(
                "sampling.budget_bytes_per_hour",
                "must be positive (set min_probability = 1 to forward everything)".into(),
            );
        }
        if !(1..=100_000).contains(&self.block_cycles) {
            return bad(
                "sampling.block_cycles",
                format!("must be in 1..=100000, got {}", self.block_cycles),
            );
        }
        if !(self.min_probability > 0.0 && self.min_probability <= 1.0) {
            return bad(
                "sampling.min_probability",
                format!("must be in (0, 1], got {}", self.min_probability),
            );
        }
        if !(self.ewma_half_life_cycles.is_finite() && self.ewma_half_life_cycles > 0.0) {
            return bad(
                "sampling.ewma_half_life_cycles",
                format!("must be positive, got {}", self.ewma_half_life_cycles),
            );
        }
        let seed = self.seed.unwrap_or_else(|| stable_hash(node.as_bytes()));
        Ok(SamplingSettings {
            budget_bytes_per_hour: self.budget_bytes_per_hour as f64,
            block_cycles: self.block_cycles,
            block: interval.saturating_mul(self.block_cycles),
            interval,
            min_probability: self.min_probability,
            alpha: 1.0 - 0.5f64.powf(1.0 / self.ewma_half_life_cycles),
            seed,
        })
    }
}

/// A 64-bit hash that is the same on every build and host (the first 8 bytes of SHA-256;
/// std's hasher is allowed to change between releases).
fn stable_hash(bytes: &[u8]) -> u64 {
    let digest = Sha256::digest(bytes);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first)
}

/// The series a record belongs to: its subject (node or pod UID) and family.
fn series_hash(record: &Record) -> u64 {
    let mut key = Vec::with_capacity(64);
    match &record.subject {
        Subject::Node => {
            key.extend_from_slice(b"node\0");
            key.extend_from_slice(record.node.as_bytes());
        }
        Subject::Pod(p) => {
            key.extend_from_slice(b"pod\0");
            key.extend_from_slice(p.uid.as_bytes());
        }
    }
    key.push(0);
    key.extend_from_slice(record.family.as_str().as_bytes());
    stable_hash(&key)
}

/// Uniform in [0, 1), a pure function of (seed, series, block).
fn draw(seed: u64, series: u64, block: i64) -> f64 {
    let mix = seed ^ series.rotate_left(21) ^ (block as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut rng = Pcg64Mcg::seed_from_u64(mix);
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// What the sampler has done, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SamplerStats {
    /// Inclusion probability of the current block.
    pub probability: f64,
    /// Moving average of the bytes per hour normal records offer (all of them, before sampling).
    pub offered_bytes_per_hour: f64,
    /// Moving average of the bytes per hour anomalies take.
    pub anomaly_bytes_per_hour: f64,
    /// The budget, bytes per hour.
    pub budget_bytes_per_hour: f64,
    /// Normal records seen.
    pub offered_records: u64,
    /// Their bytes.
    pub offered_bytes: u64,
    /// Normal records selected.
    pub selected_records: u64,
    /// Their bytes.
    pub selected_bytes: u64,
    /// Anomalies forwarded.
    pub anomaly_records: u64,
    /// Their bytes.
    pub anomaly_bytes: u64,
    /// Records that could not be sized (encoding failed); passed on for the spool to count.
    pub unsized_records: u64,
    /// Window records left out of anomalies because they were forwarded already.
    pub window_records_trimmed: u64,
}

/// The sampler's metrics (`selfheal_agent_sample_*`): the loop stores the sampler's state here
/// once per cycle ([`SampleMetrics::publish`]), and a scrape reads the last one.
#[derive(Debug, Clone, Default)]
pub struct SampleMetrics(Arc<Mutex<SamplerStats>>);

impl SampleMetrics {
    /// Registers the sampler's metrics.
    pub fn register(registry: &mut prometheus_client::registry::Registry) -> Self {
        let m = SampleMetrics::default();
        registry.register_collector(Box::new(m.clone()));
        m
    }

    /// Stores the sampler's state after a cycle.
    pub fn publish(&self, stats: SamplerStats) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = stats;
    }
}

impl prometheus_client::collector::Collector for SampleMetrics {
    fn encode(
        &self,
        mut enc: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use crate::telemetry::{counter, gauge};
        let s = *self.0.lock().unwrap_or_else(|p| p.into_inner());
        gauge(
            &mut enc,
            "sample_inclusion_probability",
            "Inclusion probability of normal series in the current sampling block",
            s.probability,
        )?;
        gauge(
            &mut enc,
            "sample_budget_bytes_per_hour",
            "Configured forwarding budget",
            s.budget_bytes_per_hour,
        )?;
        gauge(
            &mut enc,
            "sample_offered_bytes_per_hour",
            "Moving average of the bytes per hour all normal records would take",
            s.offered_bytes_per_hour,
        )?;
        gauge(
            &mut enc,
            "sample_anomaly_bytes_per_hour",
            "Moving average of the bytes per hour anomalies take",
            s.anomaly_bytes_per_hour,
        )?;
        let counters = [
            (
                "sample_offered_records",
                "Normal records offered to the sampler",
                s.offered_records,
            ),
            (
                "sample_offered_bytes",
                "Wire bytes of the normal records offered",
                s.offered_bytes,
            ),
            (
                "sample_selected_records",
                "Normal records selected for forwarding",
                s.selected_records,
            ),
            (
                "sample_selected_bytes",
                "Wire bytes of the normal records selected",
                s.selected_bytes,
            ),
            (
                "sample_anomaly_records",
                "Anomalies selected for forwarding (all of them)",
                s.anomaly_records,
            ),
            (
                "sample_anomaly_bytes",
                "Wire bytes of the anomalies selected",
                s.anomaly_bytes,
            ),
            (
                "sample_window_records_trimmed",
                "Flight-recorder records left out of anomalies as already forwarded",
                s.window_records_trimmed,
            ),
        ];
        for (name, help, v) in counters {
            counter(&mut enc, name, help, v)?;
        }
        Ok(())
    }
}

/// One envelope chosen for forwarding, with its size on the wire (record plus partition key).
#[derive(Debug, Clone)]
pub struct Selected {
    /// The envelope, inclusion probability set.
    pub envelope: Envelope,
    /// Bytes it costs on the wire.
    pub bytes: usize,
}

/// The block sampler. Feed it every cycle with [`Sampler::select`].
#[derive(Debug)]
pub struct Sampler {
    settings: SamplingSettings,
    block: Option<i64>,
    last_ms: Option<i64>,
    offered_rate: Option<f64>,
    anomaly_rate: f64,
    /// Decisions of the current block, by series.
    decided: HashMap<u64, bool>,
    /// Per series, the newest record time already forwarded raw (sample, anomaly or window).
    forwarded_until: HashMap<u64, i64>,
    stats: SamplerStats,
}

impl Sampler {
    /// A sampler that forwards everything until it has seen a cycle.
    pub fn new(settings: SamplingSettings) -> Self {
        let stats = SamplerStats {
            probability: 1.0,
            budget_bytes_per_hour: settings.budget_bytes_per_hour,
            ..SamplerStats::default()
        };
        Sampler {
            settings,
            block: None,
            last_ms: None,
            offered_rate: None,
            anomaly_rate: 0.0,
            decided: HashMap::new(),
            forwarded_until: HashMap::new(),
            stats,
        }
    }

    /// The counters and the current probability.
    pub fn stats(&self) -> SamplerStats {
        self.stats
    }

    /// One cycle taken at `now_ms` (unix milliseconds): returns the anomalies, then the sampled
    /// normal records, as envelopes to forward.
    pub fn select(
        &mut self,
        now_ms: i64,
        records: Vec<Record>,
        anomalies: Vec<Anomaly>,
    ) -> Vec<Selected> {
        let size = |env: &Envelope, stats: &mut SamplerStats| {
            let rec = env.record();
            let key = rec.subject.workload_key(&rec.node).len();
            match wire_len(env) {
                Ok(n) => n + key,
                Err(_) => {
                    // The spool will fail to encode it too, and count it there.
                    stats.unsized_records += 1;
                    0
                }
            }
        };
        let anomaly_ids: HashSet<_> = anomalies.iter().map(|a| a.record.id).collect();
        let mut out = Vec::with_capacity(anomalies.len() + records.len() / 4);
        let mut anomaly_bytes = 0u64;
        for mut a in anomalies {
            let series = series_hash(&a.record);
            if let Some(&until) = self.forwarded_until.get(&series) {
                let before = a.window.len();
                a.window.retain(|r| r.ts_ms > until);
                self.stats.window_records_trimmed += (before - a.window.len()) as u64;
            }
            let newest = a.record.ts_ms;
            let until = self.forwarded_until.entry(series).or_insert(newest);
            *until = (*until).max(newest);
            let envelope = Envelope::new(Payload::Anomaly(a));
            let bytes = size(&envelope, &mut self.stats);
            anomaly_bytes += bytes as u64;
            out.push(Selected { envelope, bytes });
        }
        let n_anomalies = out.len();
        let mut offered: Vec<(u64, Selected)> = Vec::with_capacity(records.len());
        let mut offered_bytes = 0u64;
        for record in records {
            if anomaly_ids.contains(&record.id) {
                continue; // forwarded as the anomaly
            }
            let series = series_hash(&record);
            let envelope = Envelope::new(Payload::Sample {
                record,
                inclusion_probability: 1.0,
            });
            let bytes = size(&envelope, &mut self.stats);
            offered_bytes += bytes as u64;
            offered.push((series, Selected { envelope, bytes }));
        }

        // Rates from this cycle, so the first block of a run is already sized to the load.
        let dt_ms = match self.last_ms {
            Some(last) if now_ms > last => (now_ms - last) as f64,
            _ => self.settings.interval.as_secs_f64() * 1000.0,
        };
        self.last_ms = Some(now_ms);
        let per_hour = 3_600_000.0 / dt_ms.max(1.0);
        let alpha = self.settings.alpha;
        let offered_now = offered_bytes as f64 * per_hour;
        let offered_rate = match self.offered_rate {
            Some(r) => r + alpha * (offered_now - r),
            None => offered_now,
        };
        self.offered_rate = Some(offered_rate);
        self.anomaly_rate += alpha * (anomaly_bytes as f64 * per_hour - self.anomaly_rate);

        let block_ms = (self.settings.block.as_millis() as i64).max(1);
        let block = now_ms.div_euclid(block_ms);
        if self.block != Some(block) {
            self.block = Some(block);
            self.decided.clear();
            // Windows reach back `window_records` cycles; forget series quiet for much longer.
            let horizon = now_ms - 4 * block_ms;
            self.forwarded_until.retain(|_, ts| *ts >= horizon);
            self.stats.probability = self.probability(offered_rate);
        }
        let p = self.stats.probability;
        let seed = self.settings.seed;
        for (series, mut sel) in offered {
            let included = *self
                .decided
                .entry(series)
                .or_insert_with(|| draw(seed, series, block) < p);
            if included {
                let ts = sel.envelope.record().ts_ms;
                let until = self.forwarded_until.entry(series).or_insert(ts);
                *until = (*until).max(ts);
                if let Payload::Sample {
                    inclusion_probability,
                    ..
                } = &mut sel.envelope.payload
                {
                    *inclusion_probability = p;
                }
                self.stats.selected_records += 1;
                self.stats.selected_bytes += sel.bytes as u64;
                out.push(sel);
            }
            self.stats.offered_records += 1;
        }
        self.stats.offered_bytes += offered_bytes;
        self.stats.anomaly_records += n_anomalies as u64;
        self.stats.anomaly_bytes += anomaly_bytes;
        self.stats.offered_bytes_per_hour = offered_rate;
        self.stats.anomaly_bytes_per_hour = self.anomaly_rate;
        out
    }

    /// The probability for a new block: normal records get what anomalies leave of the budget.
    fn probability(&self, offered_rate: f64) -> f64 {
        let room = self.settings.budget_bytes_per_hour - self.anomaly_rate;
        let p = if offered_rate <= 0.0 {
            1.0
        } else {
            room / offered_rate
        };
        p.clamp(self.settings.min_probability, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use selfheal_core::schema::{PodRef, RecordId};
    use selfheal_core::{Family, Metric};
    use std::collections::BTreeMap;

    const INTERVAL_MS: i64 = 5000;

    fn settings(budget: u64, block_cycles: u32, seed: u64) -> SamplingSettings {
        SamplingConfig {
            budget_bytes_per_hour: budget,
            block_cycles,
            min_probability: 0.001,
            ewma_half_life_cycles: 6.0,
            seed: Some(seed),
        }
        .validate(Duration::from_millis(INTERVAL_MS as u64), "n1")
        .expect("valid sampling settings")
    }

    fn record(series: u32, id: u128, ts_ms: i64) -> Record {
        Record {
            id: RecordId::from_u128(id),
            ts_ms,
            node: "n1".into(),
            subject: Subject::Pod(PodRef {
                uid: format!("uid-{series}"),
                namespace: Some("shop".into()),
                name: Some(format!("web-{series}")),
                owner: None,
                qos: None,
            }),
            family: Family::Cpu,
            values: BTreeMap::from([(Metric::CpuUsageCores, 0.25 + series as f64)]),
        }
    }

    fn anomaly(record: Record) -> Anomaly {
        Anomaly {
            window: vec![record.clone(); 10],
            record,
            score: 0.9,
            threshold: 0.6,
            model_version: "v1".into(),
            features: vec![1.0; 8],
            top_features: Vec::new(),
        }
    }

    fn probability_of(sel: &Selected) -> f64 {
        match &sel.envelope.payload {
            Payload::Sample {
                inclusion_probability,
                ..
            } => *inclusion_probability,
            Payload::Anomaly(_) => 1.0,
        }
    }

    /// Runs `cycles` cycles from cycle `start`; `present(cycle, series)` says who reports.
    /// Returns (records offered, selections per cycle).
    fn drive(
        sampler: &mut Sampler,
        start: i64,
        cycles: i64,
        n_series: u32,
        present: impl Fn(i64, u32) -> bool,
    ) -> (u64, Vec<Vec<Selected>>) {
        let mut offered = 0;
        let mut out = Vec::new();
        for c in start..start + cycles {
            let ts = c * INTERVAL_MS;
            let records: Vec<Record> = (0..n_series)
                .filter(|&s| present(c, s))
                .map(|s| record(s, (c as u128) << 32 | s as u128, ts))
                .collect();
            offered += records.len() as u64;
            out.push(sampler.select(ts, records, Vec::new()));
        }
        (offered, out)
    }

    #[test]
    fn horvitz_thompson_estimate_is_unbiased_within_its_standard_error() {
        for seed in [1, 2, 3, 4] {
            let mut sampler = Sampler::new(settings(2_000_000, 6, seed));
            // Series come and go, so clusters have different sizes.
            let present = |c: i64, s: u32| (c / 7 + i64::from(s)) % 4 != 0;
            let (truth, cycles) = drive(&mut sampler, 0, 6 * 300, 300, present);
            let mut estimate = 0.0;
            // Cluster sizes per (series, block), and each block's p, for the variance.
            let mut clusters: HashMap<(String, i64), u64> = HashMap::new();
            let mut block_p: HashMap<i64, f64> = HashMap::new();
            for (c, sel) in cycles.iter().enumerate() {
                for s in sel {
                    let p = probability_of(s);
                    estimate += 1.0 / p;
                    block_p.insert(c as i64 / 6, p);
                }
            }
            for c in 0..6 * 300 {
                for s in (0..300).filter(|&s| present(c, s)) {
                    *clusters.entry((format!("uid-{s}"), c / 6)).or_default() += 1;
                }
            }
            let variance: f64 = clusters
                .iter()
                .map(|((_, b), &n)| {
                    let p = block_p.get(b).copied().unwrap_or(1.0);
                    (n * n) as f64 * (1.0 - p) / p
                })
                .sum();
            let sd = variance.sqrt();
            let truth = truth as f64;
            let p_mean = block_p.values().sum::<f64>() / block_p.len() as f64;
            assert!(p_mean < 0.3, "the budget must force sampling: p ≈ {p_mean}");
            assert!(
                (estimate - truth).abs() <= 4.0 * sd,
                "seed {seed}: estimate {estimate} vs {truth}, sd {sd}"
            );
            assert!(sd / truth < 0.03, "tight bound: sd {sd} of {truth}");
        }
    }

    /// Bytes forwarded per hour over cycles `[from, to)` of `cycles`.
    fn rate(cycles: &[Vec<Selected>], from: usize, to: usize) -> f64 {
        let bytes: usize = cycles[from..to].iter().flatten().map(|s| s.bytes).sum();
        bytes as f64 * 3_600_000.0 / ((to - from) as f64 * INTERVAL_MS as f64)
    }

    #[test]
    fn forwarded_bytes_converge_to_the_budget_under_steady_and_changing_load() {
        let budget = 2_000_000u64;
        let mut sampler = Sampler::new(settings(budget, 6, 7));
        let all = |_: i64, _: u32| true;
        // 400 series, then 1000, then 150: offered load ~5x, ~13x, ~2x the budget.
        let (_, mut cycles) = drive(&mut sampler, 0, 6 * 150, 400, all);
        let p_steady = sampler.stats().probability;
        let (_, more) = drive(&mut sampler, 6 * 150, 6 * 150, 1000, all);
        cycles.extend(more);
        let p_heavy = sampler.stats().probability;
        let (_, less) = drive(&mut sampler, 6 * 300, 6 * 150, 150, all);
        cycles.extend(less);
        let p_light = sampler.stats().probability;
        // Skip five blocks after each change: the averages need a few half-lives.
        for (phase, from) in [
            ("steady", 30),
            ("heavy", 6 * 150 + 30),
            ("light", 6 * 300 + 30),
        ] {
            let r = rate(&cycles, from, from + 6 * 150 - 30);
            let err = (r - budget as f64).abs() / budget as f64;
            assert!(
                err < 0.06,
                "{phase}: {r:.0} B/h vs budget {budget} ({err:.3})"
            );
        }
        assert!(
            p_heavy < p_steady && p_steady < p_light,
            "{p_heavy} {p_steady} {p_light}"
        );
        assert!(p_light < 1.0);
        assert!(
            (p_steady / p_heavy - 2.5).abs() < 0.3,
            "p scales with the load: {p_steady} / {p_heavy}"
        );
    }

    #[test]
    fn light_load_forwards_everything_with_probability_one() {
        let mut sampler = Sampler::new(settings(100_000_000, 6, 1));
        let (offered, cycles) = drive(&mut sampler, 0, 60, 20, |_, _| true);
        let sel: Vec<&Selected> = cycles.iter().flatten().collect();
        assert_eq!(sel.len() as u64, offered);
        assert!(sel.iter().all(|s| probability_of(s) == 1.0));
    }

    #[test]
    fn whole_blocks_of_a_series_are_forwarded_or_none() {
        let mut sampler = Sampler::new(settings(1_000_000, 6, 5));
        let (_, cycles) = drive(&mut sampler, 0, 6 * 40, 200, |_, _| true);
        let mut per: HashMap<(String, usize), (usize, f64)> = HashMap::new();
        for (c, sel) in cycles.iter().enumerate() {
            for s in sel {
                let Subject::Pod(pod) = &s.envelope.record().subject else {
                    panic!("pod records only");
                };
                let e = per
                    .entry((pod.uid.clone(), c / 6))
                    .or_insert((0, probability_of(s)));
                e.0 += 1;
                assert_eq!(e.1, probability_of(s), "one p per block");
            }
        }
        assert!(per.len() > 40, "some series were sampled: {}", per.len());
        assert!(
            per.values().all(|&(n, _)| n == 6),
            "a sampled series ships its whole block"
        );
    }

    #[test]
    fn anomalies_are_never_dropped_even_past_the_budget() {
        // A budget anomalies alone exceed: p falls to the floor, every anomaly still goes.
        let mut sampler = Sampler::new(settings(50_000, 6, 3));
        let mut anomaly_ids = Vec::new();
        let mut forwarded = Vec::new();
        for c in 0..120i64 {
            let ts = c * INTERVAL_MS;
            let records: Vec<Record> = (0..50)
                .map(|s| record(s, (c as u128) << 32 | s as u128, ts))
                .collect();
            let anomalies: Vec<Anomaly> = records
                .iter()
                .filter(|r| r.id.as_u128() % 7 == 0)
                .cloned()
                .map(anomaly)
                .collect();
            anomaly_ids.extend(anomalies.iter().map(|a| a.record.id));
            for s in sampler.select(ts, records, anomalies) {
                forwarded.push((s.envelope.record().id, probability_of(&s)));
            }
        }
        let mut seen = HashSet::new();
        for (id, _) in &forwarded {
            assert!(seen.insert(*id), "record {id} forwarded twice");
        }
        for id in &anomaly_ids {
            assert!(seen.contains(id), "anomaly {id} dropped");
        }
        assert_eq!(sampler.stats().probability, 0.001);
        assert_eq!(sampler.stats().anomaly_records, anomaly_ids.len() as u64);
    }

    #[test]
    fn anomaly_windows_carry_only_records_not_forwarded_before() {
        let mut sampler = Sampler::new(settings(100_000_000, 6, 1)); // p = 1: all sampled
        let mut quiet = Sampler::new(SamplingSettings {
            min_probability: 0.001,
            budget_bytes_per_hour: 1.0, // p at the floor: nothing sampled
            ..settings(1, 6, 1)
        });
        let mut ring: Vec<Record> = Vec::new();
        let mut windows = (Vec::new(), Vec::new());
        for c in 0..20i64 {
            let ts = c * INTERVAL_MS;
            let rec = record(0, c as u128, ts);
            ring.push(rec.clone());
            if ring.len() > 8 {
                ring.remove(0);
            }
            let anomalies = if c >= 15 {
                vec![Anomaly {
                    window: ring.clone(),
                    ..anomaly(rec.clone())
                }]
            } else {
                Vec::new()
            };
            for (s, out) in [(&mut sampler, &mut windows.0), (&mut quiet, &mut windows.1)] {
                for sel in s.select(ts, vec![rec.clone()], anomalies.clone()) {
                    if let Payload::Anomaly(a) = sel.envelope.payload {
                        out.push(
                            a.window
                                .iter()
                                .map(|r| r.ts_ms / INTERVAL_MS)
                                .collect::<Vec<_>>(),
                        );
                    }
                }
            }
        }
        // Everything before was sampled: each window is just the anomalous record (it ends
        // every window and is not sent as a sample).
        assert_eq!(windows.0, (15..20).map(|c| vec![c]).collect::<Vec<_>>());
        // Nothing sampled: the first window is whole, then each adds only the new record.
        assert_eq!(windows.1[0], (8..=15).collect::<Vec<_>>());
        assert_eq!(windows.1[1..], [vec![16], vec![17], vec![18], vec![19]]);
        assert_eq!(quiet.stats().window_records_trimmed, 4 * 7);
    }

    #[test]
    fn decisions_are_deterministic_for_a_seed_and_independent_of_order() {
        let run = |seed: u64, reverse: bool| {
            let mut sampler = Sampler::new(settings(1_000_000, 6, seed));
            let mut ids = Vec::new();
            for c in 0..60i64 {
                let mut records: Vec<Record> = (0..200)
                    .map(|s| record(s, (c as u128) << 32 | s as u128, c * INTERVAL_MS))
                    .collect();
                if reverse {
                    records.reverse();
                }
                let sel = sampler.select(c * INTERVAL_MS, records, Vec::new());
                ids.extend(sel.iter().map(|s| s.envelope.record().id));
            }
            ids.sort_unstable();
            ids
        };
        assert_eq!(run(9, false), run(9, false));
        assert_eq!(run(9, false), run(9, true));
        assert_ne!(run(9, false), run(10, false));
    }

    #[test]
    fn bad_settings_name_their_field() {
        let interval = Duration::from_secs(5);
        let cases = [
            (
                SamplingConfig {
                    budget_bytes_per_hour: 0,
                    ..SamplingConfig::default()
                },
                "sampling.budget_bytes_per_hour",
            ),
            (
                SamplingConfig {
                    block_cycles: 0,
                    ..SamplingConfig::default()
                },
                "sampling.block_cycles",
            ),
            (
                SamplingConfig {
                    min_probability: 1.5,
                    ..SamplingConfig::default()
                },
                "sampling.min_probability",
            ),
            (
                SamplingConfig {
                    ewma_half_life_cycles: f64::NAN,
                    ..SamplingConfig::default()
                },
                "sampling.ewma_half_life_cycles",
            ),
        ];
        for (cfg, field) in cases {
            let err = cfg.validate(interval, "n").expect_err(field);
            assert_eq!(err.field, field);
        }
        let s = SamplingConfig::default()
            .validate(interval, "n")
            .expect("defaults valid");
        assert_eq!(s.block, Duration::from_secs(600));
    }
}
