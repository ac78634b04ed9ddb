//! What the answer responder reads besides knowledge: a tenant's name and prompt templates, and
//! a conversation's recent history.

use std::collections::HashMap;
use std::sync::Arc;

use sqlx::Row;

use super::{Store, now_ms};

/// A message of the conversation before the turn being answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryLine {
    /// `contact`, `bot` or `agent`.
    pub author: String,
    pub text: String,
}

/// What every answer of a tenant needs besides its question: read once per tenant and kept for
/// [`super::ANSWER_CONTEXT_TTL`] (changes through this process are seen at once; another
/// process's within that time).
#[derive(Debug, Default)]
pub struct AnswerContext {
    pub tenant_name: Option<String>,
    /// The tenant's prompt template overrides, by name.
    pub templates: HashMap<String, String>,
    /// Whether the tenant has any document (none: nothing to search).
    pub has_documents: bool,
}

impl Store {
    /// The tenant's [`AnswerContext`].
    pub async fn answer_context(&self, tenant_id: &str) -> Result<Arc<AnswerContext>, sqlx::Error> {
        if let Some(context) = self.answer_contexts.get(tenant_id) {
            return Ok(context);
        }
        let context = Arc::new(AnswerContext {
            tenant_name: self.tenant_name(tenant_id).await?,
            templates: self.prompt_templates(tenant_id).await?,
            has_documents: self.document_count(tenant_id).await? > 0,
        });
        self.answer_contexts
            .insert(tenant_id.to_owned(), context.clone());
        Ok(context)
    }

    /// Forgets the tenant's cached [`AnswerContext`] (its templates or documents changed).
    pub(crate) fn forget_answer_context(&self, tenant_id: &str) {
        self.answer_contexts.remove(tenant_id);
    }

    pub async fn tenant_name(&self, tenant_id: &str) -> Result<Option<String>, sqlx::Error> {
        sqlx::query("SELECT name FROM tenant WHERE id = $1")
            .bind(tenant_id)
            .fetch_optional(&self.pool)
            .await?
            .map(|row| row.try_get("name"))
            .transpose()
    }

    /// The text messages before `before_seq`, oldest first, at most `limit` (the latest ones).
    pub async fn conversation_history(
        &self,
        conversation_id: &str,
        before_seq: i64,
        limit: i64,
    ) -> Result<Vec<HistoryLine>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT author, text FROM message
             WHERE conversation_id = $1 AND seq < $2 AND seq > 0 AND text <> ''
               AND author IN ('contact', 'bot', 'agent')
               AND kind NOT IN ('reaction', 'reaction_removed', 'revoke', 'edit', 'system', 'unaddressed')
             ORDER BY seq DESC LIMIT $3",
        )
        .bind(conversation_id)
        .bind(before_seq)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut lines = rows
            .iter()
            .map(|row| {
                Ok(HistoryLine {
                    author: row.try_get("author")?,
                    text: row.try_get("text")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        lines.reverse();
        Ok(lines)
    }

    /// A tenant's own templates, by name.
    pub async fn prompt_templates(
        &self,
        tenant_id: &str,
    ) -> Result<HashMap<String, String>, sqlx::Error> {
        sqlx::query("SELECT name, body FROM prompt_template WHERE tenant_id = $1")
            .bind(tenant_id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| Ok((row.try_get("name")?, row.try_get("body")?)))
            .collect()
    }

    pub async fn set_prompt_template(
        &self,
        tenant_id: &str,
        name: &str,
        body: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO prompt_template (tenant_id, name, body, updated_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (tenant_id, name) DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at",
        )
        .bind(tenant_id)
        .bind(name)
        .bind(body)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        self.forget_answer_context(tenant_id);
        Ok(())
    }

    /// Whether there was a template to delete.
    pub async fn delete_prompt_template(
        &self,
        tenant_id: &str,
        name: &str,
    ) -> Result<bool, sqlx::Error> {
        let done = sqlx::query("DELETE FROM prompt_template WHERE tenant_id = $1 AND name = $2")
            .bind(tenant_id)
            .bind(name)
            .execute(&self.pool)
            .await?;
        self.forget_answer_context(tenant_id);
        Ok(done.rows_affected() > 0)
    }
}
