//! Moderation, hand-off and tickets in the store: each tenant's policy by version, flags with
//! their evidence (immutable: the migration's trigger refuses changes to it), tickets with their
//! SLA targets and notes, blocked contacts. See `crate::moderation` for what they mean.

use serde_json::{Value, json};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::tenants::record_event;
use super::{Store, WriteTx, new_id, now_ms};

/// A flag as stored.
#[derive(Debug, Clone)]
pub struct FlagRow {
    pub id: String,
    pub conversation_id: String,
    pub contact_id: String,
    pub message_id: String,
    pub direction: String,
    pub action: String,
    pub shadow: bool,
    pub status: String,
    pub policy_version: i64,
    pub evidence: Value,
    pub verdict: Option<String>,
    pub verdict_text: Option<String>,
    pub verdict_by: Option<String>,
    pub verdict_at: Option<i64>,
    pub created_at: i64,
}

const FLAG_COLUMNS: &str = "id, conversation_id, contact_id, message_id, direction, action, shadow, status, policy_version, evidence, verdict, verdict_text, verdict_by, verdict_at, created_at";

fn flag_row(r: &AnyRow) -> Result<FlagRow, sqlx::Error> {
    Ok(FlagRow {
        id: r.try_get("id")?,
        conversation_id: r.try_get("conversation_id")?,
        contact_id: r.try_get("contact_id")?,
        message_id: r.try_get("message_id")?,
        direction: r.try_get("direction")?,
        action: r.try_get("action")?,
        shadow: r.try_get::<i64, _>("shadow")? != 0,
        status: r.try_get("status")?,
        policy_version: r.try_get("policy_version")?,
        evidence: serde_json::from_str(&r.try_get::<String, _>("evidence")?).unwrap_or(Value::Null),
        verdict: r.try_get("verdict")?,
        verdict_text: r.try_get("verdict_text")?,
        verdict_by: r.try_get("verdict_by")?,
        verdict_at: r.try_get("verdict_at")?,
        created_at: r.try_get("created_at")?,
    })
}

/// A flag to raise.
pub struct NewFlag<'a> {
    pub tenant_id: &'a str,
    pub conversation_id: &'a str,
    pub contact_id: &'a str,
    pub message_id: &'a str,
    pub direction: &'a str,
    pub action: &'a str,
    pub shadow: bool,
    pub policy_version: i64,
    pub evidence: &'a Value,
}

