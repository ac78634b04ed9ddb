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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use async_trait::async_trait;
use qdrant_edge::external::ordered_float::OrderedFloat;
use qdrant_edge::{
    Condition, CountRequest, Distance, EdgeConfig, EdgeShard, EdgeSparseVectorParams,
    EdgeVectorParams, FieldCondition, Filter, Fusion, JsonPath, Match, Modifier, NamedQuery,
    PointId, PointInsertOperations, PointOperations, PointStruct, Prefetch, QueryEnum,
    QueryRequest, ScoringQuery, SparseVector, UpdateOperation, ValueVariants, Vector,
    VectorInternal, Vectors, WithPayloadInterface, WithVector,
};

/// The name of the BM25 sparse vector in every shard.
pub const SPARSE: &str = "bm25";
/// The name of the dense (embedding) vector, in shards of an index with an embedding model.
pub const DENSE: &str = "dense";
/// RRF's rank constant: each list adds `1 / (k + rank)`. Qdrant's default is 2; 60 (the RRF
/// paper's) weighs deep ranks almost as much as the top ones. On StackFAQ with all-MiniLM-L6-v2
/// the three are within a few questions of each other; 10 had the best recall@1
/// (docs/KNOWLEDGE.md).
pub const RRF_K: usize = 10;

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
    /// The chunk's embedding, when the index has an embedding model.
    pub dense: Option<Vec<f32>>,
}

/// What a search looks for: BM25 terms always, the question's embedding when there is a model.
/// With both, the two rankings are fused with RRF.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorQuery {
    pub sparse: Sparse,
    pub dense: Option<Vec<f32>>,
}

/// A point's embedding as an index of `size` takes it: present and of that size in a hybrid
/// index, absent in a BM25-only one (`size` `None`).
pub fn point_dense(
    dense: Option<Vec<f32>>,
    size: Option<usize>,
) -> anyhow::Result<Option<Vec<f32>>> {
    match (dense, size) {
        (Some(dense), Some(size)) => {
            anyhow::ensure!(
                dense.len() == size,
                "an embedding of size {} for an index of size {size}",
                dense.len()
            );
            Ok(Some(dense))
        }
        (None, None) => Ok(None),
        (Some(_), None) => anyhow::bail!("an embedding for a BM25-only index"),
        (None, Some(_)) => anyhow::bail!("no embedding for a hybrid index"),
    }
}

/// The query's embedding an index of `size` can use (none for a BM25-only index); one of
/// another size is an error, not a silent miss.
pub fn query_dense(query: &VectorQuery, size: Option<usize>) -> anyhow::Result<Option<Vec<f32>>> {
    let Some(size) = size else { return Ok(None) };
    match &query.dense {
        Some(d) if d.len() != size => anyhow::bail!(
            "a query embedding of size {} for an index of size {size}",
            d.len()
        ),
        dense => Ok(dense.clone()),
    }
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
    /// The tenant's best `k` chunks for a query, best first. `min_score` applies to the BM25
    /// score: chunks under it are not BM25 candidates (with a dense query they may still come
    /// from the embedding side).
    async fn search(
        &self,
        tenant_id: &str,
        query: &VectorQuery,
        k: usize,
        min_score: Option<f32>,
    ) -> anyhow::Result<Vec<ScoredChunk>>;
    /// Builds indexes for what was added (Edge indexes only when asked).
    async fn optimize(&self, tenant_id: &str) -> anyhow::Result<()>;
    /// How many points (chunks) the tenant has in the index, counted exactly. Searches only
    /// show chunks SQL still has, so this is how a check sees what the index itself holds
    /// (e.g. that a deleted document's vectors are gone).
    async fn count(&self, tenant_id: &str) -> anyhow::Result<usize>;
    /// One line for the startup summary.
    fn describe(&self) -> String;
}

/// Embedded Qdrant Edge, one shard per tenant under a directory.
pub struct EdgeIndex {
    dir: PathBuf,
    /// Size of the dense vectors; `None` for a BM25-only index.
    dense_size: Option<usize>,
    shards: Mutex<HashMap<String, Arc<TenantShard>>>,
    /// Held while a shard is opened: one opening per directory, ever.
    opening: tokio::sync::Mutex<()>,
}

struct TenantShard {
    shard: EdgeShard,
    /// Update, flush and optimize one at a time (a flush during an update panics in Edge). Holds
    /// the points written since the last optimize.
    writer: Mutex<usize>,
    /// Optimizes run on this shard since it was opened, on the way or asked for.
    optimizations: AtomicUsize,
}

/// Points written to a BM25-only shard after which it is optimized on the way: Edge flushes its
/// whole appendable segment after every write, so an import must not let that segment grow
/// without end. At 100k chunks: 903 chunks/s without, 1,305 with 16,384, 1,470 with 4,096
/// (docs/BENCHMARKS.md).
const OPTIMIZE_EVERY: usize = 4_096;

impl EdgeIndex {
    /// A BM25-only index in `dir`.
    pub fn new(dir: PathBuf) -> EdgeIndex {
        EdgeIndex::with_dense(dir, None)
    }

