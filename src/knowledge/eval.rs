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

/// A BEIR-style set: the corpus, the questions, and the relevant documents of each question.
struct BeirSet {
    corpus: Vec<Doc>,
    queries: Vec<QueryLine>,
    relevant: HashMap<String, HashSet<String>>,
}

impl BeirSet {
    /// Reads `dir` (a BEIR folder, or a folder holding `beir/`).
    fn read(dir: &Path) -> anyhow::Result<BeirSet> {
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
        Ok(BeirSet {
            corpus,
            queries,
            relevant,
        })
    }
}

/// Runs the evaluation of `dir` (a BEIR folder, or a folder holding `beir/`) with `knowledge`
/// (on an empty tenant `tenant_id`), retrieving `depth` chunks per query.
pub async fn retrieval(
    knowledge: &Knowledge,
    tenant_id: &str,
    dir: &Path,
    depth: usize,
) -> anyhow::Result<Report> {
    let BeirSet {
        corpus,
        queries,
        relevant,
    } = BeirSet::read(dir)?;

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

/// What `switchboard eval answers` measured: whether the bot keeps "I don't know" for what its
/// knowledge does not cover, and still finds what it does.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AnswersReport {
    /// `bm25` or `hybrid`.
    pub mode: String,
    /// The floor the main figures use (the tenant default).
    pub min_similarity: f64,
    pub documents: usize,
    pub chunks: i64,
    /// On-topic questions (with a relevant document): the share whose relevant document is
    /// among the documents of the (at most) 5 passages the bot answers from, and the share that
    /// got no passage at all (`no_answer`).
    pub on_topic: usize,
    pub recall_at_5: f64,
    pub on_topic_no_answer: f64,
    /// The same with the corpus ingested without its titles (the text alone).
    pub untitled_recall_at_5: f64,
    pub untitled_no_answer: f64,
    /// Off-topic questions: the share answered `no_answer` (no passage passed the floor).
    pub off_topic: usize,
    pub off_topic_no_answer: f64,
    /// The off-topic questions that still found a passage (at most 20), for reading.
    pub off_topic_answered: Vec<String>,
    /// The same figures for other floors (hybrid only).
    pub sweep: Vec<SweepRow>,
    pub ingest_seconds: f64,
    pub query_p50_ms: f64,
    pub query_p99_ms: f64,
    /// With a language model: answers written for a sample of on-topic questions.
    pub generated: Option<GeneratedReport>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SweepRow {
    pub min_similarity: f64,
    pub off_topic_no_answer: f64,
    pub recall_at_5: f64,
    pub untitled_recall_at_5: f64,
}

/// Answers written by the model, judged by the grounding check.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GeneratedReport {
    pub answers: usize,
    /// Written by the model (not a fallback or no answer).
    pub written: usize,
    /// Of the written ones: those that cite a source, and those whose checked sentences the
    /// cited passages support (within the tenant's allowance).
    pub citing: usize,
    pub grounded: usize,
    /// Of all checked sentences in written answers that cite: the share supported.
    pub sentences_checked: usize,
    pub sentences_supported_share: f64,
}

/// One question's retrieval, kept to apply other floors to.
struct Outcome {
    best: Option<f32>,
    /// Candidates in fused order: (evaluation document id, BM25 score, similarity).
    candidates: Vec<(Option<String>, Option<f32>, Option<f32>)>,
    hybrid: bool,
}

impl Outcome {
    /// The evaluation ids of the documents the bot would answer from under `floor` (from its
    /// best `k` passages).
    fn documents(&self, floor: &super::settings::Relevance, k: usize) -> Vec<String> {
        let mut docs: Vec<String> = Vec::new();
        let mut passed = 0;
        for (doc, lexical, similarity) in &self.candidates {
            let pass = !self.hybrid
                || floor.decide(*lexical, *similarity, self.best)
                    != super::settings::Decision::Fails;
            if !pass {
                continue;
            }
            passed += 1;
            if let Some(doc) = doc
                && !docs.contains(doc)
            {
                docs.push(doc.clone());
            }
            if passed == k {
                break;
            }
        }
        // A passage whose document is not in the map still counts as an answer.
        if passed > 0 && docs.is_empty() {
            docs.push(String::new());
        }
        docs
    }
}

