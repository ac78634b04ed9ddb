//! One story for every `VectorIndex` implementation: embedded Qdrant Edge always, and a Qdrant
//! server (`SWITCHBOARD_QDRANT_URL`'s backend) when `SWITCHBOARD_TEST_QDRANT_URL` names one
//! (gRPC, e.g. `http://127.0.0.1:6334`); without it that run prints a notice and is skipped —
//! unless `SWITCHBOARD_TEST_REQUIRE_QDRANT=1` (set by `.ci/run`), which makes it a failure.

use std::sync::Arc;

use switchboard::knowledge::vectors::{ChunkPoint, EdgeIndex, Sparse, VectorIndex, VectorQuery};

fn point(id: u128, document: &str, terms: &[(u32, f32)]) -> ChunkPoint {
    ChunkPoint {
        id: uuid::Uuid::from_u128(id).to_string(),
        document_id: document.to_owned(),
        chunk: 0,
        sparse: Sparse {
            indices: terms.iter().map(|(i, _)| *i).collect(),
            values: terms.iter().map(|(_, v)| *v).collect(),
        },
        dense: None,
    }
}

fn query(terms: &[u32]) -> VectorQuery {
    VectorQuery {
        sparse: Sparse {
            indices: terms.to_vec(),
            values: vec![1.0; terms.len()],
        },
        dense: None,
    }
}

fn ids(hits: &[switchboard::knowledge::vectors::ScoredChunk]) -> Vec<String> {
    hits.iter().map(|h| h.id.clone()).collect()
}

/// The ids a tenant's search for `terms` finds (top 5, no threshold).
async fn found(index: &dyn VectorIndex, tenant: &str, terms: &[u32]) -> Vec<String> {
    ids(&index
        .search(tenant, &query(terms), 5, None)
        .await
        .expect("search"))
}

async fn story(index: Arc<dyn VectorIndex>, reopen: impl Fn() -> Arc<dyn VectorIndex>) {
    let (a, b) = ("tenant-a", "tenant-b");
    index
        .upsert(
            a,
            vec![
                point(1, "doc-1", &[(10, 2.0), (11, 1.0)]),
                point(2, "doc-1", &[(11, 1.0)]),
                point(3, "doc-2", &[(12, 1.5)]),
            ],
        )
        .await
        .expect("upsert");
    index
        .upsert(b, vec![point(4, "doc-9", &[(10, 3.0)])])
        .await
        .expect("upsert other tenant");
    let id = |n: u128| uuid::Uuid::from_u128(n).to_string();
    let count = |index: Arc<dyn VectorIndex>, tenant: &'static str| async move {
        index.count(tenant).await.expect("count")
    };
    assert_eq!(count(index.clone(), a).await, 3);
    assert_eq!(count(index.clone(), b).await, 1);

    // Ranking: the chunk with more of the query's terms first; no match, no hit.
    let hits = index
        .search(a, &query(&[10, 11]), 5, None)
        .await
        .expect("search");
    assert_eq!(ids(&hits), [id(1), id(2)]);
    assert!(hits[0].score > hits[1].score);
    assert!(found(&*index, a, &[99]).await.is_empty());
    // k and the score threshold.
    assert_eq!(
        index
            .search(a, &query(&[10, 11]), 1, None)
            .await
            .expect("search")
            .len(),
        1
    );
    let threshold = hits[1].score + (hits[0].score - hits[1].score) / 2.0;
    assert_eq!(
        ids(&index
            .search(a, &query(&[10, 11]), 5, Some(threshold))
            .await
            .expect("search")),
        [id(1)]
    );
    // Tenants are apart: term 10 in tenant b never shows in a's results, and the other way round.
    assert_eq!(found(&*index, b, &[10, 11, 12]).await, [id(4)]);

    // Upsert by id replaces; deleting a document removes all its chunks and nothing else.
    index
        .upsert(a, vec![point(2, "doc-1", &[(13, 1.0)])])
        .await
        .expect("upsert");
    assert_eq!(found(&*index, a, &[13]).await, [id(2)]);
    assert_eq!(count(index.clone(), a).await, 3, "replaced, not added");
    index.delete_document(a, "doc-1").await.expect("delete");
    assert!(found(&*index, a, &[10, 11, 13]).await.is_empty());
    assert_eq!(found(&*index, a, &[12]).await, [id(3)]);
    assert_eq!(count(index.clone(), a).await, 1, "doc-1's points are gone");
    assert_eq!(count(index.clone(), b).await, 1);
    index.optimize(a).await.expect("optimize");
    assert_eq!(found(&*index, a, &[12]).await, [id(3)]);

    // Durable: a new process (a new index over the same storage) sees the same.
    drop(index);
    let again = reopen();
    assert_eq!(count(again.clone(), a).await, 1);
    assert_eq!(found(&*again, a, &[12]).await, [id(3)]);
    assert_eq!(found(&*again, b, &[10]).await, [id(4)]);
    assert!(found(&*again, a, &[10]).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_qdrant_edge() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("vectors");
    let reopen = {
        let path = path.clone();
        move || Arc::new(EdgeIndex::new(path.clone())) as Arc<dyn VectorIndex>
    };
    story(Arc::new(EdgeIndex::new(path)), reopen).await;
}