    /// An index in `dir` whose shards also hold dense vectors of `dense_size` (cosine).
    pub fn with_dense(dir: PathBuf, dense_size: Option<usize>) -> EdgeIndex {
        EdgeIndex {
            dir,
            dense_size,
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
        let dense_size = self.dense_size;
        let opened = tokio::task::spawn_blocking(move || -> anyhow::Result<EdgeShard> {
            std::fs::create_dir_all(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            let shard = if path.join("edge_config.json").exists() {
                EdgeShard::load(&path, None)
            } else {
                let mut config = EdgeConfig::builder().sparse_vector(
                    SPARSE,
                    EdgeSparseVectorParams::builder()
                        .modifier(Modifier::Idf)
                        .build(),
                );
                if let Some(size) = dense_size {
                    config = config.vector(
                        DENSE,
                        EdgeVectorParams::builder(size, Distance::Cosine).build(),
                    );
                }
                let config = config.build();
                EdgeShard::new(&path, config)
            };
            shard.map_err(|e| anyhow::anyhow!("opening the vector shard {}: {e}", path.display()))
        })
        .await??;
        let shard = Arc::new(TenantShard {
            shard: opened,
            writer: Mutex::new(0),
            optimizations: AtomicUsize::new(0),
        });
        lock(&self.shards).insert(tenant_id.to_owned(), shard.clone());
        Ok(shard)
    }

    /// How many times the tenant's shard was optimized since this index opened it, on the way
    /// (every `OPTIMIZE_EVERY` points written to a BM25-only shard) or through `optimize`; 0 for
    /// a shard not opened. Lets a check observe the periodic optimize.
    pub fn optimizations(&self, tenant_id: &str) -> usize {
        lock(&self.shards)
            .get(tenant_id)
            .map_or(0, |s| s.optimizations.load(Ordering::Relaxed))
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
        let dense_size = self.dense_size;
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let mut batch = Vec::with_capacity(points.len());
            for p in points {
                let mut named = vec![(SPARSE, Vector::from(sparse(&p.sparse)?))];
                if let Some(dense) = point_dense(p.dense, dense_size)? {
                    named.push((DENSE, Vector::from(dense)));
                }
                let vectors = Vectors::new_named(named);
                let payload = serde_json::json!({"document_id": p.document_id, "chunk": p.chunk});
                batch.push(PointStruct::new(point_id(&p.id)?, vectors, payload).into());
            }
            let written = batch.len();
            let mut since_optimize = lock(&shard.writer);
            shard
                .shard
                .update(UpdateOperation::PointOperation(
                    PointOperations::UpsertPoints(PointInsertOperations::PointsList(batch)),
                ))
                .map_err(|e| anyhow::anyhow!("vector upsert: {e}"))?;
            shard.shard.flush();
            *since_optimize += written;
            // BM25-only shards: their optimize is cheap. A hybrid shard's builds an HNSW graph,
            // which is left to the explicit `optimize` (not measured with this cadence yet).
            if dense_size.is_none() && *since_optimize >= OPTIMIZE_EVERY {
                shard
                    .shard
                    .optimize()
                    .map_err(|e| anyhow::anyhow!("vector optimize: {e}"))?;
                shard.shard.flush();
                *since_optimize = 0;
                shard.optimizations.fetch_add(1, Ordering::Relaxed);
            }
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
        query: &VectorQuery,
        k: usize,
        min_score: Option<f32>,
    ) -> anyhow::Result<Vec<ScoredChunk>> {
        let dense = query_dense(query, self.dense_size)?;
        if k == 0 || (query.sparse.indices.is_empty() && dense.is_none()) {
            return Ok(Vec::new());
        }
        let shard = self.shard(tenant_id).await?;
        let nearest = |vector: VectorInternal, using: &str| {
            ScoringQuery::Vector(QueryEnum::Nearest(NamedQuery {
                query: vector,
                using: Some(using.into()),
            }))
        };
        let lexical = (!query.sparse.indices.is_empty())
            .then(|| sparse(&query.sparse))
            .transpose()?
            .map(|s| nearest(VectorInternal::from(s), SPARSE));
        let semantic = dense.map(|d| nearest(VectorInternal::from(d), DENSE));
        // One ranking alone is used as it is; two are fused by rank (RRF), each list deep
        // enough that a chunk ranked well by one side but not the other can still come up.
        let (prefetches, scoring, threshold) = match (lexical, semantic) {
            (Some(only), None) => (Vec::new(), only, min_score),
            (None, Some(only)) => (Vec::new(), only, None),
            (Some(lexical), Some(semantic)) => {
                let depth = (k * 4).max(20);
                let prefetch = |query, score_threshold| Prefetch {
                    prefetches: Vec::new(),
                    query: Some(query),
                    limit: depth,
                    params: None,
                    filter: None,
                    score_threshold,
                };
                (
                    vec![
                        prefetch(lexical, min_score.map(OrderedFloat)),
                        prefetch(semantic, None),
                    ],
                    ScoringQuery::Fusion(Fusion::Rrf {
                        k: RRF_K,
                        weights: None,
                    }),
                    None,
                )
            }
            (None, None) => return Ok(Vec::new()),
        };
        tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<ScoredChunk>> {
            let request = QueryRequest {
                prefetches,
                query: Some(scoring),
                filter: None,
                score_threshold: threshold.map(OrderedFloat),
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
            let mut since_optimize = lock(&shard.writer);
            shard
                .shard
                .optimize()
                .map_err(|e| anyhow::anyhow!("vector optimize: {e}"))?;
            shard.shard.flush();
            *since_optimize = 0;
            shard.optimizations.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })
        .await?
    }

    async fn count(&self, tenant_id: &str) -> anyhow::Result<usize> {
        let shard = self.shard(tenant_id).await?;
        tokio::task::spawn_blocking(move || -> anyhow::Result<usize> {
            shard
                .shard
                .count(CountRequest {
                    filter: None,
                    exact: true,
                })
                .map_err(|e| anyhow::anyhow!("vector count: {e}"))
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
