//! Knowledge: creators' documents in, the chunks the bot answers from out.
//!
//! Where it sits: a side path (STYLE.md). Ingestion (`POST /v1/knowledge/documents`,
//! `switchboard knowledge ingest`, the demo content at first start) extracts text, cuts it into
//! token-budgeted chunks that follow the document's headings ([`chunk`]), stores document and
//! chunks in SQL (the source of truth), then indexes each chunk's BM25 sparse vector in the
//! tenant's vector shard ([`vectors`]). Retrieval ([`Knowledge::search`]) is one code path for
//! the bot, the retrieval debugger (`GET /v1/knowledge/search`) and the evaluation command, so
//! what is measured is what answers. In hybrid mode ([`embed`]: an embedding model in this
//! process by default) the BM25 and embedding rankings are fused by rank here, and a relevance
//! floor ([`settings::Relevance`]) keeps off-topic questions on the honest "no answer" path.
//!
//! BM25 uses Qdrant's own embedder (`qdrant_edge::bm25_embed`: word tokenizer, English stop
//! words and stemming, murmur3 token ids; the IDF is applied by the index at query time), so the
//! same vectors would serve a Qdrant server.

pub mod chunk;
pub mod embed;
pub mod eval;
pub mod extract;
pub mod files;
pub mod pdf_worker;
pub mod qdrant_server;
pub mod settings;
pub mod vectors;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use qdrant_edge::bm25_embed::{EdgeBm25, EdgeBm25Config};
use qdrant_edge::external::ordered_float::NotNan;
use sha2::{Digest, Sha256};

use crate::store::Store;
use crate::store::knowledge::{NewChunk, NewDocument, Stored, StoredChunk};
use chunk::ChunkConfig;
use extract::Format;
use vectors::{ChunkPoint, Sparse, VectorIndex, VectorQuery};

/// Retrieval and chunking settings.
#[derive(Debug, Clone, Copy)]
pub struct KnowledgeConfig {
    pub chunk: ChunkConfig,
    /// Chunks retrieved per question.
    pub k: usize,
    /// Hits scoring below this (BM25 × IDF) are left out; 0 keeps every match.
    pub min_score: f32,
}

impl Default for KnowledgeConfig {
    fn default() -> Self {
        KnowledgeConfig {
            chunk: ChunkConfig::default(),
            k: 5,
            min_score: 0.0,
        }
    }
}

/// A document to ingest.
#[derive(Debug, Clone)]
pub struct Upload {
    /// Shown in citations; found in the document (or the file name) when absent.
    pub title: Option<String>,
    pub content: String,
    pub format: Format,
    /// What identifies the document for replacement: the file path, or the title.
    pub source: Option<String>,
}

/// What ingesting a document did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Ingested {
    pub document_id: String,
    pub chunks: i64,
    /// `created`, `replaced` or `unchanged`.
    pub status: &'static str,
}

/// One retrieved chunk.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Hit {
    pub document_id: String,
    pub title: String,
    pub chunk: i64,
    pub heading: String,
    pub text: String,
    /// The rank-fused score (hybrid), or the BM25 score (BM25 alone).
    pub score: f32,
    /// Cosine similarity of the chunk's embedding to the question's, when it was among the
    /// nearest (hybrid).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub similarity: Option<f32>,
}

/// A chunk retrieval considered, and whether it passed the relevance floor (the retrieval
/// debugger shows these).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Candidate {
    pub document_id: String,
    pub title: String,
    pub chunk: i64,
    pub heading: String,
    /// Its place among the BM25 matches (1 = best), and the BM25 score.
    pub lexical_rank: Option<usize>,
    pub lexical_score: Option<f32>,
    /// Its place among the nearest embeddings (1 = nearest), and the cosine similarity.
    pub dense_rank: Option<usize>,
    pub similarity: Option<f32>,
    /// The rank-fused score (RRF).
    pub fused: f32,
    pub passed: bool,
    /// Why it passed or not, in words.
    pub why: String,
}

/// What retrieval found for a question, and why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Retrieval {
    /// `bm25`, `hybrid`, or `bm25 (embedding failed)`.
    pub mode: String,
    /// The floor applied (hybrid).
    pub relevance: settings::Relevance,
    /// The best similarity of any chunk to the question; below the floor the question is off
    /// the knowledge's topic.
    pub best_similarity: Option<f32>,
    /// What the bot answers from, best first.
    pub hits: Vec<Hit>,
    /// Every chunk considered, best fused first.
    pub candidates: Vec<Candidate>,
}

