//! Retrieval evaluation on a BEIR-style set (`corpus.jsonl`, `queries.jsonl`, `qrels/test.tsv`):
//! recall@1, recall@5 and MRR@10 of documents, through the same ingestion and search the bot
//! uses, on a throw-away store.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::extract::Format;
use super::{Knowledge, Upload};

/// What an evaluation measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// `bm25` or `hybrid` (BM25 and embeddings fused by rank).
    pub mode: &'static str,
    pub documents: usize,
    pub chunks: i64,
    pub queries: usize,
    pub recall_at_1: f64,
    pub recall_at_5: f64,
    pub mrr_at_10: f64,
    pub ingest_seconds: f64,
    pub query_p50_ms: f64,
    pub query_p99_ms: f64,
}

#[derive(serde::Deserialize)]
struct Doc {
    #[serde(rename = "_id")]
    id: String,
    #[serde(default)]
    title: String,
    text: String,
}

#[derive(serde::Deserialize)]
struct QueryLine {
    #[serde(rename = "_id")]
    id: String,
    text: String,
}

fn jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<Vec<T>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{} line {}", path.display(), i + 1))
        })
        .collect()
}

/// Runs the evaluation of `dir` (a BEIR folder, or a folder holding `beir/`) with `knowledge`
/// (on an empty tenant `tenant_id`), retrieving `depth` chunks per query.
pub async fn retrieval(
    knowledge: &Knowledge,
    tenant_id: &str,
    dir: &Path,
    depth: usize,
) -> anyhow::Result<Report> {
    let dir = if dir.join("beir").is_dir() {
        dir.join("beir")
    } else {
        dir.to_path_buf()
    };
    let corpus: Vec<Doc> = jsonl(&dir.join("corpus.jsonl"))?;
    let queries: Vec<QueryLine> = jsonl(&dir.join("queries.jsonl"))?;
    let qrels_path = dir.join("qrels/test.tsv");
    let qrels_text = std::fs::read_to_string(&qrels_path)
        .with_context(|| format!("reading {}", qrels_path.display()))?;
    let mut relevant: HashMap<String, HashSet<String>> = HashMap::new();
    for line in qrels_text.lines().skip(1) {
        let mut cols = line.split('\t');
        if let (Some(q), Some(d), Some(score)) = (cols.next(), cols.next(), cols.next())
            && score.trim().parse::<f64>().unwrap_or(0.0) > 0.0
        {
            relevant
                .entry(q.to_owned())
                .or_default()
                .insert(d.to_owned());
        }
    }

    let started = Instant::now();
    let mut by_document: HashMap<String, String> = HashMap::new();
    let mut chunks = 0;
    for doc in &corpus {
        let ingested = knowledge
            .ingest(
                tenant_id,
                Upload {
                    title: Some(doc.title.clone()).filter(|t| !t.is_empty()),
                    content: doc.text.clone(),
                    format: Format::Text,
                    source: Some(doc.id.clone()),
                },
            )
            .await
            .with_context(|| format!("ingesting {}", doc.id))?;
        chunks += ingested.chunks;
        by_document.insert(ingested.document_id, doc.id.clone());
    }
    let ingest_seconds = started.elapsed().as_secs_f64();

    let (mut hit1, mut hit5, mut rr) = (0.0, 0.0, 0.0);
    let mut latencies: Vec<Duration> = Vec::new();
    let mut evaluated = 0;
    for q in &queries {
        let Some(wanted) = relevant.get(&q.id) else {
            continue;
        };
        evaluated += 1;
        let t = Instant::now();
        let hits = knowledge.search(tenant_id, &q.text, depth).await?;
        latencies.push(t.elapsed());
        // Documents in the order their best chunk ranks.
        let mut ranked: Vec<&str> = Vec::new();
        for h in &hits {
            if let Some(id) = by_document.get(&h.document_id)
                && !ranked.contains(&id.as_str())
            {
                ranked.push(id);
            }
        }
        if let Some(rank) = ranked.iter().position(|d| wanted.contains(*d)) {
            if rank < 1 {
                hit1 += 1.0;
            }
            if rank < 5 {
                hit5 += 1.0;
            }
            if rank < 10 {
                rr += 1.0 / (rank as f64 + 1.0);
            }
        }
    }
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len().saturating_sub(1)) as f64 * p).round() as usize)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let n = evaluated.max(1) as f64;
    Ok(Report {
        mode: knowledge.mode(),
        documents: corpus.len(),
        chunks,
        queries: evaluated,
        recall_at_1: hit1 / n,
        recall_at_5: hit5 / n,
        mrr_at_10: rr / n,
        ingest_seconds,
        query_p50_ms: pct(0.5),
        query_p99_ms: pct(0.99),
    })
}
