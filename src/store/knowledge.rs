//! Knowledge documents and chunks (SQL side; vectors are in `crate::knowledge::vectors`).

use sqlx::Row;

use super::{Store, WriteTx, new_id, now_ms};

/// A document as listed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DocumentView {
    pub id: String,
    pub title: String,
    pub source: String,
    pub format: String,
    pub chunks: i64,
    pub tokens: i64,
    pub indexed: bool,
    pub created_at: String,
    pub updated_at: String,
}

/// A chunk to store.
#[derive(Debug, Clone)]
pub struct NewChunk {
    pub id: String,
    pub heading: String,
    pub text: String,
    pub tokens: i64,
}

/// A stored chunk with its document's title.
#[derive(Debug, Clone)]
pub struct StoredChunk {
    pub id: String,
    pub document_id: String,
    pub title: String,
    pub idx: i64,
    pub heading: String,
    pub text: String,
}

/// A document to store.
#[derive(Debug, Clone)]
pub struct NewDocument<'a> {
    pub tenant_id: &'a str,
    pub title: &'a str,
    pub source_key: &'a str,
    pub format: &'a str,
    pub content_hash: &'a str,
}

/// What storing a document did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// The same content was there already (same id, nothing written).
    Unchanged { document_id: String, chunks: i64 },
    /// New document.
    Created { document_id: String },
    /// Same source, new content: old chunks (their ids given) replaced.
    Replaced {
        document_id: String,
        old_chunks: Vec<String>,
    },
}

fn document_from_row(r: &sqlx::any::AnyRow) -> Result<DocumentView, sqlx::Error> {
    Ok(DocumentView {
        id: r.try_get("id")?,
        title: r.try_get("title")?,
        source: r.try_get("source_key")?,
        format: r.try_get("format")?,
        chunks: r.try_get("chunks")?,
        tokens: r.try_get("tokens")?,
        indexed: r.try_get::<Option<i64>, _>("indexed_at")?.is_some(),
        created_at: super::messages::rfc3339(r.try_get("created_at")?),
        updated_at: super::messages::rfc3339(r.try_get("updated_at")?),
    })
}

impl Store {
    /// Stores a document and its chunks in one transaction: a new document, an unchanged one
    /// (same content hash: nothing written), or a replacement of the one with the same source.
    pub async fn store_document(
        &self,
        doc: &NewDocument<'_>,
        chunks: &[NewChunk],
    ) -> Result<Stored, sqlx::Error> {
        let mut w = self.begin_write().await?;
        let stored = store_one(&mut w, doc, chunks, now_ms()).await?;
        w.commit().await?;
        self.forget_answer_context(doc.tenant_id);
        Ok(stored)
    }

