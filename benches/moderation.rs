//! Moderation rules: what they catch and what they cost. On the labelled set
//! (`tests/fixtures/moderation/labelled.jsonl`, 227 short messages written for the project) it
//! runs the built-in crisis signals alone (a new tenant's policy) and the reference policy
//! `tests/fixtures/moderation/policy.json` (word lists, a threat regex, the PII detectors) through
//! the same `Active::check` the router uses, and prints per expected action the precision and
//! recall, and the false-positive rate on the safe messages. Then the cost: each message checked
//! 200 times, the per-message time's p50, p99 and max (the bound: ≤ 50 µs at p99).
//!
//! Run: `cargo bench --bench moderation` (pin it with `taskset -c 0` to compare runs). Figures go
//! to docs/BENCHMARKS.md.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use switchboard::moderation::{Action, Active, Compiled, Policy};

const BOUND: Duration = Duration::from_micros(50);
const REPEAT: usize = 200;

struct Case {
    text: String,
    label: String,
    expected: Action,
}

fn load() -> anyhow::Result<Vec<Case>> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/moderation/labelled.jsonl"
    );
    let mut cases = Vec::new();
    for line in std::fs::read_to_string(path)?.lines() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line)?;
        let expected: Action = serde_json::from_value(v["expected"].clone())?;
        cases.push(Case {
            text: v["text"].as_str().unwrap_or_default().to_owned(),
            label: v["label"].as_str().unwrap_or_default().to_owned(),
            expected,
        });
    }
    Ok(cases)
}

/// The action a policy takes on a message: the crisis protocol holds, otherwise the rules'.
fn decided(active: &Active, text: &str) -> Action {
    let v = active.check(text, true);
    if v.crisis { Action::Hold } else { v.action }
}

fn report(name: &str, active: &Active, cases: &[Case]) {
    println!("\n{name}");
    println!("  action   expected  caught  precision  recall");
    let mut by_action: BTreeMap<Action, (u32, u32, u32)> = BTreeMap::new(); // (expected, predicted, both)
    let mut safe = (0u32, 0u32);
    let mut any = (0u32, 0u32); // unsafe or borderline: (n, acted on)
    for c in cases {
        let got = decided(active, &c.text);
        let e = by_action.entry(c.expected).or_default();
        e.0 += 1;
        if got == c.expected {
            e.2 += 1;
        }
        by_action.entry(got).or_default().1 += 1;
        if c.label == "safe" {
            safe.0 += 1;
            safe.1 += u32::from(got != Action::Allow);
        } else {
            any.0 += 1;
            any.1 += u32::from(got != Action::Allow);
        }
    }
    for (action, (expected, predicted, both)) in &by_action {
        if *action == Action::Allow {
            continue;
        }
        let precision = if *predicted > 0 {
            f64::from(*both) / f64::from(*predicted)
        } else {
            f64::NAN
        };
        let recall = if *expected > 0 {
            f64::from(*both) / f64::from(*expected)
        } else {
            f64::NAN
        };
        println!(
            "  {:<8} {expected:>8}  {predicted:>6}  {precision:>9.2}  {recall:>6.2}",
            action.as_str()
        );
    }
    println!(
        "  false positives on the safe messages: {} of {} ({:.1} %)",
        safe.1,
        safe.0,
        100.0 * f64::from(safe.1) / f64::from(safe.0.max(1))
    );
    println!(
        "  unsafe or borderline messages acted on (any action): {} of {} ({:.1} %)",
        any.1,
        any.0,
        100.0 * f64::from(any.1) / f64::from(any.0.max(1))
    );
}

fn cost(active: &Active, cases: &[Case]) -> (Duration, Duration, Duration) {
    let mut times: Vec<Duration> = Vec::with_capacity(cases.len() * REPEAT);
    for _ in 0..REPEAT {
        for c in cases {
            let started = Instant::now();
            std::hint::black_box(active.check(std::hint::black_box(&c.text), true));
            times.push(started.elapsed());
        }
    }
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
    (at(0.5), at(0.99), times[times.len() - 1])
}

fn main() -> anyhow::Result<()> {
    let cases = load()?;
    println!("moderation bench: {} labelled messages", cases.len());
    let default = Active::new(
        0,
        Compiled::new(Policy::default()).map_err(|p| anyhow::anyhow!("{p:?}"))?,
    );
    let reference_path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/moderation/policy.json"
    );
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(reference_path)?)?;
    let reference = Active::new(
        1,
        Compiled::parse(&reference).map_err(|p| anyhow::anyhow!("{p:?}"))?,
    );
    report(
        "a new tenant's policy (the built-in crisis signals only)",
        &default,
        &cases,
    );
    report(
        "the reference policy (tests/fixtures/moderation/policy.json) with the crisis signals",
        &reference,
        &cases,
    );
    println!("\ncost per message ({REPEAT} passes over the set)");
    for (name, active) in [("default", &default), ("reference", &reference)] {
        let (p50, p99, max) = cost(active, &cases);
        let verdict = if p99 <= BOUND { "within" } else { "OVER" };
        println!(
            "  {name:<10} p50 {p50:>9.2?}  p99 {p99:>9.2?}  max {max:>9.2?}  ({verdict} the {BOUND:?} bound at p99)"
        );
    }
    Ok(())
}