/// A ticket as stored.
#[derive(Debug, Clone)]
pub struct TicketRow {
    pub id: String,
    pub subject: String,
    pub source: String,
    pub status: String,
    pub priority: String,
    pub assignee: Option<String>,
    pub conversation_id: Option<String>,
    pub contact_id: Option<String>,
    pub flag_id: Option<String>,
    pub first_response_due_at: i64,
    pub resolution_due_at: i64,
    pub first_response_at: Option<i64>,
    pub solved_at: Option<i64>,
    pub closed_at: Option<i64>,
    pub created_by: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

const TICKET_COLUMNS: &str = "id, subject, source, status, priority, assignee, conversation_id, contact_id, flag_id, first_response_due_at, resolution_due_at, first_response_at, solved_at, closed_at, created_by, created_at, updated_at";

fn ticket_row(r: &AnyRow) -> Result<TicketRow, sqlx::Error> {
    Ok(TicketRow {
        id: r.try_get("id")?,
        subject: r.try_get("subject")?,
        source: r.try_get("source")?,
        status: r.try_get("status")?,
        priority: r.try_get("priority")?,
        assignee: r.try_get("assignee")?,
        conversation_id: r.try_get("conversation_id")?,
        contact_id: r.try_get("contact_id")?,
        flag_id: r.try_get("flag_id")?,
        first_response_due_at: r.try_get("first_response_due_at")?,
        resolution_due_at: r.try_get("resolution_due_at")?,
        first_response_at: r.try_get("first_response_at")?,
        solved_at: r.try_get("solved_at")?,
        closed_at: r.try_get("closed_at")?,
        created_by: r.try_get("created_by")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

/// A ticket to open.
pub struct NewTicket<'a> {
    pub tenant_id: &'a str,
    pub subject: &'a str,
    pub source: &'a str,
    pub priority: &'a str,
    pub conversation_id: Option<&'a str>,
    pub contact_id: Option<&'a str>,
    pub flag_id: Option<&'a str>,
    pub created_by: Option<&'a str>,
    /// Targets, in ms after opening.
    pub first_response_ms: i64,
    pub resolution_ms: i64,
}

/// What a ticket update may change.
#[derive(Debug, Default)]
pub struct TicketChange {
    pub status: Option<String>,
    pub priority: Option<String>,
    /// `Some(None)` unassigns.
    pub assignee: Option<Option<String>>,
    pub subject: Option<String>,
    pub note: Option<String>,
}

/// One priority's ticket figures (`GET /v1/moderation/stats`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct TicketMetrics {
    pub priority: String,
    pub total: i64,
    pub unresolved: i64,
    pub first_response_breached: i64,
    pub resolution_breached: i64,
    pub mean_first_response_ms: Option<i64>,
}

/// Filters of the ticket list.
#[derive(Debug, Default)]
pub struct TicketFilter {
    pub status: Option<String>,
    pub priority: Option<String>,
    pub assignee: Option<String>,
    pub conversation_id: Option<String>,
}

impl Store {
    /// The tenant's current policy: (version, JSON text); `None` when it saved none.
    pub async fn moderation_policy(
        &self,
        tenant_id: &str,
    ) -> Result<Option<(i64, String)>, sqlx::Error> {
        sqlx::query(
            "SELECT version, policy FROM moderation_policy WHERE tenant_id = $1
             ORDER BY version DESC LIMIT 1",
        )
        .bind(tenant_id)
        .fetch_optional(&self.pool)
        .await?
        .map(|r| Ok((r.try_get("version")?, r.try_get("policy")?)))
        .transpose()
    }

    /// Saves a policy as the tenant's next version; the version.
    pub async fn save_moderation_policy(
        &self,
        tenant_id: &str,
        policy: &str,
        by: &str,
    ) -> Result<i64, sqlx::Error> {
        let now = now_ms();
        let mut w = self.begin_write().await?;
        let version: i64 = sqlx::query(
            "INSERT INTO moderation_policy (tenant_id, version, policy, created_by, created_at)
             SELECT $1, COALESCE(MAX(version), 0) + 1, $2, $3, $4 FROM moderation_policy
             WHERE tenant_id = $1
             RETURNING version",
        )
        .bind(tenant_id)
        .bind(policy)
        .bind(by)
        .bind(now)
        .fetch_one(&mut *w.tx)
        .await?
        .try_get("version")?;
        record_event(
            &mut w.tx,
            Some(tenant_id),
            "moderation.policy",
            Some(&version.to_string()),
            &json!({ "by": by, "version": version }).to_string(),
        )
        .await?;
        w.commit().await?;
        Ok(version)
    }

    /// The tenant's flags, newest first: all, or those with `status`.
    pub async fn flags(
        &self,
        tenant_id: &str,
        status: Option<&str>,
        limit: i64,
    ) -> Result<Vec<FlagRow>, sqlx::Error> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {FLAG_COLUMNS} FROM flag WHERE tenant_id = $1 AND ($2 IS NULL OR status = $2)
             ORDER BY created_at DESC, id DESC LIMIT $3"
        )))
        .bind(tenant_id)
        .bind(status)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(flag_row)
        .collect()
    }

    pub async fn flag(&self, tenant_id: &str, id: &str) -> Result<Option<FlagRow>, sqlx::Error> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {FLAG_COLUMNS} FROM flag WHERE tenant_id = $1 AND id = $2"
        )))
        .bind(tenant_id)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .map(|r| flag_row(&r))
        .transpose()
    }

    /// Verdicts per rule or category, for the measured precision: (flag evidence, verdict).
    pub async fn judged_flags(&self, tenant_id: &str) -> Result<Vec<FlagRow>, sqlx::Error> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {FLAG_COLUMNS} FROM flag WHERE tenant_id = $1 ORDER BY created_at"
        )))
        .bind(tenant_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(flag_row)
        .collect()
    }

    /// Per priority: tickets, how many are unresolved, how many missed their first-response and
    /// resolution targets (an unmet target past due counts), and the mean first-response time
    /// of those answered.
    pub async fn ticket_metrics(
        &self,
        tenant_id: &str,
        now: i64,
    ) -> Result<Vec<TicketMetrics>, sqlx::Error> {
        sqlx::query(
            "SELECT priority, COUNT(*) AS total,
                    CAST(SUM(CASE WHEN status IN ('open', 'pending') THEN 1 ELSE 0 END) AS BIGINT) AS unresolved,
                    CAST(SUM(CASE WHEN COALESCE(first_response_at, $2) > first_response_due_at
                                  THEN 1 ELSE 0 END) AS BIGINT) AS first_breached,
                    CAST(SUM(CASE WHEN COALESCE(solved_at, closed_at, $2) > resolution_due_at
                                  THEN 1 ELSE 0 END) AS BIGINT) AS resolution_breached,
                    CAST(AVG(CASE WHEN first_response_at IS NOT NULL
                                  THEN first_response_at - created_at END) AS BIGINT) AS mean_first_ms
             FROM ticket WHERE tenant_id = $1 GROUP BY priority ORDER BY priority",
        )
        .bind(tenant_id)
        .bind(now)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(TicketMetrics {
                priority: r.try_get("priority")?,
                total: r.try_get("total")?,
                unresolved: r.try_get("unresolved")?,
                first_response_breached: r.try_get("first_breached")?,
                resolution_breached: r.try_get("resolution_breached")?,
                mean_first_response_ms: r.try_get("mean_first_ms")?,
            })
        })
        .collect()
    }

    pub async fn tickets(
        &self,
        tenant_id: &str,
        filter: &TicketFilter,
        limit: i64,
    ) -> Result<Vec<TicketRow>, sqlx::Error> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {TICKET_COLUMNS} FROM ticket WHERE tenant_id = $1
               AND ($2 IS NULL OR status = $2) AND ($3 IS NULL OR priority = $3)
               AND ($4 IS NULL OR assignee = $4) AND ($5 IS NULL OR conversation_id = $5)
             ORDER BY created_at DESC, id DESC LIMIT $6"
        )))
        .bind(tenant_id)
        .bind(filter.status.as_deref())
        .bind(filter.priority.as_deref())
        .bind(filter.assignee.as_deref())
        .bind(filter.conversation_id.as_deref())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(ticket_row)
        .collect()
    }

    pub async fn ticket(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<TicketRow>, sqlx::Error> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {TICKET_COLUMNS} FROM ticket WHERE tenant_id = $1 AND id = $2"
        )))
        .bind(tenant_id)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .map(|r| ticket_row(&r))
        .transpose()
    }

    /// A ticket's notes: (author, text, created_at), oldest first.
    pub async fn ticket_notes(
        &self,
        ticket_id: &str,
    ) -> Result<Vec<(Option<String>, String, i64)>, sqlx::Error> {
        sqlx::query(
            "SELECT author, text, created_at FROM ticket_note WHERE ticket_id = $1
             ORDER BY created_at, id",
        )
        .bind(ticket_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok((
                r.try_get("author")?,
                r.try_get("text")?,
                r.try_get("created_at")?,
            ))
        })
        .collect()
    }

    /// Opens a ticket (by API): its id.
    pub async fn create_ticket(&self, t: NewTicket<'_>) -> Result<(String, bool), sqlx::Error> {
        let mut w = self.begin_write().await?;
        let opened = open_ticket(&mut w, t, now_ms()).await?;
        w.commit().await?;
        Ok(opened)
    }

    /// Changes a ticket; `false` when there is no such ticket of the tenant.
    pub async fn update_ticket(
        &self,
        tenant_id: &str,
        id: &str,
        change: &TicketChange,
        by: &str,
    ) -> Result<bool, sqlx::Error> {
        let now = now_ms();
        let mut w = self.begin_write().await?;
        let (assign, assignee) = match &change.assignee {
            Some(a) => (1i64, a.clone()),
            None => (0, None),
        };
        let updated = sqlx::query(
            "UPDATE ticket SET
                status = COALESCE($1, status),
                priority = COALESCE($2, priority),
                assignee = CASE WHEN $3 = 1 THEN $4 ELSE assignee END,
                subject = COALESCE($5, subject),
                solved_at = CASE WHEN $1 = 'solved' AND solved_at IS NULL THEN $6 ELSE solved_at END,
                closed_at = CASE WHEN $1 = 'closed' AND closed_at IS NULL THEN $6 ELSE closed_at END,
                updated_at = $6
             WHERE tenant_id = $7 AND id = $8",
        )
        .bind(change.status.as_deref())
        .bind(change.priority.as_deref())
        .bind(assign)
        .bind(assignee)
        .bind(change.subject.as_deref())
        .bind(now)
        .bind(tenant_id)
        .bind(id)
        .execute(&mut *w.tx)
        .await?
        .rows_affected()
            == 1;
        if !updated {
            return Ok(false);
        }
        if let Some(note) = &change.note {
            add_ticket_note(&mut w, id, Some(by), note, now).await?;
        }
        let detail = json!({
            "by": by,
            "status": change.status,
            "priority": change.priority,
            "assignee": change.assignee,
            "subject": change.subject,
            "note": change.note.is_some(),
        });
        record_event(
            &mut w.tx,
            Some(tenant_id),
            "ticket.updated",
            Some(id),
            &detail.to_string(),
        )
        .await?;
        w.commit().await?;
        Ok(true)
    }
}

