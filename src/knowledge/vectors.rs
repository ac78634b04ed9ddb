//! The vector store behind retrieval: a trait, and embedded Qdrant Edge as its default.
//!
//! Every tenant has its own shard (`$DATA_DIR/vectors/<tenant id>`): tenants never share an index,
//! so one tenant's documents cannot show up in — or shift the BM25 statistics of — another's
//! results. Qdrant Edge is synchronous and blocking: every call runs on the blocking pool, and a
//! shard's writes (update, flush, optimize) go through one lock because a flush must not overlap
//! an update. Every write batch is flushed before it returns: Edge does not replay its WAL when a
//! shard is opened, so only flushed data survives a crash (SQL stays the source of truth; chunks
//! not yet indexed are indexed again at start).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use async_trait::async_trait;
use qdrant_edge::external::ordered_float::OrderedFloat;
use qdrant_edge::{
    Condition, EdgeConfig, EdgeShard, EdgeSparseVectorParams, FieldCondition, Filter, JsonPath,
    Match, Modifier, NamedQuery, PointId, PointInsertOperations, PointOperations, PointStruct,
    QueryEnum, QueryRequest, ScoringQuery, SparseVector, UpdateOperation, ValueVariants, Vector,
    VectorInternal, Vectors, WithPayloadInterface, WithVector,
};

/// The name of the BM25 sparse vector in every shard.
pub const SPARSE: &str = "bm25";

/// A sparse vector: token ids and weights.
#[derive(Debug, Clone, PartialEq)]
pub struct Sparse {
    pub indices: Vec<u32>,
    pub values: Vec<f32>,
}

/// One chunk as the index stores it.
#[derive(Debug, Clone)]
pub struct ChunkPoint {
    /// The chunk's id (a UUID), also its id in SQL.
    pub id: String,
    pub document_id: String,
    pub chunk: i64,
    pub sparse: Sparse,
}

/// A hit: the chunk's id and its score.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredChunk {
    pub id: String,
    pub score: f32,
}

/// Where chunk vectors live. One implementation per backend; the same test story runs on each.
#[async_trait]
pub trait VectorIndex: Send + Sync + 'static {
    /// Adds (or replaces, by id) chunks of a tenant; durable when it returns.
    async fn upsert(&self, tenant_id: &str, points: Vec<ChunkPoint>) -> anyhow::Result<()>;
    /// Removes every chunk of a document.
    async fn delete_document(&self, tenant_id: &str, document_id: &str) -> anyhow::Result<()>;
    /// The tenant's best `k` chunks for a query, best first, those scoring under `min_score` left out.
    async fn search(
        &self,
        tenant_id: &str,
        query: &Sparse,
        k: usize,
        min_score: Option<f32>,
    ) -> anyhow::Result<Vec<ScoredChunk>>;
    /// Builds indexes for what was added (Edge indexes only when asked).
    async fn optimize(&self, tenant_id: &str) -> anyhow::Result<()>;
    /// One line for the startup summary.
    fn describe(&self) -> String;
}

/// Embedded Qdrant Edge, one shard per tenant under a directory.
pub struct EdgeIndex {
    dir: PathBuf,
    shards: Mutex<HashMap<String, Arc<TenantShard>>>,
    /// Held while a shard is opened: one opening per directory, ever.
    opening: tokio::sync::Mutex<()>,
}

struct TenantShard {
    shard: EdgeShard,
    /// Update, flush and optimize one at a time (a flush during an update panics in Edge).
    writer: Mutex<()>,
}

impl EdgeIndex {
    pub fn new(dir: PathBuf) -> EdgeIndex {
        EdgeIndex {
            dir,
            shards: Mutex::new(HashMap::new()),
            opening: tokio::sync::Mutex::new(()),
        }
    }