/// Runs the answers evaluation: the corpus of `dir` (BEIR) is ingested twice — with its titles
/// into `tenant`, without them into `untitled_tenant` — then every on-topic question of `dir`
/// and every off-topic question of `off_topic` (JSON lines with `text`) is retrieved for. With
/// `responder`, `generate` on-topic questions (spread over the set) are answered by it.
pub async fn answers(
    knowledge: &Knowledge,
    tenant: &str,
    untitled_tenant: &str,
    dir: &Path,
    off_topic: &Path,
    responder: Option<&crate::answer::KnowledgeResponder>,
    generate: usize,
) -> anyhow::Result<AnswersReport> {
    const K: usize = 5;
    let BeirSet {
        corpus,
        queries,
        relevant,
    } = BeirSet::read(dir)?;
    let off: Vec<QueryLine> = jsonl(off_topic)?;

    let started = Instant::now();
    let mut by_document: HashMap<String, String> = HashMap::new();
    let mut chunks = 0;
    for (tenant_id, titled) in [(tenant, true), (untitled_tenant, false)] {
        let uploads: Vec<Upload> = corpus
            .iter()
            .map(|doc| Upload {
                title: Some(if titled {
                    doc.title.clone()
                } else {
                    // Not empty (that would fall back to the source name): a neutral title.
                    "Document".to_owned()
                })
                .filter(|t| !t.is_empty()),
                content: doc.text.clone(),
                format: Format::Text,
                source: Some(doc.id.clone()),
            })
            .collect();
        for batch in uploads.chunks(16) {
            let ingested = knowledge.ingest_many(tenant_id, batch.to_vec()).await?;
            for (doc, outcome) in batch.iter().zip(ingested) {
                let outcome = outcome.with_context(|| format!("ingesting {:?}", doc.source))?;
                if titled {
                    chunks += outcome.chunks;
                }
                if let Some(source) = &doc.source {
                    by_document.insert(outcome.document_id, source.clone());
                }
            }
        }
    }
    let ingest_seconds = started.elapsed().as_secs_f64();

    let mut latencies: Vec<Duration> = Vec::new();
    let mut mode = knowledge.mode().to_owned();
    let mut min_similarity = 0.0;
    let mut retrieve = async |tenant_id: &str, text: &str| -> anyhow::Result<Outcome> {
        let t = Instant::now();
        let r = knowledge.retrieve(tenant_id, text, K).await?;
        latencies.push(t.elapsed());
        mode = r.mode.clone();
        min_similarity = r.relevance.min_similarity;
        Ok(Outcome {
            best: r.best_similarity,
            hybrid: r.mode == "hybrid",
            candidates: r
                .candidates
                .iter()
                .map(|c| {
                    (
                        by_document.get(&c.document_id).cloned(),
                        c.lexical_score,
                        c.similarity,
                    )
                })
                .collect(),
        })
    };
    let mut on_topic: Vec<(HashSet<String>, Outcome, Outcome)> = Vec::new();
    for q in &queries {
        let Some(wanted) = relevant.get(&q.id) else {
            continue;
        };
        let titled = retrieve(tenant, &q.text).await?;
        let untitled = retrieve(untitled_tenant, &q.text).await?;
        on_topic.push((wanted.clone(), titled, untitled));
    }
    let mut off_topic_outcomes: Vec<(String, Outcome)> = Vec::new();
    for q in &off {
        off_topic_outcomes.push((q.text.clone(), retrieve(tenant, &q.text).await?));
    }

    let relevance = knowledge.settings(tenant).await?.relevance;
    let figures = |floor: &super::settings::Relevance| {
        let n = on_topic.len().max(1) as f64;
        let (mut hit, mut none, mut hit_u, mut none_u) = (0.0, 0.0, 0.0, 0.0);
        for (wanted, titled, untitled) in &on_topic {
            let docs = titled.documents(floor, K);
            if docs.is_empty() {
                none += 1.0;
            }
            if docs.iter().any(|d| wanted.contains(d)) {
                hit += 1.0;
            }
            let docs = untitled.documents(floor, K);
            if docs.is_empty() {
                none_u += 1.0;
            }
            if docs.iter().any(|d| wanted.contains(d)) {
                hit_u += 1.0;
            }
        }
        let off_none = off_topic_outcomes
            .iter()
            .filter(|(_, o)| o.documents(floor, K).is_empty())
            .count() as f64
            / off_topic_outcomes.len().max(1) as f64;
        (hit / n, none / n, hit_u / n, none_u / n, off_none)
    };
    let (recall_at_5, on_topic_no_answer, untitled_recall_at_5, untitled_no_answer, off_none) =
        figures(&relevance);
    let off_topic_answered = off_topic_outcomes
        .iter()
        .filter(|(_, o)| !o.documents(&relevance, K).is_empty())
        .map(|(text, _)| text.clone())
        .take(20)
        .collect();
    let hybrid = mode == "hybrid";
    let sweep = if hybrid {
        [0.20f64, 0.25, 0.30, 0.35, 0.40, 0.45, 0.50]
            .into_iter()
            .map(|m| {
                let floor = super::settings::Relevance {
                    min_similarity: m,
                    ..relevance
                };
                let (r, _, ru, _, off) = figures(&floor);
                SweepRow {
                    min_similarity: m,
                    off_topic_no_answer: off,
                    recall_at_5: r,
                    untitled_recall_at_5: ru,
                }
            })
            .collect()
    } else {
        Vec::new()
    };

    let generated = match responder {
        Some(responder) if generate > 0 => {
            Some(generate_answers(responder, tenant, &queries, &relevant, generate).await?)
        }
        _ => None,
    };
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len().saturating_sub(1)) as f64 * p).round() as usize)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    Ok(AnswersReport {
        mode,
        min_similarity,
        documents: corpus.len(),
        chunks,
        on_topic: on_topic.len(),
        recall_at_5,
        on_topic_no_answer,
        untitled_recall_at_5,
        untitled_no_answer,
        off_topic: off_topic_outcomes.len(),
        off_topic_no_answer: off_none,
        off_topic_answered,
        sweep,
        ingest_seconds,
        query_p50_ms: pct(0.5),
        query_p99_ms: pct(0.99),
        generated,
    })
}