/// Records `kind` about `subject` when a change happened; whether it did.
async fn audited(
    w: &mut WriteTx,
    changed: bool,
    tenant_id: &str,
    kind: &str,
    subject: &str,
    detail: Value,
) -> Result<bool, sqlx::Error> {
    if changed {
        record_event(
            &mut w.tx,
            Some(tenant_id),
            kind,
            Some(subject),
            &detail.to_string(),
        )
        .await?;
    }
    Ok(changed)
}

/// Raises a flag (one per message and direction: raising it again returns the first). Its id
/// and whether it is new.
pub async fn insert_flag(
    w: &mut WriteTx,
    f: NewFlag<'_>,
    now: i64,
) -> Result<(String, bool), sqlx::Error> {
    if let Some(row) = sqlx::query("SELECT id FROM flag WHERE message_id = $1 AND direction = $2")
        .bind(f.message_id)
        .bind(f.direction)
        .fetch_optional(&mut *w.tx)
        .await?
    {
        return Ok((row.try_get("id")?, false));
    }
    let id = new_id();
    let status = if f.shadow || f.action == "allow" {
        "shadow"
    } else {
        "open"
    };
    sqlx::query(
        "INSERT INTO flag (id, tenant_id, conversation_id, contact_id, message_id, direction,
                           action, shadow, status, policy_version, evidence, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(&id)
    .bind(f.tenant_id)
    .bind(f.conversation_id)
    .bind(f.contact_id)
    .bind(f.message_id)
    .bind(f.direction)
    .bind(f.action)
    .bind(i64::from(f.shadow))
    .bind(status)
    .bind(f.policy_version)
    .bind(f.evidence.to_string())
    .bind(now)
    .execute(&mut *w.tx)
    .await?;
    sqlx::query("UPDATE conversation SET flagged = 1 WHERE id = $1 AND $2 = 'open'")
        .bind(f.conversation_id)
        .bind(status)
        .execute(&mut *w.tx)
        .await?;
    record_event(
        &mut w.tx,
        Some(f.tenant_id),
        "flag.raised",
        Some(&id),
        &json!({ "action": f.action, "shadow": f.shadow, "direction": f.direction,
                  "conversation_id": f.conversation_id })
        .to_string(),
    )
    .await?;
    Ok((id, true))
}

/// Records a moderator's verdict on an open (or shadow) flag; `false` if it was judged already.
#[allow(clippy::too_many_arguments)]
pub async fn judge_flag(
    w: &mut WriteTx,
    tenant_id: &str,
    id: &str,
    verdict: &str,
    status: &str,
    text: Option<&str>,
    by: &str,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE flag SET status = $1, verdict = $2, verdict_text = $3, verdict_by = $4,
                verdict_at = $5
         WHERE tenant_id = $6 AND id = $7 AND verdict IS NULL",
    )
    .bind(status)
    .bind(verdict)
    .bind(text)
    .bind(by)
    .bind(now)
    .bind(tenant_id)
    .bind(id)
    .execute(&mut *w.tx)
    .await?
    .rows_affected()
        == 1;
    audited(
        w,
        done,
        tenant_id,
        "flag.verdict",
        id,
        json!({ "verdict": verdict, "by": by, "edited": text.is_some() }),
    )
    .await
}

