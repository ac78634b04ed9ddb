//! HTML extraction on hostile input: 16 MiB of each pattern in
//! `switchboard::knowledge::extract::hostile` (the inputs that were quadratic before: `&`, empty
//! scripts, unclosed nesting, one tag with a million attributes, …), timed through the same
//! `extract` the upload path uses, beside 16 MiB of ordinary HTML (headings, paragraphs, links,
//! lists, entities) in the same run. The bound is ≤ 2 s for 16 MiB of any HTML.
//!
//! Run: `cargo bench --bench hostile_html` (`HOSTILE_HTML_MIB` sets the size, default 16; pin it
//! with `taskset -c 0` to compare runs). Figures go to docs/BENCHMARKS.md.

use std::fmt::Write;
use std::time::{Duration, Instant};

use switchboard::knowledge::extract::{Format, extract, hostile};

const BOUND: Duration = Duration::from_secs(2);

/// A knowledge page as a site would publish it, repeated to `n` bytes.
fn ordinary(n: usize) -> String {
    let mut html =
        String::from("<!doctype html><html><head><title>Coaching notes</title></head><body>");
    let mut i = 0;
    while html.len() < n {
        let _ = write!(
            html,
            "<h2 id=\"s{i}\">Section {i}</h2><p class=\"lead\">Keep the same wake-up time &amp; \
             get daylight early; see <a href=\"/notes/{i}\">note {i}</a>.</p>\
             <ul><li>No screens after 22:00</li><li>Coffee before noon &mdash; not after</li></ul>\
             <script>track({i})</script>"
        );
        i += 1;
    }
    html.push_str("</body></html>");
    html
}

fn best_of(runs: usize, html: &str) -> Duration {
    (0..runs)
        .map(|_| {
            let started = Instant::now();
            std::hint::black_box(extract(html, Format::Html));
            started.elapsed()
        })
        .min()
        .unwrap_or_default()
}

fn main() {
    let mib: usize = std::env::var("HOSTILE_HTML_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16);
    let size = mib * 1024 * 1024;
    let baseline = best_of(3, &ordinary(size));
    println!("HTML extraction, {mib} MiB each, best of 3 (bound: {BOUND:?})");
    println!("{:<28} {:>10} {:>8}", "input", "time", "ratio");
    println!(
        "{:<28} {:>10.3?} {:>8}",
        "ordinary page (baseline)", baseline, "1.00"
    );
    let mut over = Vec::new();
    for (name, make) in hostile::PATTERNS {
        let html = make(size);
        let took = best_of(3, &html);
        let ratio = took.as_secs_f64() / baseline.as_secs_f64().max(1e-9);
        println!("{name:<28} {took:>10.3?} {ratio:>8.2}");
        if took > BOUND {
            over.push(name);
        }
    }
    if over.is_empty() {
        println!("all within {BOUND:?}");
    } else {
        println!("OVER {BOUND:?}: {}", over.join(", "));
        std::process::exit(1);
    }
}
