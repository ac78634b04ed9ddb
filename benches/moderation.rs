//! Moderation rules: what they catch and what they cost. On the labelled set
//! (`tests/fixtures/moderation/labelled.jsonl`, 227 short messages written for the project) it
//! runs the built-in crisis signals alone (a new tenant's policy) and the reference policy
//! `tests/fixtures/moderation/policy.json` (word lists, a threat regex, the PII detectors) through
//! the same `Active::check` the router uses, and prints per expected action the precision and
//! recall, and the false-positive rate on the safe messages. Then the cost: each message checked
//! 200 times, the per-message time's p50, p99 and max (the bound: ≤ 50 µs at p99).
//!
//! With `SWITCHBOARD_BENCH_LLM_URL` (an Ollama-API server; `SWITCHBOARD_BENCH_LLM_MODEL`, default
//! `smollm2`), the reference policy is run again with the classifier on (its default categories
//! and actions), through the same `Classifier` and `Active::merge` the gateway uses: precision and
//! recall of rules + classifier, how often the classifier answered (ok, timeout, unparsable,
//! down), and its latency per message.
//!
//! Run: `cargo bench --bench moderation` (pin it with `taskset -c 0` to compare runs); with the
//! CI model: `.ci/llm-setup && SWITCHBOARD_BENCH_LLM_URL=http://127.0.0.1:11435 cargo bench
//! --bench moderation`. Figures go to docs/BENCHMARKS.md.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use switchboard::llm::guard::{Guarded, Limits};
use switchboard::moderation::classifier::Classifier;
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
    let got: Vec<Action> = cases.iter().map(|c| decided(active, &c.text)).collect();
    report_decisions(name, cases, &got);
}

fn report_decisions(name: &str, cases: &[Case], decisions: &[Action]) {
    println!("\n{name}");
    println!("  action   expected  caught  precision  recall");
    let mut by_action: BTreeMap<Action, (u32, u32, u32)> = BTreeMap::new(); // (expected, predicted, both)
    let mut safe = (0u32, 0u32);
    let mut any = (0u32, 0u32); // unsafe or borderline: (n, acted on)
    for (c, got) in cases.iter().zip(decisions) {
        let got = *got;
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
    if let Ok(url) = std::env::var("SWITCHBOARD_BENCH_LLM_URL") {
        let model =
            std::env::var("SWITCHBOARD_BENCH_LLM_MODEL").unwrap_or_else(|_| "smollm2".into());
        with_classifier(&url, &model, &reference_path_policy()?, &cases)?;
    } else {
        println!(
            "\n(rules + classifier skipped: set SWITCHBOARD_BENCH_LLM_URL to an Ollama-API server)"
        );
    }
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

fn reference_path_policy() -> anyhow::Result<Value> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/moderation/policy.json"
    );
    Ok(serde_json::from_str(&std::fs::read_to_string(path)?)?)
}

/// The reference policy with the classifier on: each message through the rules and the model,
/// one at a time (as turns are), and the decisions reported like the rules' alone.
fn with_classifier(
    url: &str,
    model: &str,
    reference: &Value,
    cases: &[Case],
) -> anyhow::Result<()> {
    let mut policy = reference.clone();
    policy["classifier"] = serde_json::json!({ "enabled": true, "timeout_ms": 30000 });
    let active = Active::new(
        2,
        Compiled::parse(&policy).map_err(|p| anyhow::anyhow!("{p:?}"))?,
    );
    let endpoint = switchboard::llm::Endpoint {
        provider: switchboard::llm::Provider::Ollama,
        url: url.to_owned(),
        api_key: None,
    };
    let chat = switchboard::llm::chat_model(reqwest::Client::new(), &endpoint, model);
    let limits = Limits {
        first_token: Duration::from_secs(60),
        total: Duration::from_secs(120),
        ..Limits::default()
    };
    let classifier = Classifier::new(Arc::new(Guarded::new(chat, limits)))?;
    let categories = active.categories();
    let timeout = Duration::from_millis(active.compiled.policy.classifier.timeout_ms);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut decisions = Vec::with_capacity(cases.len());
    let mut statuses: BTreeMap<&'static str, u32> = BTreeMap::new();
    let mut latencies = Vec::with_capacity(cases.len());
    let mut alone = Vec::with_capacity(cases.len());
    for (i, c) in cases.iter().enumerate() {
        let found = runtime.block_on(classifier.classify(&c.text, &categories, timeout));
        *statuses.entry(found.status.as_str()).or_default() += 1;
        latencies.push(Duration::from_millis(found.latency_ms));
        let mut verdict = active.check(&c.text, true);
        // The classifier alone: its hits on an empty verdict.
        let mut only = switchboard::moderation::Verdict {
            action: Action::Allow,
            crisis: false,
            hits: Vec::new(),
            policy_version: 2,
        };
        active.merge(&mut only, &found, true);
        alone.push(if only.crisis {
            Action::Hold
        } else {
            only.action
        });
        active.merge(&mut verdict, &found, true);
        decisions.push(if verdict.crisis {
            Action::Hold
        } else {
            verdict.action
        });
        if (i + 1) % 50 == 0 {
            eprintln!("  classified {} of {}", i + 1, cases.len());
        }
    }
    report_decisions(
        &format!("the classifier alone ({model}, default categories and actions)"),
        cases,
        &alone,
    );
    report_decisions(
        &format!("the reference policy + the classifier ({model})"),
        cases,
        &decisions,
    );
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    println!(
        "  classifier answers: {statuses:?}; latency per message p50 {:?}, p99 {:?}, max {:?} (timeout {timeout:?})",
        at(0.5),
        at(0.99),
        latencies[latencies.len() - 1]
    );
    Ok(())
}