/// Opens a ticket; for a conversation with an open ticket already, that one (a note says why it
/// was raised again). Its id and whether it is new.
pub async fn open_ticket(
    w: &mut WriteTx,
    t: NewTicket<'_>,
    now: i64,
) -> Result<(String, bool), sqlx::Error> {
    if let Some(conversation) = t.conversation_id
        && let Some(row) = sqlx::query(
            "SELECT id, priority FROM ticket WHERE conversation_id = $1
             AND status IN ('open', 'pending')",
        )
        .bind(conversation)
        .fetch_optional(&mut *w.tx)
        .await?
    {
        let id: String = row.try_get("id")?;
        let priority: String = row.try_get("priority")?;
        // An escalation more urgent than the open ticket raises its priority and targets.
        if rank(t.priority) > rank(&priority) {
            sqlx::query(
                "UPDATE ticket SET priority = $1, updated_at = $2,
                        first_response_due_at = CASE WHEN first_response_due_at < $4
                                                THEN first_response_due_at ELSE $4 END,
                        resolution_due_at = CASE WHEN resolution_due_at < $5
                                            THEN resolution_due_at ELSE $5 END
                 WHERE id = $3",
            )
            .bind(t.priority)
            .bind(now)
            .bind(&id)
            .bind(now + t.first_response_ms)
            .bind(now + t.resolution_ms)
            .execute(&mut *w.tx)
            .await?;
        }
        add_ticket_note(
            w,
            &id,
            t.created_by,
            &format!("Raised again ({}): {}", t.source, t.subject),
            now,
        )
        .await?;
        return Ok((id, false));
    }
    let id = new_id();
    sqlx::query(
        "INSERT INTO ticket (id, tenant_id, subject, source, priority, conversation_id, contact_id,
                             flag_id, first_response_due_at, resolution_due_at, created_by,
                             created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12)",
    )
    .bind(&id)
    .bind(t.tenant_id)
    .bind(t.subject)
    .bind(t.source)
    .bind(t.priority)
    .bind(t.conversation_id)
    .bind(t.contact_id)
    .bind(t.flag_id)
    .bind(now + t.first_response_ms)
    .bind(now + t.resolution_ms)
    .bind(t.created_by)
    .bind(now)
    .execute(&mut *w.tx)
    .await?;
    record_event(
        &mut w.tx,
        Some(t.tenant_id),
        "ticket.opened",
        Some(&id),
        &json!({ "source": t.source, "priority": t.priority,
                  "conversation_id": t.conversation_id })
        .to_string(),
    )
    .await?;
    Ok((id, true))
}