/// Hybrid: each point also has an embedding; a query with both is fused by rank (RRF), with
/// only an embedding it is a nearest-neighbour search, and tenants stay apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_qdrant_edge_hybrid() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("vectors");
    let index: Arc<dyn VectorIndex> = Arc::new(EdgeIndex::with_dense(path.clone(), Some(3)));
    let with = |id: u128, document: &str, terms: &[(u32, f32)], dense: [f32; 3]| ChunkPoint {
        dense: Some(dense.to_vec()),
        ..point(id, document, terms)
    };
    let id = |n: u128| uuid::Uuid::from_u128(n).to_string();
    index
        .upsert(
            "a",
            vec![
                with(1, "doc-1", &[(10, 1.0)], [1.0, 0.0, 0.0]),
                with(2, "doc-2", &[(11, 1.0)], [0.0, 1.0, 0.0]),
                with(3, "doc-3", &[(12, 1.0)], [0.0, 0.6, 0.8]),
            ],
        )
        .await
        .expect("upsert");
    index
        .upsert("b", vec![with(4, "doc-9", &[(10, 5.0)], [0.0, 1.0, 0.0])])
        .await
        .expect("upsert other tenant");
    // A point without its embedding is refused by a hybrid index (and the other way round).
    assert!(
        index
            .upsert("a", vec![point(5, "doc-5", &[(10, 1.0)])])
            .await
            .is_err()
    );
    let search = |sparse: &[u32], dense: Option<[f32; 3]>, k: usize| {
        let index = index.clone();
        let mut q = query(sparse);
        q.dense = dense.map(|d| d.to_vec());
        async move { ids(&index.search("a", &q, k, None).await.expect("search")) }
    };
    // Embedding only: nearest first.
    assert_eq!(
        search(&[], Some([0.0, 0.9, 0.1]), 5).await,
        [id(2), id(3), id(1)]
    );
    // Both: chunk 1 is first for the terms, third for the embedding; 2 only first for the
    // embedding; fused, 1 leads (RRF sums both ranks) and nothing else of tenant b's shows.
    assert_eq!(
        search(&[10], Some([0.0, 0.9, 0.1]), 5).await,
        [id(1), id(2), id(3)]
    );
    assert_eq!(search(&[10], Some([0.0, 0.9, 0.1]), 1).await, [id(1)]);
    // A query embedding of the wrong size is an error, not a silent miss.
    let mut wrong = query(&[10]);
    wrong.dense = Some(vec![1.0, 0.0]);
    assert!(index.search("a", &wrong, 5, None).await.is_err());
    index.delete_document("a", "doc-2").await.expect("delete");
    index.optimize("a").await.expect("optimize");
    assert_eq!(search(&[], Some([0.0, 0.9, 0.1]), 5).await, [id(3), id(1)]);
    drop(index);
    let again: Arc<dyn VectorIndex> = Arc::new(EdgeIndex::with_dense(path, Some(3)));
    let mut q = query(&[]);
    q.dense = Some(vec![0.0, 1.0, 0.0]);
    assert_eq!(
        ids(&again.search("b", &q, 5, None).await.expect("search")),
        [id(4)]
    );
    assert_eq!(
        ids(&again.search("a", &q, 5, None).await.expect("search")),
        [id(3), id(1)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qdrant_server() {
    use switchboard::knowledge::qdrant_server::QdrantServerIndex;
    let Some(url) = std::env::var("SWITCHBOARD_TEST_QDRANT_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        assert!(
            std::env::var("SWITCHBOARD_TEST_REQUIRE_QDRANT").as_deref() != Ok("1"),
            "SWITCHBOARD_TEST_REQUIRE_QDRANT=1 but SWITCHBOARD_TEST_QDRANT_URL is not set (.ci/qdrant-setup writes it)"
        );
        eprintln!(
            "NOTICE: qdrant_server skipped: set SWITCHBOARD_TEST_QDRANT_URL to a Qdrant server's gRPC URL to run the VectorIndex story on it"
        );
        return;
    };
    // Collections of this run only: a fresh profile name.
    let profile = format!(
        "test{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let open = move || {
        Arc::new(QdrantServerIndex::connect(&url, None, &profile, None).expect("client"))
            as Arc<dyn VectorIndex>
    };
    story(open(), open).await;
}

/// A bulk import past the size at which a BM25 shard optimizes itself on the way (4,096 points):
/// the optimize runs once the 4,096th point is written (in batches of 500: with the ninth), not
/// before and not again before another 4,096; every point is still found, and the shard reopens
/// with all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_import_optimizes_on_the_way_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("vectors");
    let edge = Arc::new(EdgeIndex::new(path.clone()));
    let index: Arc<dyn VectorIndex> = edge.clone();
    for batch in 0..10u128 {
        let points = (0..500u128)
            .map(|i| {
                let n = batch * 500 + i;
                point(n + 1, &format!("doc-{}", n / 10), &[(n as u32 + 100, 1.0)])
            })
            .collect();
        index.upsert("bulk", points).await.expect("upsert");
        let written = (batch + 1) * 500;
        let expected = usize::from(written >= 4_096);
        assert_eq!(
            edge.optimizations("bulk"),
            expected,
            "optimizes on the way after {written} points"
        );
    }
    assert_eq!(index.count("bulk").await.expect("count"), 5_000);
    for n in [0u128, 4_095, 4_096, 4_999] {
        assert_eq!(
            found(&*index, "bulk", &[n as u32 + 100]).await,
            [uuid::Uuid::from_u128(n + 1).to_string()]
        );
    }
    drop(index);
    drop(edge);
    let again: Arc<dyn VectorIndex> = Arc::new(EdgeIndex::new(path));
    assert_eq!(
        found(&*again, "bulk", &[4_999 + 100]).await,
        [uuid::Uuid::from_u128(5_000).to_string()]
    );
    assert_eq!(again.count("bulk").await.expect("count"), 5_000);
}