    /// Stores several documents in one transaction (bulk ingestion: one commit for all).
    pub async fn store_documents(
        &self,
        docs: &[(NewDocument<'_>, Vec<NewChunk>)],
    ) -> Result<Vec<Stored>, sqlx::Error> {
        let now = now_ms();
        let mut w = self.begin_write().await?;
        let mut out = Vec::with_capacity(docs.len());
        for (doc, chunks) in docs {
            out.push(store_one(&mut w, doc, chunks, now).await?);
        }
        w.commit().await?;
        for (doc, _) in docs {
            self.forget_answer_context(doc.tenant_id);
        }
        Ok(out)
    }

    /// Marks documents' chunks as being in the vector index (one transaction).
    pub async fn mark_indexed(&self, document_ids: &[String]) -> Result<(), sqlx::Error> {
        let mut w = self.begin_write().await?;
        let now = now_ms();
        for id in document_ids {
            sqlx::query("UPDATE document SET indexed_at = $1 WHERE id = $2")
                .bind(now)
                .bind(id)
                .execute(&mut *w.tx)
                .await?;
        }
        w.commit().await
    }

    /// Marks every document as not indexed (a new, empty vector index: they are indexed again
    /// at start). Returns how many.
    pub async fn mark_all_unindexed(&self) -> Result<u64, sqlx::Error> {
        Ok(
            sqlx::query("UPDATE document SET indexed_at = NULL WHERE indexed_at IS NOT NULL")
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }

    /// Documents whose chunks are not (all) in the vector index: `(tenant, document)`.
    pub async fn unindexed_documents(&self) -> Result<Vec<(String, String)>, sqlx::Error> {
        sqlx::query("SELECT tenant_id, id FROM document WHERE indexed_at IS NULL")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| Ok((r.try_get("tenant_id")?, r.try_get("id")?)))
            .collect()
    }

    pub async fn list_documents(&self, tenant_id: &str) -> Result<Vec<DocumentView>, sqlx::Error> {
        sqlx::query(
            "SELECT id, title, source_key, format, chunks, tokens, indexed_at, created_at, updated_at
             FROM document WHERE tenant_id = $1 ORDER BY created_at, id",
        )
        .bind(tenant_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(document_from_row)
        .collect()
    }

    /// Deletes a tenant's document and its chunks; `false` if there was none.
    pub async fn delete_document(
        &self,
        tenant_id: &str,
        document_id: &str,
    ) -> Result<bool, sqlx::Error> {
        let mut w = self.begin_write().await?;
        sqlx::query("DELETE FROM chunk WHERE document_id = $1 AND tenant_id = $2")
            .bind(document_id)
            .bind(tenant_id)
            .execute(&mut *w.tx)
            .await?;
        let deleted = sqlx::query("DELETE FROM document WHERE id = $1 AND tenant_id = $2")
            .bind(document_id)
            .bind(tenant_id)
            .execute(&mut *w.tx)
            .await?;
        w.commit().await?;
        self.forget_answer_context(tenant_id);
        Ok(deleted.rows_affected() > 0)
    }

    pub async fn document_count(&self, tenant_id: &str) -> Result<i64, sqlx::Error> {
        sqlx::query("SELECT COUNT(*) AS n FROM document WHERE tenant_id = $1")
            .bind(tenant_id)
            .fetch_one(&self.pool)
            .await?
            .try_get("n")
    }

    /// Whether the tenant has this document.
    pub async fn has_document(
        &self,
        tenant_id: &str,
        document_id: &str,
    ) -> Result<bool, sqlx::Error> {
        Ok(
            sqlx::query("SELECT 1 FROM document WHERE id = $1 AND tenant_id = $2")
                .bind(document_id)
                .bind(tenant_id)
                .fetch_optional(&self.pool)
                .await?
                .is_some(),
        )
    }

    /// A document's chunks, in order.
    pub async fn document_chunks(
        &self,
        document_id: &str,
    ) -> Result<Vec<StoredChunk>, sqlx::Error> {
        sqlx::query(
            "SELECT c.id, c.document_id, d.title, c.idx, c.heading, c.text
             FROM chunk c JOIN document d ON d.id = c.document_id
             WHERE c.document_id = $1 ORDER BY c.idx",
        )
        .bind(document_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(chunk_from_row)
        .collect()
    }

    /// The tenant's chunks with these ids (others' are never returned), in no set order.
    pub async fn chunks_by_id(
        &self,
        tenant_id: &str,
        ids: &[String],
    ) -> Result<Vec<StoredChunk>, sqlx::Error> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let placeholders: Vec<String> = (0..ids.len()).map(|i| format!("${}", i + 2)).collect();
        let sql = format!(
            "SELECT c.id, c.document_id, d.title, c.idx, c.heading, c.text
             FROM chunk c JOIN document d ON d.id = c.document_id
             WHERE c.tenant_id = $1 AND c.id IN ({})",
            placeholders.join(", ")
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(tenant_id);
        for id in ids {
            query = query.bind(id);
        }
        query
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(chunk_from_row)
            .collect()
    }
}

fn chunk_from_row(r: &sqlx::any::AnyRow) -> Result<StoredChunk, sqlx::Error> {
    Ok(StoredChunk {
        id: r.try_get("id")?,
        document_id: r.try_get("document_id")?,
        title: r.try_get("title")?,
        idx: r.try_get("idx")?,
        heading: r.try_get("heading")?,
        text: r.try_get("text")?,
    })
}

/// One document and its chunks inside the caller's transaction (see [`Store::store_document`]).
async fn store_one(
    w: &mut WriteTx,
    doc: &NewDocument<'_>,
    chunks: &[NewChunk],
    now: i64,
) -> Result<Stored, sqlx::Error> {
    // The same content is one document, whatever it was called on the way in (a file ingested
    // from the CLI and uploaded over HTTP, a path typed two ways): the one with this source
    // first, else any with the same content.
    let same = sqlx::query(
        "SELECT id, chunks FROM document WHERE tenant_id = $1 AND content_hash = $3
         ORDER BY CASE WHEN source_key = $2 THEN 0 ELSE 1 END, created_at LIMIT 1",
    )
    .bind(doc.tenant_id)
    .bind(doc.source_key)
    .bind(doc.content_hash)
    .fetch_optional(&mut *w.tx)
    .await?;
    if let Some(row) = same {
        return Ok(Stored::Unchanged {
            document_id: row.try_get("id")?,
            chunks: row.try_get("chunks")?,
        });
    }
    let existing: Option<String> =
        sqlx::query("SELECT id FROM document WHERE tenant_id = $1 AND source_key = $2")
            .bind(doc.tenant_id)
            .bind(doc.source_key)
            .fetch_optional(&mut *w.tx)
            .await?
            .map(|r| r.try_get("id"))
            .transpose()?;
    let tokens: i64 = chunks.iter().map(|c| c.tokens).sum();
    let (document_id, outcome) = match existing {
        Some(id) => {
            let old: Vec<String> = sqlx::query("SELECT id FROM chunk WHERE document_id = $1")
                .bind(&id)
                .fetch_all(&mut *w.tx)
                .await?
                .iter()
                .map(|r| r.try_get("id"))
                .collect::<Result<_, _>>()?;
            sqlx::query("DELETE FROM chunk WHERE document_id = $1")
                .bind(&id)
                .execute(&mut *w.tx)
                .await?;
            sqlx::query(
                "UPDATE document SET title = $1, format = $2, content_hash = $3, chunks = $4,
                        tokens = $5, indexed_at = NULL, updated_at = $6 WHERE id = $7",
            )
            .bind(doc.title)
            .bind(doc.format)
            .bind(doc.content_hash)
            .bind(chunks.len() as i64)
            .bind(tokens)
            .bind(now)
            .bind(&id)
            .execute(&mut *w.tx)
            .await?;
            (
                id.clone(),
                Stored::Replaced {
                    document_id: id,
                    old_chunks: old,
                },
            )
        }
        None => {
            let id = new_id();
            sqlx::query(
                "INSERT INTO document (id, tenant_id, title, source_key, format, content_hash,
                                       chunks, tokens, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)",
            )
            .bind(&id)
            .bind(doc.tenant_id)
            .bind(doc.title)
            .bind(doc.source_key)
            .bind(doc.format)
            .bind(doc.content_hash)
            .bind(chunks.len() as i64)
            .bind(tokens)
            .bind(now)
            .execute(&mut *w.tx)
            .await?;
            (id.clone(), Stored::Created { document_id: id })
        }
    };
    for (idx, c) in chunks.iter().enumerate() {
        sqlx::query(
            "INSERT INTO chunk (id, tenant_id, document_id, idx, heading, text, tokens)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&c.id)
        .bind(doc.tenant_id)
        .bind(&document_id)
        .bind(idx as i64)
        .bind(&c.heading)
        .bind(&c.text)
        .bind(c.tokens)
        .execute(&mut *w.tx)
        .await?;
    }
    Ok(outcome)
}

impl Store {
    /// A tenant's knowledge settings as saved (JSON), if it saved any.
    pub async fn knowledge_settings(&self, tenant_id: &str) -> Result<Option<String>, sqlx::Error> {
        sqlx::query("SELECT settings FROM knowledge_settings WHERE tenant_id = $1")
            .bind(tenant_id)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| r.try_get("settings"))
            .transpose()
    }

    /// Saves a tenant's knowledge settings (JSON), replacing what was there.
    pub async fn put_knowledge_settings(
        &self,
        tenant_id: &str,
        settings: &str,
    ) -> Result<(), sqlx::Error> {
        let mut w = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO knowledge_settings (tenant_id, settings, updated_at) VALUES ($1, $2, $3)
             ON CONFLICT (tenant_id) DO UPDATE SET settings = excluded.settings,
                                                   updated_at = excluded.updated_at",
        )
        .bind(tenant_id)
        .bind(settings)
        .bind(now_ms())
        .execute(&mut *w.tx)
        .await?;
        w.commit().await
    }
}
