//! Policy and guardrails (not written yet): what the aggregator may do about an incident, and
//! what it must never do. It will own the rules that map an incident to a heal action (which
//! action for which signal and workload), and the guardrails every action passes before it runs:
//! rate limits per workload and per cluster, a blast-radius cap, cool-downs after a heal,
//! maintenance windows and silences, and dry-run as the default, each refusal recorded with its
//! reason. It decides; [`crate::heal`] executes.