fn rank(priority: &str) -> u8 {
    match priority {
        "urgent" => 3,
        "high" => 2,
        "normal" => 1,
        _ => 0,
    }
}

pub async fn add_ticket_note(
    w: &mut WriteTx,
    ticket_id: &str,
    author: Option<&str>,
    text: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO ticket_note (id, ticket_id, author, text, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(new_id())
    .bind(ticket_id)
    .bind(author)
    .bind(text)
    .bind(now)
    .execute(&mut *w.tx)
    .await?;
    Ok(())
}

/// The first answer by a person in a conversation meets its open ticket's first-response target.
pub async fn ticket_answered(
    w: &mut WriteTx,
    conversation_id: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE ticket SET first_response_at = $1, updated_at = $1
         WHERE conversation_id = $2 AND first_response_at IS NULL AND status IN ('open', 'pending')",
    )
    .bind(now)
    .bind(conversation_id)
    .execute(&mut *w.tx)
    .await?;
    Ok(())
}

/// Hands a conversation to a person (`human`): the bot stops answering, program messages wait.
pub async fn hand_off(
    w: &mut WriteTx,
    tenant_id: &str,
    conversation_id: &str,
    by: &str,
    reason: &str,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let changed = sqlx::query(
        "UPDATE conversation SET status = 'human', handed_off_at = $1, updated_at = $1
         WHERE id = $2 AND tenant_id = $3 AND status = 'bot'",
    )
    .bind(now)
    .bind(conversation_id)
    .bind(tenant_id)
    .execute(&mut *w.tx)
    .await?
    .rows_affected()
        == 1;
    audited(
        w,
        changed,
        tenant_id,
        "conversation.handoff",
        conversation_id,
        json!({ "by": by, "reason": reason }),
    )
    .await
}

/// Blocks a contact: nothing more is answered or sent proactively; its running enrolments stop.
pub async fn block_contact(
    w: &mut WriteTx,
    tenant_id: &str,
    contact_id: &str,
    reason: &str,
    by: &str,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let changed = sqlx::query(
        "UPDATE contact SET blocked_at = $1, blocked_reason = $2
         WHERE id = $3 AND tenant_id = $4 AND blocked_at IS NULL",
    )
    .bind(now)
    .bind(reason)
    .bind(contact_id)
    .bind(tenant_id)
    .execute(&mut *w.tx)
    .await?
    .rows_affected()
        == 1;
    if changed {
        super::programs::stop_contact_enrollments(w, contact_id, "blocked", now).await?;
    }
    let detail = json!({ "by": by, "reason": reason });
    audited(w, changed, tenant_id, "contact.blocked", contact_id, detail).await
}

