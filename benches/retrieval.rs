//! Knowledge ingest throughput and retrieval latency (BM25, embedded Qdrant Edge), beside the
//! bm25s Python retriever on the same chunks and queries in the same run.
//!
//! A synthetic corpus (pseudo-words with a Zipf-like frequency, paragraphs of 60 words, documents
//! of ~10 chunks) is ingested through `Knowledge::ingest` — chunking, SQL (SQLite), BM25 vectors,
//! Edge upsert and flush, exactly the production path — at each size in `RETRIEVAL_BENCH_SIZES`
//! (chunks; default 10000,100000). Then the shard is optimized and 1,000 four-word queries drawn
//! from the corpus are run one at a time through `Knowledge::search` (top 5, chunk rows from SQL).
//! bm25s (benches/peers/bm25s, its venv made once with `python3 -m venv .venv && .venv/bin/pip
//! install -r requirements.txt`) indexes the same chunk texts and runs the same queries.
//!
//! `RETRIEVAL_BENCH_MODES` (default `bm25,hybrid`): `hybrid` runs the same corpus and queries
//! with a dense vector per chunk and per query (384 dimensions, the size of all-MiniLM-L6-v2)
//! fused with BM25 by RRF — the production hybrid path, HNSW built by `optimize`. The vectors come
//! from a stand-in embedder (a hash of the text seeds a random unit vector): an embedding model's
//! own time is the model server's and is not measured here; what is measured is the gateway's
//! share, which is what runs on every question.
//!
//! Run: `cargo bench --bench retrieval`. Figures go to docs/BENCHMARKS.md.

mod support;

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use switchboard::core::TenantSlug;
use switchboard::knowledge::chunk::chunk;
use switchboard::knowledge::extract::Format;
use switchboard::knowledge::vectors::{EdgeIndex, VectorIndex};
use switchboard::knowledge::{Knowledge, KnowledgeConfig, Upload};
use switchboard::store::Store;

const WORDS_PER_PARAGRAPH: usize = 60;
const PARAGRAPHS_PER_DOCUMENT: usize = 30;
const QUERIES: usize = 1_000;

fn vocabulary(n: usize) -> Vec<String> {
    const SYLLABLES: [&str; 24] = [
        "ka", "lo", "mi", "ne", "ru", "ta", "vo", "shi", "pe", "da", "gri", "mon", "sel", "tra",
        "bu", "fen", "cor", "ish", "ul", "ba", "ze", "qui", "ol", "ter",
    ];
    (0..n)
        .map(|i| {
            let mut w = String::new();
            let mut x = i + 7;
            for _ in 0..3 {
                w.push_str(SYLLABLES[x % SYLLABLES.len()]);
                x /= SYLLABLES.len();
                if x == 0 {
                    break;
                }
            }
            w
        })
        .collect()
}

/// A word index with a Zipf-like distribution (rank ∝ 1/u).
fn zipf(rng: &mut StdRng, n: usize) -> usize {
    let u: f64 = rng.random_range(1.0..(n as f64));
    ((n as f64 / u) as usize).min(n - 1)
}

fn document(rng: &mut StdRng, vocab: &[String], i: usize) -> String {
    let mut out = format!("# Topic {i}\n\n");
    for p in 0..PARAGRAPHS_PER_DOCUMENT {
        if p % 10 == 0 {
            out.push_str(&format!("## Part {}\n\n", p / 10 + 1));
        }
        let words: Vec<&str> = (0..WORDS_PER_PARAGRAPH)
            .map(|_| vocab[vocab.len() - 1 - zipf(rng, vocab.len())].as_str())
            .collect();
        out.push_str(&words.join(" "));
        out.push_str(".\n\n");
    }
    out
}

struct Run {
    chunks: usize,
    ingest_s: f64,
    optimize_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    qps: f64,
}

/// Random unit vectors seeded by the text: an embedding model's shape without its cost.
struct StandInEmbedder;

#[async_trait::async_trait]
impl switchboard::llm::Embedder for StandInEmbedder {
    async fn embed(&self, inputs: &[String]) -> Result<Vec<Vec<f32>>, switchboard::llm::LlmError> {
        use std::hash::{Hash, Hasher};
        Ok(inputs
            .iter()
            .map(|text| {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                text.hash(&mut h);
                let mut rng = StdRng::seed_from_u64(h.finish());
                let v: Vec<f32> = (0..DENSE).map(|_| rng.random_range(-1.0..1.0)).collect();
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
                v.into_iter().map(|x| x / norm).collect()
            })
            .collect())
    }

    fn model(&self) -> &str {
        "stand-in-384"
    }
}

const DENSE: usize = 384;