#[derive(Debug, thiserror::Error)]
pub enum KnowledgeError {
    #[error("the document has no text to index")]
    Empty,
    /// More text than one document may have ([`pdf_worker::MAX_TEXT_BYTES`]).
    #[error("the document's text is larger than {} MiB; split it into several documents", pdf_worker::MAX_TEXT_BYTES / (1024 * 1024))]
    TooLarge,
    #[error(transparent)]
    Store(#[from] sqlx::Error),
    #[error(transparent)]
    Index(#[from] anyhow::Error),
    /// The embedding model did not embed the chunks: the document is stored, and indexed at
    /// the next start (or upload) when the model answers.
    #[error("the embedding model failed: {0}")]
    Embedding(crate::llm::LlmError),
}

/// How long a question's embedding may take before retrieval goes on with BM25 alone.
const QUERY_EMBED_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Chunks per embedding request.
const EMBED_BATCH: usize = 32;
/// How long a tenant's settings are used before they are read again (a save through this
/// process applies at once).
const SETTINGS_TTL: Duration = Duration::from_secs(10);

/// Tenants' settings and when each was read.
type SettingsCache = HashMap<String, (Instant, Arc<settings::Settings>)>;

/// The knowledge service. Cheap to clone.
#[derive(Clone)]
pub struct Knowledge {
    store: Store,
    index: Arc<dyn VectorIndex>,
    bm25: Arc<EdgeBm25>,
    config: KnowledgeConfig,
    /// Dense retrieval beside BM25, when an embedding model is configured (and the index was
    /// built for it).
    embedder: Option<Arc<dyn crate::llm::Embedder>>,
    /// Reads uploaded PDFs in bounded child processes.
    pdf: pdf_worker::PdfReader,
    /// Tenants' settings, as last read.
    settings: Arc<Mutex<SettingsCache>>,
}

impl Knowledge {
    pub fn new(
        store: Store,
        index: Arc<dyn VectorIndex>,
        config: KnowledgeConfig,
    ) -> anyhow::Result<Knowledge> {
        // Chunks are ~256 tokens; after stop words about 100 terms remain: the average length
        // BM25 normalizes against.
        let bm25 = EdgeBm25::new(EdgeBm25Config {
            avg_len: NotNan::new(100.0)?,
            ..EdgeBm25Config::default()
        })
        .map_err(|e| anyhow::anyhow!("BM25 embedder: {e:?}"))?;
        Ok(Knowledge {
            store,
            index,
            bm25: Arc::new(bm25),
            config,
            embedder: None,
            pdf: pdf_worker::PdfReader::default(),
            settings: Arc::default(),
        })
    }

    /// With PDFs read by `reader` (tests name the `switchboard` binary cargo built).
    pub fn with_pdf_reader(mut self, reader: pdf_worker::PdfReader) -> Knowledge {
        self.pdf = reader;
        self
    }

    /// The text layer of an uploaded PDF, read where a hostile file cannot hurt the gateway.
    pub async fn pdf_text(&self, bytes: Vec<u8>) -> Result<String, String> {
        self.pdf.text(bytes).await
    }

    /// Embeds chunks and questions with `embedder` (the index must have been made for its
    /// vectors: `EdgeIndex::with_dense`).
    pub fn with_embedder(mut self, embedder: Arc<dyn crate::llm::Embedder>) -> Knowledge {
        self.embedder = Some(embedder);
        self
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn config(&self) -> KnowledgeConfig {
        self.config
    }

    pub fn describe(&self) -> String {
        match &self.embedder {
            Some(e) => format!(
                "{}; hybrid retrieval: BM25 + embeddings of {} fused by rank (RRF), relevance floor: similarity ≥ {} unless the tenant sets another",
                self.index.describe(),
                e.model(),
                settings::DEFAULT_MIN_SIMILARITY
            ),
            None => format!(
                "{}; BM25 retrieval alone (no embedding model: SWITCHBOARD_EMBED_MODEL)",
                self.index.describe()
            ),
        }
    }

    /// The retrieval mode, for reports: `bm25` or `hybrid`.
    pub fn mode(&self) -> &'static str {
        if self.embedder.is_some() {
            "hybrid"
        } else {
            "bm25"
        }
    }

    /// Ingests one document: stored once per content (re-uploads change nothing), replacing the
    /// chunks of an earlier version from the same source.
    pub async fn ingest(
        &self,
        tenant_id: &str,
        upload: Upload,
    ) -> Result<Ingested, KnowledgeError> {
        self.ingest_many(tenant_id, vec![upload])
            .await?
            .pop()
            .unwrap_or(Err(KnowledgeError::Empty))
    }

    /// Ingests several documents with one SQL transaction and one vector write for all of them
    /// (folders, bulk imports). Per document: what happened, or why it was refused (an empty
    /// document does not stop the others; a store or index failure fails the batch).
    pub async fn ingest_many(
        &self,
        tenant_id: &str,
        uploads: Vec<Upload>,
    ) -> Result<Vec<Result<Ingested, KnowledgeError>>, KnowledgeError> {
        let chunk_config = self.config.chunk;
        let prepared = tokio::task::spawn_blocking(move || {
            uploads
                .into_iter()
                .map(|upload| prepare(upload, chunk_config))
                .collect::<Vec<_>>()
        })
        .await
        .map_err(anyhow::Error::from)?;
        let docs: Vec<(NewDocument<'_>, Vec<NewChunk>)> = prepared
            .iter()
            .flatten()
            .map(|p| {
                (
                    NewDocument {
                        tenant_id,
                        title: &p.title,
                        source_key: &p.source,
                        format: p.format.as_str(),
                        content_hash: &p.hash,
                    },
                    p.chunks.clone(),
                )
            })
            .collect();
        let stored = self.store.store_documents(&docs).await?;
        let mut outcomes = stored.into_iter();
        let mut to_index = Vec::new();
        let mut out = Vec::with_capacity(prepared.len());
        for p in &prepared {
            let p = match p {
                Ok(p) => p,
                Err(refusal) => {
                    out.push(Err((*refusal).into()));
                    continue;
                }
            };
            let outcome = outcomes
                .next()
                .ok_or_else(|| anyhow::anyhow!("one stored outcome per document"))?;
            let (document_id, chunks, status) = match outcome {
                Stored::Unchanged {
                    document_id,
                    chunks,
                } => (document_id, chunks, "unchanged"),
                Stored::Created { document_id } => {
                    push_unique(&mut to_index, &document_id);
                    (document_id, p.chunks.len() as i64, "created")
                }
                Stored::Replaced { document_id, .. } => {
                    self.index.delete_document(tenant_id, &document_id).await?;
                    push_unique(&mut to_index, &document_id);
                    (document_id, p.chunks.len() as i64, "replaced")
                }
            };
            out.push(Ok(Ingested {
                document_id,
                chunks,
                status,
            }));
        }
        self.index_documents(tenant_id, &to_index).await?;
        Ok(out)
    }

    /// (Re)indexes stored documents' chunks (one vector write) and marks them indexed.
    async fn index_documents(
        &self,
        tenant_id: &str,
        document_ids: &[String],
    ) -> Result<(), KnowledgeError> {
        if document_ids.is_empty() {
            return Ok(());
        }
        let mut chunks = Vec::new();
        for id in document_ids {
            chunks.extend(self.store.document_chunks(id).await?);
        }
        let mut dense: Vec<Option<Vec<f32>>> = vec![None; chunks.len()];
        if let Some(embedder) = &self.embedder {
            let texts: Vec<String> = chunks.iter().map(indexed_text).collect();
            let mut at = 0;
            for batch in texts.chunks(EMBED_BATCH) {
                let vectors = embedder
                    .embed(batch)
                    .await
                    .map_err(KnowledgeError::Embedding)?;
                for v in vectors {
                    dense[at] = Some(v);
                    at += 1;
                }
            }
        }
        let bm25 = self.bm25.clone();
        let points = tokio::task::spawn_blocking(move || {
            chunks
                .iter()
                .zip(dense)
                .map(|(c, dense)| ChunkPoint {
                    id: c.id.clone(),
                    document_id: c.document_id.clone(),
                    chunk: c.idx,
                    sparse: to_sparse(bm25.embed_document(&indexed_text(c))),
                    dense,
                })
                .collect::<Vec<_>>()
        })
        .await
        .map_err(anyhow::Error::from)?;
        self.index.upsert(tenant_id, points).await?;
        self.store.mark_indexed(document_ids).await?;
        Ok(())
    }

    /// Indexes documents stored but not (fully) indexed — after a crash between the two.
    pub async fn reindex_pending(&self) -> Result<usize, KnowledgeError> {
        let pending = self.store.unindexed_documents().await?;
        for (tenant_id, document_id) in &pending {
            self.index.delete_document(tenant_id, document_id).await?;
            self.index_documents(tenant_id, std::slice::from_ref(document_id))
                .await?;
        }
        Ok(pending.len())
    }

    /// Deletes a tenant's document: its vectors, then its rows. `false` if there was none.
    pub async fn delete(&self, tenant_id: &str, document_id: &str) -> Result<bool, KnowledgeError> {
        if !self.store.has_document(tenant_id, document_id).await? {
            return Ok(false);
        }
        self.index.delete_document(tenant_id, document_id).await?;
        Ok(self.store.delete_document(tenant_id, document_id).await?)
    }

    /// Whether the tenant has any document.
    pub async fn has_documents(&self, tenant_id: &str) -> Result<bool, KnowledgeError> {
        Ok(self.store.document_count(tenant_id).await? > 0)
    }

    /// The embedding model, when retrieval is hybrid.
    pub fn embedder(&self) -> Option<&Arc<dyn crate::llm::Embedder>> {
        self.embedder.as_ref()
    }

    /// A tenant's settings (the defaults when it saved none; a stored value that no longer
    /// parses is logged and replaced by the defaults rather than failing every answer).
    pub async fn settings(
        &self,
        tenant_id: &str,
    ) -> Result<Arc<settings::Settings>, KnowledgeError> {
        if let Some((at, s)) = lock(&self.settings).get(tenant_id)
            && at.elapsed() < SETTINGS_TTL
        {
            return Ok(s.clone());
        }
        let parsed = match self.store.knowledge_settings(tenant_id).await? {
            None => settings::Settings::default(),
            Some(json) => settings::Settings::parse(&json).unwrap_or_else(|e| {
                tracing::warn!(tenant = %tenant_id, error = %e, "stored knowledge settings do not parse; using the defaults");
                settings::Settings::default()
            }),
        };
        let parsed = Arc::new(parsed);
        lock(&self.settings).insert(tenant_id.to_owned(), (Instant::now(), parsed.clone()));
        Ok(parsed)
    }

    /// Saves a tenant's settings (already checked by [`settings::Settings::parse`]).
    pub async fn put_settings(
        &self,
        tenant_id: &str,
        settings: settings::Settings,
    ) -> Result<(), KnowledgeError> {
        let json = serde_json::to_string(&settings).map_err(anyhow::Error::from)?;
        self.store.put_knowledge_settings(tenant_id, &json).await?;
        lock(&self.settings).insert(tenant_id.to_owned(), (Instant::now(), Arc::new(settings)));
        Ok(())
    }

    /// The tenant's best chunks for `query`, best first: exactly what the bot retrieves.
    pub async fn search(
        &self,
        tenant_id: &str,
        query: &str,
        k: usize,
    ) -> Result<Vec<Hit>, KnowledgeError> {
        Ok(self.retrieve(tenant_id, query, k).await?.hits)
    }

    /// Retrieval with its reasons: the chunks the bot answers from, and every chunk considered
    /// with why it passed the relevance floor or not.
    ///
    /// BM25 and (with a model) the embedding side are asked separately, `depth` deep, and fused
    /// here by rank (RRF, `vectors::RRF_K`), so each chunk's BM25 score and cosine similarity
    /// are known and the floor ([`settings::Relevance`]) can be applied to them.
    pub async fn retrieve(
        &self,
        tenant_id: &str,
        query: &str,
        k: usize,
    ) -> Result<Retrieval, KnowledgeError> {
        let relevance = self.settings(tenant_id).await?.relevance;
        let sparse = to_sparse(self.bm25.embed_query(query));
        let min = (self.config.min_score > 0.0).then_some(self.config.min_score);
        let depth = (k * 4).max(20);
        let (dense, mode) = match &self.embedder {
            None => (None, "bm25".to_owned()),
            Some(embedder) => {
                let input = [query.to_owned()];
                match tokio::time::timeout(QUERY_EMBED_TIMEOUT, embedder.embed(&input)).await {
                    Ok(Ok(mut vectors)) => (vectors.pop(), "hybrid".to_owned()),
                    outcome => {
                        let why = match outcome {
                            Ok(Err(e)) => e.to_string(),
                            _ => format!("no answer within {QUERY_EMBED_TIMEOUT:?}"),
                        };
                        tracing::warn!(error = %why, "embedding the question failed; retrieving with BM25 alone");
                        metrics::counter!("switchboard_retrieval_degraded_total").increment(1);
                        (None, "bm25 (embedding failed)".to_owned())
                    }
                }
            }
        };
        let lexical = if sparse.indices.is_empty() {
            Vec::new()
        } else {
            let q = VectorQuery {
                sparse: sparse.clone(),
                dense: None,
            };
            self.index.search(tenant_id, &q, depth, min).await?
        };
        let semantic = match dense {
            Some(d) if !d.is_empty() => {
                let q = VectorQuery {
                    sparse: Sparse {
                        indices: Vec::new(),
                        values: Vec::new(),
                    },
                    dense: Some(d),
                };
                self.index.search(tenant_id, &q, depth, None).await?
            }
            _ => Vec::new(),
        };
        let hybrid = mode == "hybrid";
        let judged = judge(&lexical, &semantic, hybrid, relevance);
        let ids: Vec<String> = judged.iter().map(|j| j.id.clone()).collect();
        let chunks = self.store.chunks_by_id(tenant_id, &ids).await?;
        let mut candidates = Vec::with_capacity(judged.len());
        let mut hits = Vec::new();
        // In fused order; a vector without its SQL row (a delete half done) is skipped.
        for j in &judged {
            let Some(c) = chunks.iter().find(|c| c.id == j.id) else {
                continue;
            };
            if j.passed && hits.len() < k {
                hits.push(Hit {
                    document_id: c.document_id.clone(),
                    title: c.title.clone(),
                    chunk: c.idx,
                    heading: c.heading.clone(),
                    text: c.text.clone(),
                    score: if hybrid {
                        j.fused
                    } else {
                        j.lexical_score.unwrap_or(0.0)
                    },
                    similarity: j.similarity,
                });
            }
            candidates.push(Candidate {
                document_id: c.document_id.clone(),
                title: c.title.clone(),
                chunk: c.idx,
                heading: c.heading.clone(),
                lexical_rank: j.lexical_rank,
                lexical_score: j.lexical_score,
                dense_rank: j.dense_rank,
                similarity: j.similarity,
                fused: j.fused,
                passed: j.passed,
                why: j.why.clone(),
            });
        }
        Ok(Retrieval {
            mode,
            relevance,
            best_similarity: semantic.first().map(|s| s.score),
            hits,
            candidates,
        })
    }
}

/// One chunk's standing after fusion and the floor.
#[derive(Debug, Clone, PartialEq)]
struct Judged {
    id: String,
    lexical_rank: Option<usize>,
    lexical_score: Option<f32>,
    dense_rank: Option<usize>,
    similarity: Option<f32>,
    fused: f32,
    passed: bool,
    why: String,
}

/// Fuses the BM25 and embedding rankings by rank (RRF) and applies the relevance floor, best
/// fused first. Without the embedding side (`hybrid` false) every BM25 match passes.
fn judge(
    lexical: &[vectors::ScoredChunk],
    semantic: &[vectors::ScoredChunk],
    hybrid: bool,
    floor: settings::Relevance,
) -> Vec<Judged> {
    let rrf = |rank: usize| 1.0 / (vectors::RRF_K as f32 + rank as f32);
    let mut out: Vec<Judged> = Vec::new();
    for (i, s) in lexical.iter().enumerate() {
        out.push(Judged {
            id: s.id.clone(),
            lexical_rank: Some(i + 1),
            lexical_score: Some(s.score),
            dense_rank: None,
            similarity: None,
            fused: rrf(i + 1),
            passed: false,
            why: String::new(),
        });
    }
    for (i, s) in semantic.iter().enumerate() {
        match out.iter_mut().find(|j| j.id == s.id) {
            Some(j) => {
                j.dense_rank = Some(i + 1);
                j.similarity = Some(s.score);
                j.fused += rrf(i + 1);
            }
            None => out.push(Judged {
                id: s.id.clone(),
                lexical_rank: None,
                lexical_score: None,
                dense_rank: Some(i + 1),
                similarity: Some(s.score),
                fused: rrf(i + 1),
                passed: false,
                why: String::new(),
            }),
        }
    }
    let best = semantic.first().map(|s| s.score);
    let min = floor.min_similarity;
    for j in &mut out {
        let decision = if hybrid {
            floor.decide(j.lexical_score, j.similarity, best)
        } else {
            settings::Decision::StrongWords
        };
        j.passed = decision != settings::Decision::Fails;
        j.why = match decision {
            _ if !hybrid => "matches words of the question (BM25 alone)".to_owned(),
            settings::Decision::Near => format!(
                "near the question in meaning ({:.3} ≥ {min:.3})",
                j.similarity.unwrap_or_default()
            ),
            settings::Decision::StrongWords => format!(
                "a strong word match (BM25 {:.2} ≥ {:.2})",
                j.lexical_score.unwrap_or_default(),
                floor.min_lexical.unwrap_or_default()
            ),
            settings::Decision::OnTopicWords => format!(
                "matches words of the question, and the question is on the knowledge's topic (best similarity {:.3} ≥ {min:.3})",
                best.unwrap_or_default()
            ),
            settings::Decision::Fails => {
                let near = match j.similarity {
                    Some(sim) => format!("{sim:.3} < {min:.3}"),
                    None => "not among the nearest".to_owned(),
                };
                let topic = match best {
                    Some(b) if f64::from(b) < min => format!(
                        "; no passage is near the question (best {b:.3}): off the knowledge's topic"
                    ),
                    _ => String::new(),
                };
                format!("not near the question in meaning ({near}){topic}")
            }
        };
    }
    out.sort_by(|a, b| b.fused.total_cmp(&a.fused));
    out
}

/// A document ready to store: text extracted, chunked, hashed.
struct Prepared {
    title: String,
    source: String,
    format: Format,
    hash: String,
    chunks: Vec<NewChunk>,
}

/// Why a document was refused before it was stored.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    Empty,
    TooLarge,
}

impl From<Refusal> for KnowledgeError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Empty => KnowledgeError::Empty,
            Refusal::TooLarge => KnowledgeError::TooLarge,
        }
    }
}