/// Answers `count` on-topic questions, spread over the set, and judges them.
async fn generate_answers(
    responder: &crate::answer::KnowledgeResponder,
    tenant: &str,
    queries: &[QueryLine],
    relevant: &HashMap<String, HashSet<String>>,
    count: usize,
) -> anyhow::Result<GeneratedReport> {
    use crate::answer::{AnswerKind, Responder, Turn};
    let asked: Vec<&QueryLine> = queries
        .iter()
        .filter(|q| relevant.contains_key(&q.id))
        .collect();
    let step = (asked.len() / count.max(1)).max(1);
    let mut report = GeneratedReport {
        answers: 0,
        written: 0,
        citing: 0,
        grounded: 0,
        sentences_checked: 0,
        sentences_supported_share: 0.0,
    };
    let mut supported = 0usize;
    for (i, q) in asked.iter().step_by(step).take(count).enumerate() {
        let turn = Turn {
            tenant_id: tenant.to_owned(),
            conversation_id: format!("eval-{i}"),
            message_id: format!("eval-{i}"),
            seq: 1,
            channel: "eval".to_owned(),
            text: q.text.clone(),
        };
        let answer = responder.respond(&turn).await?;
        report.answers += 1;
        let Some(g) = &answer.grounding else { continue };
        // Written by the model: answered, or replaced by the quote because ungrounded.
        report.written += 1;
        if !g.cited.is_empty() {
            report.citing += 1;
            report.sentences_checked += g.checked;
            supported += g.checked - g.unsupported;
        }
        if g.grounded && answer.kind == AnswerKind::Answered {
            report.grounded += 1;
        }
    }
    report.sentences_supported_share = if report.sentences_checked == 0 {
        0.0
    } else {
        supported as f64 / report.sentences_checked as f64
    };
    Ok(report)
}
