//! The in-process embedding model (all-MiniLM-L6-v2 under candle): chunks embedded per second
//! when knowledge is ingested, and the time to embed one question (what every hybrid turn waits
//! for), on the StackFAQ corpus's real chunks and questions.
//!
//! The chunks are the gateway's own (`knowledge::chunk` at its defaults: ≤ 256 tokens), embedded
//! in the batches ingestion uses; the questions are StackFAQ's 1,249, one at a time. The model is
//! `SWITCHBOARD_EMBED_DIR` (a model folder) or the built-in copy in `$SWITCHBOARD_DATA_DIR/models`
//! (default `./data`). Pin it like the user's process: `taskset -c 0,1 cargo bench --bench embed`.
//! Figures go to docs/BENCHMARKS.md.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use switchboard::knowledge::chunk::{ChunkConfig, chunk};
use switchboard::knowledge::embed::{LocalEmbedder, builtin_dir};

#[derive(serde::Deserialize)]
struct Line {
    #[serde(default)]
    title: String,
    text: String,
}

fn lines(path: &str) -> Vec<Line> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{path}: {e}")))
        .collect()
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    sorted
        .get(((sorted.len().saturating_sub(1)) as f64 * p).round() as usize)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

fn main() {
    let dir = std::env::var("SWITCHBOARD_EMBED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            builtin_dir(&PathBuf::from(
                std::env::var("SWITCHBOARD_DATA_DIR").unwrap_or_else(|_| "./data".into()),
            ))
        });
    let model = LocalEmbedder::load(&dir, "all-MiniLM-L6-v2")
        .unwrap_or_else(|e| panic!("no model in {}: {e:#}", dir.display()));
    let base = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/rag_eval/stackfaq"
    );
    let corpus = lines(&format!("{base}/corpus.jsonl"));
    let queries = lines(&format!("{base}/queries.jsonl"));
    let chunks: Vec<String> = corpus
        .iter()
        .flat_map(|d| {
            chunk(&d.text, ChunkConfig::default())
                .into_iter()
                .map(|c| format!("{}\n{}\n{}", d.title, c.heading, c.text))
                .collect::<Vec<_>>()
        })
        .collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "model {} · {} chunks of StackFAQ · {} questions · {threads} cores available",
        dir.display(),
        chunks.len(),
        queries.len()
    );
    // Warm-up.
    let _ = model.embed_blocking(&chunks[..32.min(chunks.len())]);

    // `EMBED_BENCH_ROUNDS` (default 2): ingest rounds; 0 measures the questions alone.
    let rounds: usize = std::env::var("EMBED_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(2);
    for round in 1..=rounds {
        let started = Instant::now();
        for batch in chunks.chunks(32) {
            model.embed_blocking(batch).expect("embed chunks");
        }
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "ingest round {round}: {:.1} chunks/s ({} chunks in {seconds:.1} s)",
            chunks.len() as f64 / seconds,
            chunks.len()
        );
    }
    let mut latencies = Vec::with_capacity(queries.len());
    for q in &queries {
        let t = Instant::now();
        model
            .embed_blocking(std::slice::from_ref(&q.text))
            .expect("embed question");
        latencies.push(t.elapsed());
    }
    latencies.sort_unstable();
    // The tokenizer's share of a question's time.
    let tokenizer =
        tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).expect("tokenizer");
    let mut tokenizing = Vec::with_capacity(queries.len());
    for q in &queries {
        let t = Instant::now();
        let _ = tokenizer.encode(q.text.as_str(), true);
        tokenizing.push(t.elapsed());
    }
    tokenizing.sort_unstable();
    println!(
        "tokenizing alone: p50 {:.3} ms, p99 {:.3} ms",
        pct(&tokenizing, 0.5),
        pct(&tokenizing, 0.99)
    );
    println!(
        "question embedding: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} questions, one at a time)",
        pct(&latencies, 0.5),
        pct(&latencies, 0.99),
        pct(&latencies, 1.0),
        latencies.len()
    );
}
