//! The vector index on a Qdrant server (`SWITCHBOARD_QDRANT_URL`, gRPC), through `qdrant-client`.
//!
//! The same layout as the embedded index: one collection per tenant
//! (`switchboard_<profile>_<tenant id>`), so no query can reach another tenant's points and one
//! tenant's documents do not move another's BM25 statistics; the sparse vector `bm25` with the
//! IDF modifier, and the dense vector `dense` (cosine) in hybrid mode. Writes wait for the server
//! to apply them (`wait: true`), so a write is durable when it returns, as with Edge. The server
//! builds its indexes itself: `optimize` has nothing to do.

use std::collections::HashSet;
use std::sync::Mutex;

use anyhow::Context;
use async_trait::async_trait;
use qdrant_client::Qdrant;
use qdrant_client::qdrant::{
    Condition, CountPointsBuilder, CreateCollectionBuilder, DeletePointsBuilder, Distance, Filter,
    Modifier, NamedVectors, PointStruct, PrefetchQueryBuilder, Query, QueryPointsBuilder,
    RrfBuilder, SparseVectorParamsBuilder, SparseVectorsConfigBuilder, UpsertPointsBuilder, Vector,
    VectorInput, VectorParamsBuilder, VectorsConfigBuilder, point_id::PointIdOptions,
};

use super::vectors::{
    ChunkPoint, DENSE, RRF_K, SPARSE, ScoredChunk, VectorIndex, VectorQuery, point_dense,
    query_dense,
};

pub struct QdrantServerIndex {
    client: Qdrant,
    url: String,
    /// `bm25` or `<model>-<size>`: part of each collection's name, like the Edge directory.
    profile: String,
    dense_size: Option<usize>,
    /// Collections known to exist.
    ready: Mutex<HashSet<String>>,
}

impl QdrantServerIndex {
    /// A client for `url` (`http://host:6334`, gRPC). Nothing is sent until first use.
    pub fn connect(
        url: &str,
        api_key: Option<String>,
        profile: &str,
        dense_size: Option<usize>,
    ) -> anyhow::Result<QdrantServerIndex> {
        let mut builder = Qdrant::from_url(url).skip_compatibility_check();
        if let Some(key) = api_key {
            builder = builder.api_key(key);
        }
        let client = builder
            .build()
            .with_context(|| format!("Qdrant client for {url}"))?;
        Ok(QdrantServerIndex {
            client,
            url: url.to_owned(),
            profile: profile
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect(),
            dense_size,
            ready: Mutex::new(HashSet::new()),
        })
    }

    /// Checks that the server answers (for the start-up line).
    pub async fn check(&self) -> anyhow::Result<String> {
        let health = self
            .client
            .health_check()
            .await
            .with_context(|| format!("Qdrant at {} does not answer", self.url))?;
        Ok(health.version)
    }

    fn name(&self, tenant_id: &str) -> anyhow::Result<String> {
        anyhow::ensure!(
            !tenant_id.is_empty()
                && tenant_id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "not a tenant id: {tenant_id:?}"
        );
        Ok(format!("switchboard_{}_{tenant_id}", self.profile))
    }