    /// The tenant's shard, opened (or created) on first use.
    async fn shard(&self, tenant_id: &str) -> anyhow::Result<Arc<TenantShard>> {
        anyhow::ensure!(
            !tenant_id.is_empty()
                && tenant_id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "not a tenant id: {tenant_id:?}"
        );
        if let Some(shard) = lock(&self.shards).get(tenant_id) {
            return Ok(shard.clone());
        }
        let _opening = self.opening.lock().await;
        if let Some(shard) = lock(&self.shards).get(tenant_id) {
            return Ok(shard.clone());
        }
        let path = self.dir.join(tenant_id);
        let opened = tokio::task::spawn_blocking(move || -> anyhow::Result<EdgeShard> {
            std::fs::create_dir_all(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            let shard = if path.join("edge_config.json").exists() {
                EdgeShard::load(&path, None)
            } else {
                let config = EdgeConfig::builder()
                    .sparse_vector(
                        SPARSE,
                        EdgeSparseVectorParams::builder()
                            .modifier(Modifier::Idf)
                            .build(),
                    )
                    .build();
                EdgeShard::new(&path, config)
            };
            shard.map_err(|e| anyhow::anyhow!("opening the vector shard {}: {e}", path.display()))
        })
        .await??;
        let shard = Arc::new(TenantShard {
            shard: opened,
            writer: Mutex::new(()),
        });
        lock(&self.shards).insert(tenant_id.to_owned(), shard.clone());
        Ok(shard)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn point_id(id: &str) -> anyhow::Result<PointId> {
    let uuid = qdrant_edge::external::uuid::Uuid::parse_str(id)
        .with_context(|| format!("chunk id {id:?} is not a UUID"))?;
    Ok(PointId::Uuid(uuid))
}

fn sparse(v: &Sparse) -> anyhow::Result<SparseVector> {
    SparseVector::new(v.indices.clone(), v.values.clone())
        .map_err(|e| anyhow::anyhow!("invalid sparse vector: {e}"))
}

fn document_filter(document_id: &str) -> anyhow::Result<Filter> {
    let key = JsonPath::try_from("document_id")
        .map_err(|()| anyhow::anyhow!("invalid payload path document_id"))?;
    Ok(Filter::new_must(Condition::Field(
        FieldCondition::new_match(
            key,
            Match::new_value(ValueVariants::String(document_id.to_owned())),
        ),
    )))
}

#[async_trait]
impl VectorIndex for EdgeIndex {
    async fn upsert(&self, tenant_id: &str, points: Vec<ChunkPoint>) -> anyhow::Result<()> {
        if points.is_empty() {
            return Ok(());
        }
        let shard = self.shard(tenant_id).await?;
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let mut batch = Vec::with_capacity(points.len());
            for p in points {
                let vectors = Vectors::new_named([(SPARSE, Vector::from(sparse(&p.sparse)?))]);
                let payload = serde_json::json!({"document_id": p.document_id, "chunk": p.chunk});
                batch.push(PointStruct::new(point_id(&p.id)?, vectors, payload).into());
            }
            let _writer = lock(&shard.writer);
            shard
                .shard
                .update(UpdateOperation::PointOperation(
                    PointOperations::UpsertPoints(PointInsertOperations::PointsList(batch)),
                ))
                .map_err(|e| anyhow::anyhow!("vector upsert: {e}"))?;
            shard.shard.flush();
            Ok(())
        })
        .await?
    }

    async fn delete_document(&self, tenant_id: &str, document_id: &str) -> anyhow::Result<()> {
        let shard = self.shard(tenant_id).await?;
        let filter = document_filter(document_id)?;
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let _writer = lock(&shard.writer);
            shard
                .shard
                .update(UpdateOperation::PointOperation(
                    PointOperations::DeletePointsByFilter(filter),
                ))
                .map_err(|e| anyhow::anyhow!("vector delete: {e}"))?;
            shard.shard.flush();
            Ok(())
        })
        .await?
    }

    async fn search(
        &self,
        tenant_id: &str,
        query: &Sparse,
        k: usize,
        min_score: Option<f32>,
    ) -> anyhow::Result<Vec<ScoredChunk>> {
        if query.indices.is_empty() || k == 0 {
            return Ok(Vec::new());
        }
        let shard = self.shard(tenant_id).await?;
        let query = sparse(query)?;
        tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<ScoredChunk>> {
            let request = QueryRequest {
                prefetches: Vec::new(),
                query: Some(ScoringQuery::Vector(QueryEnum::Nearest(NamedQuery {
                    query: VectorInternal::from(query),
                    using: Some(SPARSE.into()),
                }))),
                filter: None,
                score_threshold: min_score.map(OrderedFloat),
                limit: k,
                offset: 0,
                params: None,
                with_vector: WithVector::Bool(false),
                with_payload: WithPayloadInterface::Bool(false),
            };
            let hits = shard
                .shard
                .query(request)
                .map_err(|e| anyhow::anyhow!("vector search: {e}"))?;
            Ok(hits
                .into_iter()
                .filter_map(|p| match p.id {
                    PointId::Uuid(u) => Some(ScoredChunk {
                        id: u.to_string(),
                        score: p.score,
                    }),
                    PointId::NumId(_) => None,
                })
                .collect())
        })
        .await?
    }

    async fn optimize(&self, tenant_id: &str) -> anyhow::Result<()> {
        let shard = self.shard(tenant_id).await?;
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let _writer = lock(&shard.writer);
            shard
                .shard
                .optimize()
                .map_err(|e| anyhow::anyhow!("vector optimize: {e}"))?;
            shard.shard.flush();
            Ok(())
        })
        .await?
    }

    fn describe(&self) -> String {
        format!(
            "embedded Qdrant Edge in {} (one shard per tenant)",
            self.dir.display()
        )
    }
}
