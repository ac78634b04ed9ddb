//! What the answer responder reads besides knowledge: a tenant's name and prompt templates, and
//! a conversation's recent history.

use std::collections::HashMap;

use sqlx::Row;

use super::{Store, now_ms};

/// A message of the conversation before the turn being answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryLine {
    /// `contact`, `bot` or `agent`.
    pub author: String,
    pub text: String,
}

impl Store {
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
        Ok(done.rows_affected() > 0)
    }
}
