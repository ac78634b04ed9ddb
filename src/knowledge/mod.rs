//! Knowledge: creators' documents in, the chunks the bot answers from out.
//!
//! Where it sits: a side path (STYLE.md). Ingestion (`POST /v1/knowledge/documents`,
//! `switchboard knowledge ingest`, the demo content at first start) extracts text, cuts it into
//! token-budgeted chunks that follow the document's headings ([`chunk`]), stores document and
//! chunks in SQL (the source of truth), then indexes each chunk's BM25 sparse vector in the
//! tenant's vector shard ([`vectors`]). Retrieval ([`Knowledge::search`]) is one code path for
//! the bot, the retrieval debugger (`GET /v1/knowledge/search`) and the evaluation command, so
//! what is measured is what answers.
//!
//! BM25 uses Qdrant's own embedder (`qdrant_edge::bm25_embed`: word tokenizer, English stop
//! words and stemming, murmur3 token ids; the IDF is applied by the index at query time), so the
//! same vectors would serve a Qdrant server.

pub mod chunk;
pub mod eval;
pub mod extract;
pub mod files;
pub mod pdf_worker;
pub mod qdrant_server;
pub mod vectors;

use std::sync::Arc;

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
    pub score: f32,
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
                "{}; hybrid retrieval: BM25 + embeddings of {} fused by rank (RRF)",
                self.index.describe(),
                e.model()
            ),
            None => format!("{}; BM25 retrieval", self.index.describe()),
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

    /// The tenant's best chunks for `query`, best first: exactly what the bot retrieves.
    pub async fn search(
        &self,
        tenant_id: &str,
        query: &str,
        k: usize,
    ) -> Result<Vec<Hit>, KnowledgeError> {
        let sparse = to_sparse(self.bm25.embed_query(query));
        let min = (self.config.min_score > 0.0).then_some(self.config.min_score);
        let dense = match &self.embedder {
            None => None,
            Some(embedder) => {
                let input = [query.to_owned()];
                match tokio::time::timeout(QUERY_EMBED_TIMEOUT, embedder.embed(&input)).await {
                    Ok(Ok(mut vectors)) => vectors.pop(),
                    outcome => {
                        let why = match outcome {
                            Ok(Err(e)) => e.to_string(),
                            _ => format!("no answer within {QUERY_EMBED_TIMEOUT:?}"),
                        };
                        tracing::warn!(error = %why, "embedding the question failed; retrieving with BM25 alone");
                        metrics::counter!("switchboard_retrieval_degraded_total").increment(1);
                        None
                    }
                }
            }
        };
        let vector_query = VectorQuery { sparse, dense };
        let scored = self.index.search(tenant_id, &vector_query, k, min).await?;
        let ids: Vec<String> = scored.iter().map(|s| s.id.clone()).collect();
        let chunks = self.store.chunks_by_id(tenant_id, &ids).await?;
        // In score order; a vector without its SQL row (a delete half done) is skipped.
        Ok(scored
            .iter()
            .filter_map(|s| {
                chunks.iter().find(|c| c.id == s.id).map(|c| Hit {
                    document_id: c.document_id.clone(),
                    title: c.title.clone(),
                    chunk: c.idx,
                    heading: c.heading.clone(),
                    text: c.text.clone(),
                    score: s.score,
                })
            })
            .collect())
    }
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

impl Knowledge {
    /// The vector index itself (searches show only chunks SQL still has; checks that the index
    /// follows SQL, e.g. after a delete, look here).
    pub fn index(&self) -> &Arc<dyn VectorIndex> {
        &self.index
    }
}
