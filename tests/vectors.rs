//! One story for every `VectorIndex` implementation. This build has one, embedded Qdrant Edge;
//! the Qdrant server backend (`SWITCHBOARD_QDRANT_URL`) will run the same story when it exists.

use std::sync::Arc;

use switchboard::knowledge::vectors::{ChunkPoint, EdgeIndex, Sparse, VectorIndex};

fn point(id: u128, document: &str, terms: &[(u32, f32)]) -> ChunkPoint {
    ChunkPoint {
        id: uuid::Uuid::from_u128(id).to_string(),
        document_id: document.to_owned(),
        chunk: 0,
        sparse: Sparse {
            indices: terms.iter().map(|(i, _)| *i).collect(),
            values: terms.iter().map(|(_, v)| *v).collect(),
        },
    }
}

fn query(terms: &[u32]) -> Sparse {
    Sparse {
        indices: terms.to_vec(),
        values: vec![1.0; terms.len()],
    }
}

fn ids(hits: &[switchboard::knowledge::vectors::ScoredChunk]) -> Vec<String> {
    hits.iter().map(|h| h.id.clone()).collect()
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

    // Ranking: the chunk with more of the query's terms first; no match, no hit.
    let hits = index
        .search(a, &query(&[10, 11]), 5, None)
        .await
        .expect("search");
    assert_eq!(ids(&hits), [id(1), id(2)]);
    assert!(hits[0].score > hits[1].score);
    assert!(
        index
            .search(a, &query(&[99]), 5, None)
            .await
            .expect("search")
            .is_empty()
    );
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
    assert_eq!(
        ids(&index
            .search(b, &query(&[10, 11, 12]), 5, None)
            .await
            .expect("search")),
        [id(4)]
    );

    // Upsert by id replaces; deleting a document removes all its chunks and nothing else.
    index
        .upsert(a, vec![point(2, "doc-1", &[(13, 1.0)])])
        .await
        .expect("upsert");
    assert_eq!(
        ids(&index
            .search(a, &query(&[13]), 5, None)
            .await
            .expect("search")),
        [id(2)]
    );
    index.delete_document(a, "doc-1").await.expect("delete");
    assert!(
        index
            .search(a, &query(&[10, 11, 13]), 5, None)
            .await
            .expect("search")
            .is_empty()
    );
    assert_eq!(
        ids(&index
            .search(a, &query(&[12]), 5, None)
            .await
            .expect("search")),
        [id(3)]
    );
    index.optimize(a).await.expect("optimize");
    assert_eq!(
        ids(&index
            .search(a, &query(&[12]), 5, None)
            .await
            .expect("search")),
        [id(3)]
    );

    // Durable: a new process (a new index over the same storage) sees the same.
    drop(index);
    let again = reopen();
    assert_eq!(
        ids(&again
            .search(a, &query(&[12]), 5, None)
            .await
            .expect("search")),
        [id(3)]
    );
    assert_eq!(
        ids(&again
            .search(b, &query(&[10]), 5, None)
            .await
            .expect("search")),
        [id(4)]
    );
    assert!(
        again
            .search(a, &query(&[10]), 5, None)
            .await
            .expect("search")
            .is_empty()
    );
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