async fn run(size: usize, dir: &Path, hybrid: bool) -> (Run, Vec<String>, Vec<String>) {
    let store = Store::connect(
        &switchboard_channel::Secret::new(format!(
            "sqlite://{}?mode=rwc",
            dir.join("switchboard.db").display()
        )),
        8,
    )
    .await
    .expect("store");
    store.migrate().await.expect("migrate");
    let tenant = store
        .create_tenant(&TenantSlug::parse("bench").expect("slug"), "Bench")
        .await
        .expect("tenant");
    let index = Arc::new(EdgeIndex::with_dense(
        dir.join("vectors"),
        hybrid.then_some(DENSE),
    ));
    let mut knowledge = Knowledge::new(
        store.clone(),
        index.clone() as Arc<dyn VectorIndex>,
        KnowledgeConfig::default(),
    )
    .expect("knowledge");
    if hybrid {
        knowledge = knowledge.with_embedder(Arc::new(StandInEmbedder));
    }
    let vocab = vocabulary(30_000);
    let mut rng = StdRng::seed_from_u64(7);
    let mut chunk_texts = Vec::new();
    let mut chunks = 0usize;
    let mut i = 0;
    let started = Instant::now();
    while chunks < size {
        // Batches of 50 documents, as `knowledge ingest` sends a folder.
        let mut uploads = Vec::new();
        for _ in 0..50 {
            let text = document(&mut rng, &vocab, i);
            for c in chunk(&text, KnowledgeConfig::default().chunk) {
                chunk_texts.push(format!("Topic {i}\n{}\n{}", c.heading, c.text));
            }
            uploads.push(Upload {
                title: Some(format!("Topic {i}")),
                content: text,
                format: Format::Markdown,
                source: Some(format!("doc-{i}")),
            });
            i += 1;
        }
        for ingested in knowledge
            .ingest_many(&tenant.tenant_id, uploads)
            .await
            .expect("ingest")
        {
            chunks += ingested.expect("ingested").chunks as usize;
        }
    }
    let ingest_s = started.elapsed().as_secs_f64();
    let t = Instant::now();
    index.optimize(&tenant.tenant_id).await.expect("optimize");
    let optimize_s = t.elapsed().as_secs_f64();
    // Queries: four words from a random chunk (so each has matches), one at a time.
    let queries: Vec<String> = (0..QUERIES)
        .map(|_| {
            let text = &chunk_texts[rng.random_range(0..chunk_texts.len())];
            let words: Vec<&str> = text.split_whitespace().skip(4).collect();
            (0..4)
                .map(|_| words[rng.random_range(0..words.len())].trim_end_matches('.'))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let mut latencies = Vec::with_capacity(QUERIES);
    let all = Instant::now();
    for q in &queries {
        let t = Instant::now();
        let hits = knowledge
            .search(&tenant.tenant_id, q, 5)
            .await
            .expect("search");
        latencies.push(t.elapsed());
        assert!(!hits.is_empty(), "no hit for {q}");
    }
    let qps = QUERIES as f64 / all.elapsed().as_secs_f64();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let p50 = ms(support::percentile(&mut latencies, 0.5));
    let p99 = ms(support::percentile(&mut latencies, 0.99));
    store.close().await;
    (
        Run {
            chunks,
            ingest_s,
            optimize_s,
            p50_ms: p50,
            p99_ms: p99,
            qps,
        },
        chunk_texts,
        queries,
    )
}

fn bm25s(dir: &Path, chunks: &[String], queries: &[String]) -> Option<serde_json::Value> {
    let peer = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/peers/bm25s");
    let python = peer.join(".venv/bin/python");
    if !python.exists() {
        eprintln!(
            "bm25s baseline skipped: make its venv in {}",
            peer.display()
        );
        return None;
    }
    let write = |name: &str, lines: &[String]| {
        let path = dir.join(name);
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).ok()?);
        for l in lines {
            writeln!(f, "{}", serde_json::to_string(l).ok()?).ok()?;
        }
        f.flush().ok()?;
        Some(path)
    };
    let c = write("chunks.jsonl", chunks)?;
    let q = write("queries.jsonl", queries)?;
    let out = std::process::Command::new(python)
        .arg(peer.join("run.py"))
        .args([&c, &q])
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!("bm25s failed: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

#[tokio::main]
async fn main() {
    sqlx::any::install_default_drivers();
    let sizes: Vec<usize> = std::env::var("RETRIEVAL_BENCH_SIZES")
        .unwrap_or_else(|_| "10000,100000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let modes: Vec<String> = std::env::var("RETRIEVAL_BENCH_MODES")
        .unwrap_or_else(|_| "bm25,hybrid".into())
        .split(',')
        .map(|s| s.trim().to_owned())
        .collect();
    println!(
        "{:>6} {:>8} {:>12} {:>10} {:>10} {:>10} {:>10} | {:>12} {:>10} {:>10}",
        "mode",
        "chunks",
        "ingest/s",
        "optimize",
        "p50 ms",
        "p99 ms",
        "q/s",
        "bm25s q/s",
        "p50 ms",
        "p99 ms"
    );
    for size in sizes {
        for mode in &modes {
            let hybrid = mode == "hybrid";
            let dir = tempfile::tempdir().expect("temp dir");
            let (r, chunks, queries) = run(size, dir.path(), hybrid).await;
            let peer = if hybrid {
                None
            } else {
                bm25s(dir.path(), &chunks, &queries)
            };
            let get = |k: &str| {
                peer.as_ref()
                    .and_then(|p| p[k].as_f64())
                    .map_or("-".to_owned(), |v| format!("{v:.2}"))
            };
            println!(
                "{:>6} {:>8} {:>12.0} {:>9.1}s {:>10.2} {:>10.2} {:>10.0} | {:>12} {:>10} {:>10}",
                mode,
                r.chunks,
                r.chunks as f64 / r.ingest_s,
                r.optimize_s,
                r.p50_ms,
                r.p99_ms,
                r.qps,
                get("qps"),
                get("p50_ms"),
                get("p99_ms")
            );
        }
    }
}