    /// The tenant's collection, created on first use.
    async fn collection(&self, tenant_id: &str) -> anyhow::Result<String> {
        let name = self.name(tenant_id)?;
        if lock(&self.ready).contains(&name) {
            return Ok(name);
        }
        if !self.client.collection_exists(&name).await? {
            let mut sparse = SparseVectorsConfigBuilder::default();
            sparse.add_named_vector_params(
                SPARSE,
                SparseVectorParamsBuilder::default().modifier(Modifier::Idf),
            );
            let mut create = CreateCollectionBuilder::new(&name).sparse_vectors_config(sparse);
            if let Some(size) = self.dense_size {
                let mut dense = VectorsConfigBuilder::default();
                dense.add_named_vector_params(
                    DENSE,
                    VectorParamsBuilder::new(size as u64, Distance::Cosine),
                );
                create = create.vectors_config(dense);
            }
            if let Err(e) = self.client.create_collection(create).await {
                // Another gateway may have created it meanwhile.
                if !self.client.collection_exists(&name).await? {
                    return Err(e).with_context(|| format!("creating collection {name}"));
                }
            }
        }
        lock(&self.ready).insert(name.clone());
        Ok(name)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[async_trait]
impl VectorIndex for QdrantServerIndex {
    async fn upsert(&self, tenant_id: &str, points: Vec<ChunkPoint>) -> anyhow::Result<()> {
        if points.is_empty() {
            return Ok(());
        }
        let collection = self.collection(tenant_id).await?;
        let mut batch = Vec::with_capacity(points.len());
        for p in points {
            let mut vectors = NamedVectors::default().add_vector(
                SPARSE,
                Vector::new_sparse(p.sparse.indices, p.sparse.values),
            );
            if let Some(dense) = point_dense(p.dense, self.dense_size)? {
                vectors = vectors.add_vector(DENSE, dense);
            }
            let payload = qdrant_client::Payload::from(std::collections::HashMap::from([
                (
                    "document_id",
                    qdrant_client::qdrant::Value::from(p.document_id),
                ),
                ("chunk", qdrant_client::qdrant::Value::from(p.chunk)),
            ]));
            batch.push(PointStruct::new(p.id, vectors, payload));
        }
        self.client
            .upsert_points(UpsertPointsBuilder::new(&collection, batch).wait(true))
            .await
            .context("vector upsert")?;
        Ok(())
    }

    async fn delete_document(&self, tenant_id: &str, document_id: &str) -> anyhow::Result<()> {
        let collection = self.collection(tenant_id).await?;
        self.client
            .delete_points(
                DeletePointsBuilder::new(&collection)
                    .points(Filter::must([Condition::matches(
                        "document_id",
                        document_id.to_owned(),
                    )]))
                    .wait(true),
            )
            .await
            .context("vector delete")?;
        Ok(())
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
        let collection = self.collection(tenant_id).await?;
        let lexical = (!query.sparse.indices.is_empty()).then(|| {
            VectorInput::new_sparse(query.sparse.indices.clone(), query.sparse.values.clone())
        });
        let mut request = QueryPointsBuilder::new(&collection).limit(k as u64);
        request = match (lexical, dense) {
            (Some(lexical), None) => {
                let r = request.query(Query::new_nearest(lexical)).using(SPARSE);
                match min_score {
                    Some(min) => r.score_threshold(min),
                    None => r,
                }
            }
            (None, Some(dense)) => request.query(Query::new_nearest(dense)).using(DENSE),
            (Some(lexical), Some(dense)) => {
                let depth = (k * 4).max(20) as u64;
                let mut sparse_side = PrefetchQueryBuilder::default()
                    .query(Query::new_nearest(lexical))
                    .using(SPARSE)
                    .limit(depth);
                if let Some(min) = min_score {
                    sparse_side = sparse_side.score_threshold(min);
                }
                request
                    .add_prefetch(sparse_side)
                    .add_prefetch(
                        PrefetchQueryBuilder::default()
                            .query(Query::new_nearest(dense))
                            .using(DENSE)
                            .limit(depth),
                    )
                    .query(Query::new_rrf(RrfBuilder::with_k(RRF_K as u32)))
            }
            (None, None) => return Ok(Vec::new()),
        };
        let response = self.client.query(request).await.context("vector search")?;
        Ok(response
            .result
            .into_iter()
            .filter_map(|p| match p.id?.point_id_options? {
                PointIdOptions::Uuid(id) => Some(ScoredChunk { id, score: p.score }),
                PointIdOptions::Num(_) => None,
            })
            .collect())
    }

    async fn optimize(&self, tenant_id: &str) -> anyhow::Result<()> {
        // The server indexes in the background; make sure the collection exists at least.
        self.collection(tenant_id).await.map(|_| ())
    }

    async fn count(&self, tenant_id: &str) -> anyhow::Result<usize> {
        let collection = self.collection(tenant_id).await?;
        let response = self
            .client
            .count(CountPointsBuilder::new(&collection).exact(true))
            .await
            .context("vector count")?;
        Ok(response.result.map_or(0, |r| r.count as usize))
    }

    fn describe(&self) -> String {
        format!("Qdrant server at {} (one collection per tenant)", self.url)
    }
}