pub async fn unblock_contact(
    w: &mut WriteTx,
    tenant_id: &str,
    contact_id: &str,
    by: &str,
) -> Result<bool, sqlx::Error> {
    let changed = sqlx::query(
        "UPDATE contact SET blocked_at = NULL, blocked_reason = NULL
         WHERE id = $1 AND tenant_id = $2 AND blocked_at IS NOT NULL",
    )
    .bind(contact_id)
    .bind(tenant_id)
    .execute(&mut *w.tx)
    .await?
    .rows_affected()
        == 1;
    audited(
        w,
        changed,
        tenant_id,
        "contact.unblocked",
        contact_id,
        json!({ "by": by }),
    )
    .await
}

/// Releases a withheld program message (a moderator approved it, or edited it to `text`): it
/// takes the conversation's next `seq` and is queued for delivery. `false` when it is not
/// withheld any more, or its conversation is closed.
pub async fn release_withheld(
    w: &mut WriteTx,
    tenant_id: &str,
    message_id: &str,
    text: Option<&str>,
    by: &str,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let Some(held) = sqlx::query(
        "SELECT conversation_id, channel_id, text FROM message
         WHERE id = $1 AND tenant_id = $2 AND status IN ('held', 'blocked')",
    )
    .bind(message_id)
    .bind(tenant_id)
    .fetch_optional(&mut *w.tx)
    .await?
    else {
        return Ok(false);
    };
    let conversation_id: String = held.try_get("conversation_id")?;
    let channel_id: String = held.try_get("channel_id")?;
    let text = text.map_or_else(|| held.try_get::<String, _>("text"), |t| Ok(t.to_owned()))?;
    let Some(row) = sqlx::query(
        "UPDATE conversation SET last_seq = last_seq + 1, updated_at = $1
         WHERE id = $2 AND status <> 'closed' RETURNING last_seq, contact_id",
    )
    .bind(now)
    .bind(&conversation_id)
    .fetch_optional(&mut *w.tx)
    .await?
    else {
        return Ok(false);
    };
    let seq: i64 = row.try_get("last_seq")?;
    let contact_id: String = row.try_get("contact_id")?;
    let recipient: String = sqlx::query(
        "SELECT external_id FROM contact_identity WHERE contact_id = $1 AND channel_id = $2",
    )
    .bind(&contact_id)
    .bind(&channel_id)
    .fetch_one(&mut *w.tx)
    .await?
    .try_get("external_id")?;
    sqlx::query(
        "UPDATE message SET seq = $1, text = $2, status = 'queued', created_at = $3 WHERE id = $4",
    )
    .bind(seq)
    .bind(&text)
    .bind(now)
    .bind(message_id)
    .execute(&mut *w.tx)
    .await?;
    sqlx::query(
        "INSERT INTO delivery (id, tenant_id, channel_id, conversation_id, message_id, seq,
                               recipient, body, next_attempt_at, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $9)",
    )
    .bind(new_id())
    .bind(tenant_id)
    .bind(&channel_id)
    .bind(&conversation_id)
    .bind(message_id)
    .bind(seq)
    .bind(&recipient)
    .bind(&text)
    .bind(now)
    .execute(&mut *w.tx)
    .await?;
    audited(
        w,
        true,
        tenant_id,
        "message.released",
        message_id,
        json!({ "by": by, "edited": text != held.try_get::<String, _>("text")? }),
    )
    .await
}

/// A withheld program message is never to be sent (a moderator rejected it).
pub async fn discard_withheld(
    w: &mut WriteTx,
    tenant_id: &str,
    message_id: &str,
) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE message SET status = 'rejected'
         WHERE id = $1 AND tenant_id = $2 AND status IN ('held', 'blocked')",
    )
    .bind(message_id)
    .bind(tenant_id)
    .execute(&mut *w.tx)
    .await?
    .rows_affected()
        == 1)
}