/// Extracts, chunks and hashes an upload (CPU work, run on the blocking pool). NUL characters
/// are dropped from the text, title and source (PostgreSQL cannot store them in text, and they
/// carry nothing readable), so both stores keep the same document.
fn prepare(upload: Upload, config: ChunkConfig) -> Result<Prepared, Refusal> {
    let format = upload.format;
    if upload.content.len() > 4 * pdf_worker::MAX_TEXT_BYTES {
        return Err(Refusal::TooLarge);
    }
    let (mut text, found_title) = extract::extract(&upload.content, format);
    if text.contains('\0') {
        text = text.replace('\0', "");
    }
    if text.len() > pdf_worker::MAX_TEXT_BYTES {
        return Err(Refusal::TooLarge);
    }
    let chunks = chunk::chunk(&text, config);
    if chunks.is_empty() {
        return Err(Refusal::Empty);
    }
    let without_nul = |s: String| s.replace('\0', "");
    let found_title = found_title.map(without_nul);
    let source = upload.source.map(without_nul);
    let title = upload
        .title
        .map(without_nul)
        .filter(|t| !t.trim().is_empty())
        .or(found_title)
        .or_else(|| source.as_deref().map(file_stem))
        .unwrap_or_else(|| "Untitled".to_owned());
    let hash = hex::encode(Sha256::digest(
        format!("{}\0{title}\0{text}", format.as_str()).as_bytes(),
    ));
    Ok(Prepared {
        source: source.unwrap_or_else(|| title.clone()),
        title,
        format,
        hash,
        chunks: chunks
            .iter()
            .map(|c| NewChunk {
                id: uuid::Uuid::now_v7().to_string(),
                heading: c.heading.clone(),
                text: c.text.clone(),
                tokens: c.tokens as i64,
            })
            .collect(),
    })
}

/// What BM25 sees of a chunk: the document's title and the heading path are part of it (a
/// question often names the topic, not the words of the answer).
fn indexed_text(c: &StoredChunk) -> String {
    format!("{}\n{}\n{}", c.title, c.heading, c.text)
}

fn to_sparse(v: qdrant_edge::SparseVector) -> Sparse {
    Sparse {
        indices: v.indices,
        values: v.values,
    }
}

fn push_unique(ids: &mut Vec<String>, id: &str) {
    if !ids.iter().any(|i| i == id) {
        ids.push(id.to_owned());
    }
}

fn file_stem(path: &str) -> String {
    let name = path.rsplit(['/', '\\']).next().unwrap_or(path);
    name.rsplit_once('.')
        .map_or(name, |(stem, _)| stem)
        .to_owned()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Knowledge {
    /// The vector index itself (searches show only chunks SQL still has; checks that the index
    /// follows SQL, e.g. after a delete, look here).
    pub fn index(&self) -> &Arc<dyn VectorIndex> {
        &self.index
    }
}