/// Gives a conversation back to the bot (a moderator approved what was held, or handed back).
pub async fn hand_back(
    w: &mut WriteTx,
    tenant_id: &str,
    conversation_id: &str,
    by: &str,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let changed = sqlx::query(
        "UPDATE conversation SET status = 'bot', assignee = NULL, handed_off_at = NULL,
                updated_at = $1
         WHERE id = $2 AND tenant_id = $3 AND status = 'human'",
    )
    .bind(now)
    .bind(conversation_id)
    .bind(tenant_id)
    .execute(&mut *w.tx)
    .await?
    .rows_affected()
        == 1;
    audited(
        w,
        changed,
        tenant_id,
        "conversation.handback",
        conversation_id,
        json!({ "by": by }),
    )
    .await
}

/// Assigns a conversation to a person's key (`None` unassigns). A conversation with the bot
/// goes to the person; its open ticket, if any, is assigned with it. `false` when the
/// conversation is not the tenant's or is closed.
pub async fn assign_conversation(
    w: &mut WriteTx,
    tenant_id: &str,
    conversation_id: &str,
    assignee: Option<&str>,
    by: &str,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let changed = match assignee {
        Some(key) => sqlx::query(
            "UPDATE conversation SET assignee = $1, status = 'human',
                    handed_off_at = COALESCE(handed_off_at, $2), updated_at = $2
             WHERE id = $3 AND tenant_id = $4 AND status <> 'closed'",
        )
        .bind(key)
        .bind(now)
        .bind(conversation_id)
        .bind(tenant_id)
        .execute(&mut *w.tx)
        .await?
        .rows_affected(),
        None => sqlx::query(
            "UPDATE conversation SET assignee = NULL, updated_at = $1
             WHERE id = $2 AND tenant_id = $3 AND status <> 'closed'",
        )
        .bind(now)
        .bind(conversation_id)
        .bind(tenant_id)
        .execute(&mut *w.tx)
        .await?
        .rows_affected(),
    } == 1;
    if changed {
        sqlx::query(
            "UPDATE ticket SET assignee = $1, updated_at = $2
             WHERE conversation_id = $3 AND tenant_id = $4 AND status IN ('open', 'pending')",
        )
        .bind(assignee)
        .bind(now)
        .bind(conversation_id)
        .bind(tenant_id)
        .execute(&mut *w.tx)
        .await?;
    }
    audited(
        w,
        changed,
        tenant_id,
        "conversation.assigned",
        conversation_id,
        json!({ "assignee": assignee, "by": by }),
    )
    .await
}

impl Store {
    /// Whether `key_id` is a live admin or moderator key of the tenant (who can be assigned).
    pub async fn is_staff_key(&self, tenant_id: &str, key_id: &str) -> Result<bool, sqlx::Error> {
        Ok(sqlx::query(
            "SELECT 1 FROM api_key WHERE id = $1 AND tenant_id = $2
               AND role IN ('admin', 'moderator') AND revoked_at IS NULL",
        )
        .bind(key_id)
        .bind(tenant_id)
        .fetch_optional(&self.pool)
        .await?
        .is_some())
    }

    /// A conversation's status and assignee.
    pub async fn conversation_state(
        &self,
        tenant_id: &str,
        conversation_id: &str,
    ) -> Result<Option<(String, Option<String>)>, sqlx::Error> {
        sqlx::query("SELECT status, assignee FROM conversation WHERE id = $1 AND tenant_id = $2")
            .bind(conversation_id)
            .bind(tenant_id)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| Ok((r.try_get("status")?, r.try_get("assignee")?)))
            .transpose()
    }
}

/// A moderator takes a conversation: `human`, assigned to them.
pub async fn take_over(
    w: &mut WriteTx,
    tenant_id: &str,
    conversation_id: &str,
    by: &str,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let changed = sqlx::query(
        "UPDATE conversation SET status = 'human', assignee = $1,
                handed_off_at = COALESCE(handed_off_at, $2), updated_at = $2
         WHERE id = $3 AND tenant_id = $4 AND status <> 'closed'",
    )
    .bind(by)
    .bind(now)
    .bind(conversation_id)
    .bind(tenant_id)
    .execute(&mut *w.tx)
    .await?
    .rows_affected()
        == 1;
    if changed {
        sqlx::query(
            "UPDATE ticket SET assignee = $1, updated_at = $2
             WHERE conversation_id = $3 AND status IN ('open', 'pending') AND assignee IS NULL",
        )
        .bind(by)
        .bind(now)
        .bind(conversation_id)
        .execute(&mut *w.tx)
        .await?;
    }
    let detail = json!({ "by": by });
    audited(
        w,
        changed,
        tenant_id,
        "conversation.taken_over",
        conversation_id,
        detail,
    )
    .await
}

impl Store {
    /// The contact of one of the tenant's conversations.
    pub async fn conversation_contact(
        &self,
        tenant_id: &str,
        conversation_id: &str,
    ) -> Result<Option<String>, sqlx::Error> {
        sqlx::query("SELECT contact_id FROM conversation WHERE id = $1 AND tenant_id = $2")
            .bind(conversation_id)
            .bind(tenant_id)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| r.try_get("contact_id"))
            .transpose()
    }
}

/// A conversation escalated to a person.
pub struct Escalation<'a> {
    pub tenant_id: &'a str,
    pub conversation_id: &'a str,
    pub contact_id: &'a str,
    pub flag_id: Option<&'a str>,
    /// `crisis`, `moderation_hold`, `answer_held`, `request`, `command`, …
    pub source: &'a str,
    pub priority: &'a str,
    pub subject: &'a str,
    /// Who escalated: `moderation`, `contact`, a key id.
    pub by: &'a str,
    /// SLA targets in ms after opening: first response, resolution.
    pub targets: (i64, i64),
}

/// A ticket (or a note on the conversation's open one) and the hand-off to a person.
pub async fn escalate(w: &mut WriteTx, e: Escalation<'_>, now: i64) -> Result<String, sqlx::Error> {
    let (ticket, _) = open_ticket(
        w,
        NewTicket {
            tenant_id: e.tenant_id,
            subject: e.subject,
            source: e.source,
            priority: e.priority,
            conversation_id: Some(e.conversation_id),
            contact_id: Some(e.contact_id),
            flag_id: e.flag_id,
            created_by: Some(e.by),
            first_response_ms: e.targets.0,
            resolution_ms: e.targets.1,
        },
        now,
    )
    .await?;
    hand_off(w, e.tenant_id, e.conversation_id, e.by, e.source, now).await?;
    Ok(ticket)
}

/// Sets a conversation's count of answers in a row that were not from the knowledge.
pub async fn set_fallbacks(
    w: &mut WriteTx,
    conversation_id: &str,
    count: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE conversation SET fallbacks = $1 WHERE id = $2")
        .bind(count)
        .bind(conversation_id)
        .execute(&mut *w.tx)
        .await?;
    Ok(())
}

impl Store {
    /// Each tenant's current policy: (tenant, JSON text).
    pub async fn current_moderation_policies(&self) -> Result<Vec<(String, String)>, sqlx::Error> {
        sqlx::query(
            "SELECT p.tenant_id, p.policy FROM moderation_policy p
             WHERE p.version = (SELECT MAX(q.version) FROM moderation_policy q
                                WHERE q.tenant_id = p.tenant_id)",
        )
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| Ok((r.try_get("tenant_id")?, r.try_get("policy")?)))
        .collect()
    }
}

/// The hand-off timeout's sweep of one tenant (`$1` now, `$2` tenant, `$3` the cut-off): its
/// conversations with a person, found by `conversation_in_handoff` (migration 0015) — the sweep
/// runs for every tenant every minute, and read all of a tenant's conversations before.
pub(super) const RESUME_STALE_HANDOFFS: &str =
    "UPDATE conversation SET status = 'bot', assignee = NULL, handed_off_at = NULL,
            updated_at = $1
     WHERE tenant_id = $2 AND status = 'human' AND handed_off_at IS NOT NULL
       AND COALESCE((SELECT MAX(m.created_at) FROM message m
                     WHERE m.conversation_id = conversation.id AND m.author = 'agent'),
                    handed_off_at) < $3
     RETURNING id";

/// Hands back to the bot the tenant's conversations with a person silent since before `before`
/// (the hand-off, or the person's last message); their ids.
pub async fn resume_stale_handoffs(
    w: &mut WriteTx,
    tenant_id: &str,
    before: i64,
    now: i64,
) -> Result<Vec<String>, sqlx::Error> {
    let ids: Vec<String> = sqlx::query(RESUME_STALE_HANDOFFS)
        .bind(now)
        .bind(tenant_id)
        .bind(before)
        .fetch_all(&mut *w.tx)
        .await?
        .iter()
        .map(|r| r.try_get("id"))
        .collect::<Result<_, _>>()?;
    for id in &ids {
        record_event(
            &mut w.tx,
            Some(tenant_id),
            "conversation.handback",
            Some(id),
            &json!({ "by": "timeout" }).to_string(),
        )
        .await?;
    }
    Ok(ids)
}
