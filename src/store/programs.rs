//! Programs, enrolments and the fire table (see `crate::programs` for what they mean).
//!
//! Reads are methods on [`Store`]; the writes that make up one move of an enrolment are free
//! functions on a [`WriteTx`], so the engine composes them into one transaction: the fire claimed,
//! the messages and their outbox rows, the enrolment advanced, the next fire added.

use std::collections::HashMap;

use serde_json::{Map, Value};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::tenants::record_event;
use super::{Backend, Store, WriteTx, new_id, now_ms};

/// A program as listed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProgramRow {
    pub id: String,
    pub name: String,
    pub current_version: i64,
    pub created_at: i64,
    pub updated_at: i64,
    #[serde(skip)]
    pub definition: String,
}

fn program_row(r: &AnyRow) -> Result<ProgramRow, sqlx::Error> {
    Ok(ProgramRow {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        current_version: r.try_get("current_version")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        definition: r.try_get("definition")?,
    })
}

/// An enrolment as stored.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EnrollmentRow {
    pub id: String,
    #[serde(skip)]
    pub tenant_id: String,
    pub program_id: String,
    pub version: i64,
    pub contact_id: String,
    pub channel_id: String,
    pub status: String,
    pub step: String,
    pub waiting: String,
    #[serde(skip)]
    pub epoch: i64,
    #[serde(skip)]
    pub reprompts: i64,
    pub steps_done: i64,
    pub nudges: i64,
    pub at_risk: bool,
    pub streak: i64,
    pub best_streak: i64,
    #[serde(skip)]
    pub streak_day: Option<String>,
    pub badges: Vec<String>,
    #[serde(skip)]
    pub answers: Map<String, Value>,
    pub stopped_reason: Option<String>,
    pub started_at: i64,
    pub completed_at: Option<i64>,
    /// The check-in fire whose answer this enrolment awaits.
    #[serde(skip)]
    pub checkin_open: Option<String>,
}

pub(super) const ENROLLMENT_COLUMNS: &str = "id, tenant_id, program_id, version, contact_id, channel_id, status, step, waiting, epoch, reprompts, steps_done, nudges, at_risk, streak, best_streak, streak_day, badges, answers, stopped_reason, started_at, completed_at, checkin_open";

fn json_map(text: &str) -> Map<String, Value> {
    match serde_json::from_str(text) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

fn json_strings(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_default()
}

pub(super) fn enrollment_row(r: &AnyRow) -> Result<EnrollmentRow, sqlx::Error> {
    Ok(EnrollmentRow {
        id: r.try_get("id")?,
        tenant_id: r.try_get("tenant_id")?,
        program_id: r.try_get("program_id")?,
        version: r.try_get("version")?,
        contact_id: r.try_get("contact_id")?,
        channel_id: r.try_get("channel_id")?,
        status: r.try_get("status")?,
        step: r.try_get("step")?,
        waiting: r.try_get("waiting")?,
        epoch: r.try_get("epoch")?,
        reprompts: r.try_get("reprompts")?,
        steps_done: r.try_get("steps_done")?,
        nudges: r.try_get("nudges")?,
        at_risk: r.try_get::<i64, _>("at_risk")? != 0,
        streak: r.try_get("streak")?,
        best_streak: r.try_get("best_streak")?,
        streak_day: r.try_get("streak_day")?,
        badges: json_strings(&r.try_get::<String, _>("badges")?),
        answers: json_map(&r.try_get::<String, _>("answers")?),
        stopped_reason: r.try_get("stopped_reason")?,
        started_at: r.try_get("started_at")?,
        completed_at: r.try_get("completed_at")?,
        checkin_open: r.try_get("checkin_open")?,
    })
}

/// What the engine needs of a contact.
#[derive(Debug, Clone)]
pub struct ContactRow {
    pub id: String,
    pub tenant_id: String,
    pub display_name: Option<String>,
    pub timezone: Option<String>,
    pub fields: Map<String, Value>,
    pub tags: Vec<String>,
    pub quiet_hours: Option<String>,
    pub opted_out_at: Option<i64>,
}

/// A fire as stored.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FireRow {
    pub id: String,
    #[serde(skip)]
    pub tenant_id: String,
    pub enrollment_id: String,
    #[serde(skip)]
    pub contact_id: String,
    pub kind: String,
    pub step: String,
    pub version: i64,
    pub epoch: i64,
    pub intended_at: i64,
    pub due_at: i64,
    pub status: String,
    pub attempts: i64,
    pub reason: Option<String>,
    pub created_at: i64,
}

const FIRE_COLUMNS: &str = "id, tenant_id, enrollment_id, contact_id, kind, step, version, epoch, intended_at, due_at, status, attempts, reason, created_at";

fn fire_row(r: &AnyRow) -> Result<FireRow, sqlx::Error> {
    Ok(FireRow {
        id: r.try_get("id")?,
        tenant_id: r.try_get("tenant_id")?,
        enrollment_id: r.try_get("enrollment_id")?,
        contact_id: r.try_get("contact_id")?,
        kind: r.try_get("kind")?,
        step: r.try_get("step")?,
        version: r.try_get("version")?,
        epoch: r.try_get("epoch")?,
        intended_at: r.try_get("intended_at")?,
        due_at: r.try_get("due_at")?,
        status: r.try_get("status")?,
        attempts: r.try_get("attempts")?,
        reason: r.try_get("reason")?,
        created_at: r.try_get("created_at")?,
    })
}

/// Where a program's messages to a contact go: the open conversation on the enrolment's channel.
#[derive(Debug, Clone)]
pub struct Thread {
    pub conversation_id: String,
    pub status: String,
    pub last_inbound_at: Option<i64>,
    pub channel_kind: String,
    pub recipient: String,
    pub unreachable: Option<String>,
    /// The conversation is not open yet: it is opened (with this id) when written to.
    pub create: bool,
}

/// Per-step counts for the funnel.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FunnelRow {
    pub step: String,
    pub reached: i64,
    pub answered: i64,
    /// Enrolments stopped while at this step.
    pub dropped: i64,
}

impl Store {
    pub async fn create_program(
        &self,
        tenant_id: &str,
        name: &str,
        definition: &str,
    ) -> Result<ProgramRow, sqlx::Error> {
        let now = now_ms();
        let id = new_id();
        let mut w = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO program (id, tenant_id, name, definition, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $5)",
        )
        .bind(&id)
        .bind(tenant_id)
        .bind(name)
        .bind(definition)
        .bind(now)
        .execute(&mut *w.tx)
        .await?;
        record_event(
            &mut w.tx,
            Some(tenant_id),
            "program.created",
            Some(&id),
            "{}",
        )
        .await?;
        w.commit().await?;
        Ok(ProgramRow {
            id,
            name: name.to_owned(),
            current_version: 0,
            created_at: now,
            updated_at: now,
            definition: definition.to_owned(),
        })
    }

    pub async fn update_program(
        &self,
        tenant_id: &str,
        id: &str,
        name: &str,
        definition: &str,
    ) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE program SET name = $1, definition = $2, updated_at = $3
             WHERE id = $4 AND tenant_id = $5 AND deleted_at IS NULL",
        )
        .bind(name)
        .bind(definition)
        .bind(now_ms())
        .bind(id)
        .bind(tenant_id)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn program(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<ProgramRow>, sqlx::Error> {
        sqlx::query(
            "SELECT id, name, current_version, created_at, updated_at, definition FROM program
             WHERE id = $1 AND tenant_id = $2 AND deleted_at IS NULL",
        )
        .bind(id)
        .bind(tenant_id)
        .fetch_optional(&self.pool)
        .await?
        .map(|r| program_row(&r))
        .transpose()
    }

    pub async fn programs(&self, tenant_id: &str) -> Result<Vec<ProgramRow>, sqlx::Error> {
        sqlx::query(
            "SELECT id, name, current_version, created_at, updated_at, definition FROM program
             WHERE tenant_id = $1 AND deleted_at IS NULL ORDER BY name, id",
        )
        .bind(tenant_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(program_row)
        .collect()
    }

    /// Publishes the draft as a new version; its number, or `None` for no such program.
    pub async fn publish_program(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<i64>, sqlx::Error> {
        let now = now_ms();
        let mut w = self.begin_write().await?;
        let Some(row) = sqlx::query(
            "UPDATE program SET current_version = current_version + 1, updated_at = $1
             WHERE id = $2 AND tenant_id = $3 AND deleted_at IS NULL
             RETURNING current_version, definition",
        )
        .bind(now)
        .bind(id)
        .bind(tenant_id)
        .fetch_optional(&mut *w.tx)
        .await?
        else {
            return Ok(None);
        };
        let version: i64 = row.try_get("current_version")?;
        let definition: String = row.try_get("definition")?;
        sqlx::query(
            "INSERT INTO program_version (program_id, version, definition, published_at)
             VALUES ($1, $2, $3, $4)",
        )
        .bind(id)
        .bind(version)
        .bind(&definition)
        .bind(now)
        .execute(&mut *w.tx)
        .await?;
        record_event(
            &mut w.tx,
            Some(tenant_id),
            "program.published",
            Some(id),
            &serde_json::json!({ "version": version }).to_string(),
        )
        .await?;
        w.commit().await?;
        Ok(Some(version))
    }

    /// Deletes a program: its running enrolments are stopped and their fires cancelled.
    pub async fn delete_program(&self, tenant_id: &str, id: &str) -> Result<bool, sqlx::Error> {
        let now = now_ms();
        let mut w = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE program SET deleted_at = $1 WHERE id = $2 AND tenant_id = $3 AND deleted_at IS NULL",
        )
        .bind(now)
        .bind(id)
        .bind(tenant_id)
        .execute(&mut *w.tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query(
            "UPDATE fire SET status = 'cancelled', reason = 'program_deleted', done_at = $1
             WHERE status = 'pending' AND enrollment_id IN
                   (SELECT id FROM enrollment WHERE program_id = $2 AND status IN ('active', 'paused'))",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *w.tx)
        .await?;
        sqlx::query(
            "UPDATE enrollment SET status = 'stopped', stopped_reason = 'program_deleted', updated_at = $1
             WHERE program_id = $2 AND status IN ('active', 'paused')",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *w.tx)
        .await?;
        record_event(
            &mut w.tx,
            Some(tenant_id),
            "program.deleted",
            Some(id),
            "{}",
        )
        .await?;
        w.commit().await?;
        Ok(true)
    }

    /// A published version's definition.
    pub async fn program_version(
        &self,
        program_id: &str,
        version: i64,
    ) -> Result<Option<String>, sqlx::Error> {
        sqlx::query("SELECT definition FROM program_version WHERE program_id = $1 AND version = $2")
            .bind(program_id)
            .bind(version)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| r.try_get("definition"))
            .transpose()
    }

    /// Published programs of a tenant: (id, current version).
    pub async fn published_programs(
        &self,
        tenant_id: &str,
    ) -> Result<Vec<(String, i64)>, sqlx::Error> {
        sqlx::query(
            "SELECT id, current_version FROM program
             WHERE tenant_id = $1 AND deleted_at IS NULL AND current_version > 0",
        )
        .bind(tenant_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| Ok((r.try_get("id")?, r.try_get("current_version")?)))
        .collect()
    }

    pub async fn enrollment(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<EnrollmentRow>, sqlx::Error> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ENROLLMENT_COLUMNS} FROM enrollment WHERE id = $1 AND tenant_id = $2"
        )))
        .bind(id)
        .bind(tenant_id)
        .fetch_optional(&self.pool)
        .await?
        .map(|r| enrollment_row(&r))
        .transpose()
    }

    pub async fn contact_enrollments(
        &self,
        tenant_id: &str,
        contact_id: &str,
    ) -> Result<Vec<EnrollmentRow>, sqlx::Error> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ENROLLMENT_COLUMNS} FROM enrollment WHERE contact_id = $1 AND tenant_id = $2
             ORDER BY started_at DESC, id"
        )))
        .bind(contact_id)
        .bind(tenant_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(enrollment_row)
        .collect()
    }

    pub async fn contact_row(&self, contact_id: &str) -> Result<Option<ContactRow>, sqlx::Error> {
        contact_row(&self.pool, contact_id).await
    }

    /// Sets a contact's time zone, fields (merged; `null` removes one) and display name.
    pub async fn update_contact(
        &self,
        tenant_id: &str,
        contact_id: &str,
        timezone: Option<Option<&str>>,
        fields: Option<&Map<String, Value>>,
        display_name: Option<&str>,
        quiet_hours: Option<Option<&str>>,
    ) -> Result<bool, sqlx::Error> {
        let mut w = self.begin_write().await?;
        let Some(current) = contact_row(&mut *w.tx, contact_id).await? else {
            return Ok(false);
        };
        if current.tenant_id != tenant_id {
            return Ok(false);
        }
        let mut merged = current.fields.clone();
        if let Some(fields) = fields {
            for (k, v) in fields {
                if v.is_null() {
                    merged.remove(k);
                } else {
                    merged.insert(k.clone(), v.clone());
                }
            }
        }
        sqlx::query(
            "UPDATE contact SET timezone = $1, fields = $2, display_name = $3, quiet_hours = $4
             WHERE id = $5",
        )
        .bind(match timezone {
            Some(tz) => tz.map(str::to_owned),
            None => current.timezone.clone(),
        })
        .bind(Value::Object(merged).to_string())
        .bind(display_name.map(str::to_owned).or(current.display_name))
        .bind(match quiet_hours {
            Some(q) => q.map(str::to_owned),
            None => current.quiet_hours.clone(),
        })
        .bind(contact_id)
        .execute(&mut *w.tx)
        .await?;
        w.commit().await?;
        Ok(true)
    }

    /// The contact behind a channel identity, created (with the identity) if new.
    pub async fn contact_for_identity(
        &self,
        tenant_id: &str,
        channel_id: &str,
        external_id: &str,
    ) -> Result<String, sqlx::Error> {
        let select =
            "SELECT contact_id FROM contact_identity WHERE channel_id = $1 AND external_id = $2";
        if let Some(row) = sqlx::query(select)
            .bind(channel_id)
            .bind(external_id)
            .fetch_optional(&self.pool)
            .await?
        {
            return row.try_get("contact_id");
        }
        let mut w = self.begin_write().await?;
        let contact_id = super::messages::new_contact(
            &mut w,
            tenant_id,
            channel_id,
            external_id,
            None,
            now_ms(),
        )
        .await?;
        w.commit().await?;
        Ok(contact_id)
    }

    /// The channel a contact was last heard on (their latest conversation's), if any.
    pub async fn contact_last_channel(
        &self,
        contact_id: &str,
    ) -> Result<Option<String>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT channel_id FROM conversation WHERE contact_id = $1
             ORDER BY COALESCE(last_inbound_at, created_at) DESC LIMIT 1",
        )
        .bind(contact_id)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(row) = row {
            return row.try_get("channel_id").map(Some);
        }
        sqlx::query(
            "SELECT channel_id FROM contact_identity WHERE contact_id = $1 ORDER BY created_at DESC LIMIT 1",
        )
        .bind(contact_id)
        .fetch_optional(&self.pool)
        .await?
        .map(|r| r.try_get("channel_id"))
        .transpose()
    }

    /// Records an event from the core platform in the audit log.
    pub async fn record_contact_event(
        &self,
        tenant_id: &str,
        contact_id: &str,
        name: &str,
        payload: Option<&Value>,
    ) -> Result<(), sqlx::Error> {
        let mut w = self.begin_write().await?;
        record_event(
            &mut w.tx,
            Some(tenant_id),
            "contact.event",
            Some(contact_id),
            &serde_json::json!({ "name": name, "payload": payload }).to_string(),
        )
        .await?;
        w.commit().await
    }

    /// Replaces the `programs` member of a tenant's settings (time zone, quiet hours, cap).
    pub async fn set_program_settings(
        &self,
        tenant_id: &str,
        settings: &Value,
    ) -> Result<(), sqlx::Error> {
        let mut w = self.begin_write().await?;
        let text: String = sqlx::query("SELECT settings FROM tenant WHERE id = $1")
            .bind(tenant_id)
            .fetch_one(&mut *w.tx)
            .await?
            .try_get("settings")?;
        let mut all = json_map(&text);
        all.insert("programs".into(), settings.clone());
        sqlx::query("UPDATE tenant SET settings = $1 WHERE id = $2")
            .bind(Value::Object(all).to_string())
            .bind(tenant_id)
            .execute(&mut *w.tx)
            .await?;
        record_event(
            &mut w.tx,
            Some(tenant_id),
            "programs.settings",
            None,
            &settings.to_string(),
        )
        .await?;
        w.commit().await
    }

    /// When the next pending fire is due.
    pub async fn next_fire_due(&self) -> Result<Option<i64>, sqlx::Error> {
        sqlx::query("SELECT MIN(due_at) AS due FROM fire WHERE status = 'pending'")
            .fetch_one(&self.pool)
            .await?
            .try_get("due")
    }

    pub async fn fires_of(&self, enrollment_id: &str) -> Result<Vec<FireRow>, sqlx::Error> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {FIRE_COLUMNS} FROM fire WHERE enrollment_id = $1 ORDER BY created_at, id"
        )))
        .bind(enrollment_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(fire_row)
        .collect()
    }

    /// Enrolments by status, and the funnel, of a program.
    pub async fn program_stats(
        &self,
        program_id: &str,
    ) -> Result<(Vec<(String, i64)>, Vec<FunnelRow>, Vec<i64>), sqlx::Error> {
        let statuses = sqlx::query(ENROLLMENTS_BY_STATUS)
            .bind(program_id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| Ok((r.try_get("status")?, r.try_get("n")?)))
            .collect::<Result<Vec<(String, i64)>, sqlx::Error>>()?;
        let funnel: Vec<FunnelRow> = sqlx::query(
            "SELECT step, COUNT(*) AS reached, COUNT(answered_at) AS answered
             FROM step_visit WHERE program_id = $1 GROUP BY step",
        )
        .bind(program_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(FunnelRow {
                step: r.try_get("step")?,
                reached: r.try_get("reached")?,
                answered: r.try_get("answered")?,
                dropped: 0,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let stopped_at = sqlx::query(STOPPED_BY_STEP)
            .bind(program_id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| Ok((r.try_get::<String, _>("step")?, r.try_get::<i64, _>("n")?)))
            .collect::<Result<HashMap<String, i64>, sqlx::Error>>()?;
        let funnel = funnel
            .into_iter()
            .map(|mut f| {
                f.dropped = stopped_at.get(&f.step).copied().unwrap_or(0);
                f
            })
            .collect();
        let durations = sqlx::query(COMPLETION_TIMES)
            .bind(program_id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| r.try_get("took"))
            .collect::<Result<Vec<i64>, sqlx::Error>>()?;
        Ok((statuses, funnel, durations))
    }
}

// A program's statistics and engagement: each finds the program's enrolments by
// `enrollment_by_program` (migration 0015), not by reading every enrolment of every program; the
// test `admin_and_sweep_lookups_are_searched_by_their_index` holds SQLite to it.

/// A program's enrolments counted by status.
pub(super) const ENROLLMENTS_BY_STATUS: &str =
    "SELECT status, COUNT(*) AS n FROM enrollment WHERE program_id = $1 GROUP BY status";

/// Where a program's stopped enrolments stopped.
pub(super) const STOPPED_BY_STEP: &str = "SELECT step, COUNT(*) AS n FROM enrollment
     WHERE program_id = $1 AND status = 'stopped' GROUP BY step";

/// How long a program's completed enrolments took.
pub(super) const COMPLETION_TIMES: &str = "SELECT completed_at - started_at AS took FROM enrollment
     WHERE program_id = $1 AND status = 'completed' AND completed_at IS NOT NULL";

/// A program's check-ins and nudges sent (or held back) and answered.
pub(super) const ENGAGEMENT: &str =
    "SELECT f.kind, f.step, f.status, f.reason, COUNT(*) AS n, COUNT(f.answered_at) AS answered
     FROM fire f JOIN enrollment e ON e.id = f.enrollment_id
     WHERE e.program_id = $1 AND f.kind IN ('checkin', 'nudge')
       AND ((f.status = 'done' AND f.sent = 1) OR (f.status = 'skipped' AND f.reason = 'holdout'))
     GROUP BY f.kind, f.step, f.status, f.reason";

/// Proactive sends of one kind in a program, and how many the contact answered: by `step`
/// (a check-in's id, or `nudge-0` … for nudges) and fire status/reason.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EngagementRow {
    pub kind: String,
    pub step: String,
    pub status: String,
    pub reason: Option<String>,
    pub count: i64,
    pub answered: i64,
}

impl Store {
    /// Check-ins sent and answered; nudges sent, held back, and answered within a day.
    pub async fn program_engagement(
        &self,
        program_id: &str,
    ) -> Result<Vec<EngagementRow>, sqlx::Error> {
        sqlx::query(ENGAGEMENT)
            .bind(program_id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| {
                Ok(EngagementRow {
                    kind: r.try_get("kind")?,
                    step: r.try_get("step")?,
                    status: r.try_get("status")?,
                    reason: r.try_get("reason")?,
                    count: r.try_get("n")?,
                    answered: r.try_get("answered")?,
                })
            })
            .collect()
    }
}

pub(super) const CONTACT_COLUMNS: &str =
    "id, tenant_id, display_name, timezone, fields, tags, quiet_hours, opted_out_at";

pub(super) fn contact_from(r: &AnyRow) -> Result<ContactRow, sqlx::Error> {
    Ok(ContactRow {
        id: r.try_get("id")?,
        tenant_id: r.try_get("tenant_id")?,
        display_name: r.try_get("display_name")?,
        timezone: r.try_get("timezone")?,
        fields: json_map(&r.try_get::<String, _>("fields")?),
        tags: json_strings(&r.try_get::<String, _>("tags")?),
        quiet_hours: r.try_get("quiet_hours")?,
        opted_out_at: r.try_get("opted_out_at")?,
    })
}

pub async fn contact_row<'e, E>(
    exec: E,
    contact_id: &str,
) -> Result<Option<ContactRow>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {CONTACT_COLUMNS} FROM contact WHERE id = $1"
    )))
    .bind(contact_id)
    .fetch_optional(exec)
    .await?
    .map(|r| contact_from(&r))
    .transpose()
}

/// The enrolment, read inside the transaction that will move it.
pub async fn enrollment_for_update(
    w: &mut WriteTx,
    backend: Backend,
    id: &str,
) -> Result<Option<EnrollmentRow>, sqlx::Error> {
    let lock = match backend {
        Backend::Postgres => " FOR UPDATE",
        Backend::Sqlite => "",
    };
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {ENROLLMENT_COLUMNS} FROM enrollment WHERE id = $1{lock}"
    )))
    .bind(id)
    .fetch_optional(&mut *w.tx)
    .await?
    .map(|r| enrollment_row(&r))
    .transpose()
}

/// The running (active or paused) enrolment of a contact in a program.
pub async fn running_enrollment(
    w: &mut WriteTx,
    program_id: &str,
    contact_id: &str,
) -> Result<Option<EnrollmentRow>, sqlx::Error> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {ENROLLMENT_COLUMNS} FROM enrollment
         WHERE program_id = $1 AND contact_id = $2 AND status IN ('active', 'paused')"
    )))
    .bind(program_id)
    .bind(contact_id)
    .fetch_optional(&mut *w.tx)
    .await?
    .map(|r| enrollment_row(&r))
    .transpose()
}

/// A contact's active enrolments (inside a transaction).
pub async fn active_enrollments(
    w: &mut WriteTx,
    contact_id: &str,
) -> Result<Vec<EnrollmentRow>, sqlx::Error> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {ENROLLMENT_COLUMNS} FROM enrollment
         WHERE contact_id = $1 AND status = 'active' ORDER BY updated_at DESC, id"
    )))
    .bind(contact_id)
    .fetch_all(&mut *w.tx)
    .await?
    .iter()
    .map(enrollment_row)
    .collect()
}

pub async fn insert_enrollment(w: &mut WriteTx, e: &EnrollmentRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO enrollment (id, tenant_id, program_id, version, contact_id, channel_id, status,
                                 step, waiting, epoch, started_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11)",
    )
    .bind(&e.id)
    .bind(&e.tenant_id)
    .bind(&e.program_id)
    .bind(e.version)
    .bind(&e.contact_id)
    .bind(&e.channel_id)
    .bind(&e.status)
    .bind(&e.step)
    .bind(&e.waiting)
    .bind(e.epoch)
    .bind(e.started_at)
    .execute(&mut *w.tx)
    .await?;
    Ok(())
}

/// Writes the enrolment's moved state. The update is guarded by the epoch it was read at: a
/// concurrent move (another process, a duplicate fire) makes it affect nothing → `false`.
pub async fn save_enrollment(
    w: &mut WriteTx,
    e: &EnrollmentRow,
    read_epoch: i64,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE enrollment SET status = $1, step = $2, waiting = $3, epoch = $4, reprompts = $5,
                steps_done = $6, nudges = $7, at_risk = $8, streak = $9, best_streak = $10,
                streak_day = $11, badges = $12, answers = $13, stopped_reason = $14,
                completed_at = $15, updated_at = $16, checkin_open = $19
         WHERE id = $17 AND epoch = $18",
    )
    .bind(&e.status)
    .bind(&e.step)
    .bind(&e.waiting)
    .bind(e.epoch)
    .bind(e.reprompts)
    .bind(e.steps_done)
    .bind(e.nudges)
    .bind(i64::from(e.at_risk))
    .bind(e.streak)
    .bind(e.best_streak)
    .bind(&e.streak_day)
    .bind(serde_json::to_string(&e.badges).unwrap_or_else(|_| "[]".into()))
    .bind(Value::Object(e.answers.clone()).to_string())
    .bind(&e.stopped_reason)
    .bind(e.completed_at)
    .bind(now)
    .bind(&e.id)
    .bind(read_epoch)
    .bind(&e.checkin_open)
    .execute(&mut *w.tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Adds a fire (nothing if the same one — enrolment, kind, step, version, epoch — exists).
#[allow(clippy::too_many_arguments)]
pub async fn add_fire(
    w: &mut WriteTx,
    e: &EnrollmentRow,
    kind: &str,
    step: &str,
    epoch: i64,
    due_at: i64,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO fire (id, tenant_id, enrollment_id, contact_id, kind, step, version, epoch,
                           intended_at, due_at, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $10)
         ON CONFLICT (enrollment_id, kind, step, version, epoch) DO NOTHING",
    )
    .bind(new_id())
    .bind(&e.tenant_id)
    .bind(&e.id)
    .bind(&e.contact_id)
    .bind(kind)
    .bind(step)
    .bind(e.version)
    .bind(epoch)
    .bind(due_at)
    .bind(now)
    .execute(&mut *w.tx)
    .await?;
    Ok(())
}

/// Schedules a check-in's occurrence `at` (keyed by it). The one a pause cancelled comes back
/// when the enrolment resumes before it.
pub async fn schedule_checkin(
    w: &mut WriteTx,
    e: &EnrollmentRow,
    checkin: &str,
    at: i64,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO fire (id, tenant_id, enrollment_id, contact_id, kind, step, version, epoch,
                           intended_at, due_at, created_at)
         VALUES ($1, $2, $3, $4, 'checkin', $5, $6, $7, $7, $7, $8)
         ON CONFLICT (enrollment_id, kind, step, version, epoch) DO UPDATE
         SET status = 'pending', reason = 'resumed', done_at = NULL
         WHERE fire.status = 'cancelled' AND fire.reason = 'paused'",
    )
    .bind(new_id())
    .bind(&e.tenant_id)
    .bind(&e.id)
    .bind(&e.contact_id)
    .bind(checkin)
    .bind(e.version)
    .bind(at)
    .bind(now)
    .execute(&mut *w.tx)
    .await?;
    Ok(())
}

/// The contact wrote: nudges of the enrolment sent (or held back) within the last day count
/// as answered, for the nudge lift.
pub async fn nudges_answered(
    w: &mut WriteTx,
    enrollment_id: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE fire SET answered_at = $1
         WHERE enrollment_id = $2 AND kind = 'nudge' AND answered_at IS NULL
           AND done_at >= $3 AND done_at <= $1
           AND ((status = 'done' AND sent = 1) OR (status = 'skipped' AND reason = 'holdout'))",
    )
    .bind(now)
    .bind(enrollment_id)
    .bind(now - 86_400_000)
    .execute(&mut *w.tx)
    .await?;
    Ok(())
}

/// The enrolment's wait ends now: its pending step fire falls due now (added when the wait had
/// none: an event-only wait).
pub async fn fire_step_now(
    w: &mut WriteTx,
    e: &EnrollmentRow,
    now: i64,
) -> Result<(), sqlx::Error> {
    let moved = sqlx::query(
        "UPDATE fire SET due_at = $1, reason = 'event'
         WHERE enrollment_id = $2 AND kind = 'step' AND step = $3 AND version = $4 AND epoch = $5
           AND status = 'pending'",
    )
    .bind(now)
    .bind(&e.id)
    .bind(&e.step)
    .bind(e.version)
    .bind(e.epoch)
    .execute(&mut *w.tx)
    .await?;
    if moved.rows_affected() == 0 {
        add_fire(w, e, "step", &e.step, e.epoch, now, now).await?;
    }
    Ok(())
}

/// One fire (inside a transaction).
pub async fn fire(w: &mut WriteTx, id: &str) -> Result<Option<FireRow>, sqlx::Error> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {FIRE_COLUMNS} FROM fire WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(&mut *w.tx)
    .await?
    .map(|r| fire_row(&r))
    .transpose()
}

/// The contact answered what fire `id` sent.
pub async fn fire_answered(w: &mut WriteTx, id: &str, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE fire SET answered_at = $1 WHERE id = $2 AND answered_at IS NULL")
        .bind(now)
        .bind(id)
        .execute(&mut *w.tx)
        .await?;
    Ok(())
}

/// Claims up to `limit` due fires for this transaction: `FOR UPDATE SKIP LOCKED` on PostgreSQL
/// (several gateways share the work), the single writer on SQLite.
pub async fn claim_due_fires(
    w: &mut WriteTx,
    backend: Backend,
    now: i64,
    limit: i64,
) -> Result<Vec<FireRow>, sqlx::Error> {
    let lock = match backend {
        Backend::Postgres => " FOR UPDATE SKIP LOCKED",
        Backend::Sqlite => "",
    };
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {FIRE_COLUMNS} FROM fire WHERE status = 'pending' AND due_at <= $1
         ORDER BY due_at, id LIMIT $2{lock}"
    )))
    .bind(now)
    .bind(limit)
    .fetch_all(&mut *w.tx)
    .await?
    .iter()
    .map(fire_row)
    .collect()
}

/// A fire that failed to run: retried later, a dead letter (`failed`) after a few tries. In the
/// transaction that claimed it, so that no other claimer takes it again meanwhile.
pub async fn fail_fire(
    w: &mut WriteTx,
    id: &str,
    error: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE fire SET attempts = attempts + 1, reason = $1,
                due_at = $2 + 1000 * (attempts + 1) * (attempts + 1) * 30,
                status = CASE WHEN attempts + 1 >= 5 THEN 'failed' ELSE status END,
                done_at = CASE WHEN attempts + 1 >= 5 THEN $2 ELSE done_at END
         WHERE id = $3 AND status = 'pending'",
    )
    .bind(error)
    .bind(now)
    .bind(id)
    .execute(&mut *w.tx)
    .await?;
    Ok(())
}

/// Cancels a contact's pending fires (all, or of one kind), e.g. when they opt out.
pub async fn cancel_fires(
    w: &mut WriteTx,
    contact_id: &str,
    kind: Option<&str>,
    reason: &str,
    now: i64,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE fire SET status = 'cancelled', reason = $1, done_at = $2
         WHERE contact_id = $3 AND status = 'pending' AND ($4 IS NULL OR kind = $4)",
    )
    .bind(reason)
    .bind(now)
    .bind(contact_id)
    .bind(kind)
    .execute(&mut *w.tx)
    .await?;
    Ok(done.rows_affected())
}

/// Cancels an enrolment's pending fires: all, or (`side_only`) just its check-ins and nudges
/// (it completed: the step fire being run closes as done).
pub async fn cancel_enrollment_fires(
    w: &mut WriteTx,
    enrollment_id: &str,
    side_only: bool,
    reason: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE fire SET status = 'cancelled', reason = $1, done_at = $2
         WHERE enrollment_id = $3 AND status = 'pending'
           AND ($4 = 0 OR kind IN ('checkin', 'nudge'))",
    )
    .bind(reason)
    .bind(now)
    .bind(enrollment_id)
    .bind(i64::from(side_only))
    .execute(&mut *w.tx)
    .await?;
    Ok(())
}

/// Cancels an enrolment's pending inactivity nudges (the contact wrote), except those of the
/// episode `keep` (this message's own, when a turn is run again).
pub async fn cancel_enrollment_nudges(
    w: &mut WriteTx,
    enrollment_id: &str,
    keep: i64,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE fire SET status = 'cancelled', reason = 'replied', done_at = $1
         WHERE enrollment_id = $2 AND kind = 'nudge' AND status = 'pending' AND epoch <> $3",
    )
    .bind(now)
    .bind(enrollment_id)
    .bind(keep)
    .execute(&mut *w.tx)
    .await?;
    Ok(())
}

/// A new inactivity episode: no nudges sent in it yet.
pub async fn reset_nudges(w: &mut WriteTx, enrollment_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE enrollment SET nudges = 0, at_risk = 0 WHERE id = $1")
        .bind(enrollment_id)
        .execute(&mut *w.tx)
        .await?;
    Ok(())
}

/// An enrolment's pending fires of one kind.
pub async fn pending_fire(
    w: &mut WriteTx,
    enrollment_id: &str,
    kind: &str,
) -> Result<Vec<FireRow>, sqlx::Error> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {FIRE_COLUMNS} FROM fire WHERE enrollment_id = $1 AND kind = $2 AND status = 'pending'"
    )))
    .bind(enrollment_id)
    .bind(kind)
    .fetch_all(&mut *w.tx)
    .await?
    .iter()
    .map(fire_row)
    .collect()
}

/// Puts back the fires a pause cancelled (due now at the earliest).
pub async fn resume_fires(
    w: &mut WriteTx,
    enrollment_id: &str,
    epoch: i64,
    now: i64,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE fire SET status = 'pending', reason = 'resumed', done_at = NULL,
                due_at = CASE WHEN due_at < $1 THEN $1 ELSE due_at END
         WHERE enrollment_id = $2 AND epoch = $3 AND kind <> 'checkin'
           AND status = 'cancelled' AND reason = 'paused'",
    )
    .bind(now)
    .bind(enrollment_id)
    .bind(epoch)
    .execute(&mut *w.tx)
    .await?;
    Ok(done.rows_affected())
}

/// Stops a contact's running enrolments (opt-out, unreachable), cancelling their fires.
pub async fn stop_contact_enrollments(
    w: &mut WriteTx,
    contact_id: &str,
    reason: &str,
    now: i64,
) -> Result<u64, sqlx::Error> {
    cancel_fires(w, contact_id, None, reason, now).await?;
    let done = sqlx::query(
        "UPDATE enrollment SET status = 'stopped', stopped_reason = $1, updated_at = $2,
                epoch = epoch + 1
         WHERE contact_id = $3 AND status IN ('active', 'paused')",
    )
    .bind(reason)
    .bind(now)
    .bind(contact_id)
    .execute(&mut *w.tx)
    .await?;
    Ok(done.rows_affected())
}

pub async fn record_answer(
    w: &mut WriteTx,
    e: &EnrollmentRow,
    step: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE step_visit SET answered_at = $1 WHERE enrollment_id = $2 AND step = $3 AND answered_at IS NULL",
    )
    .bind(now)
    .bind(&e.id)
    .bind(step)
    .execute(&mut *w.tx)
    .await?;
    Ok(())
}

/// The open conversation of a contact on a channel (created if none), with what sending there
/// needs: the recipient, the channel's kind, when the contact last wrote there.
pub async fn thread(
    w: &mut WriteTx,
    tenant_id: &str,
    contact_id: &str,
    channel_id: &str,
    now: i64,
) -> Result<Option<Thread>, sqlx::Error> {
    let Some(identity) = sqlx::query(
        "SELECT ci.external_id, ci.unreachable_reason, ci.unreachable_at, ch.kind
         FROM contact_identity ci JOIN channel ch ON ch.id = ci.channel_id
         WHERE ci.contact_id = $1 AND ci.channel_id = $2",
    )
    .bind(contact_id)
    .bind(channel_id)
    .fetch_optional(&mut *w.tx)
    .await?
    else {
        return Ok(None);
    };
    let recipient: String = identity.try_get("external_id")?;
    let channel_kind: String = identity.try_get("kind")?;
    let unreachable = identity
        .try_get::<Option<i64>, _>("unreachable_at")?
        .map(|_| {
            identity
                .try_get::<Option<String>, _>("unreachable_reason")
                .ok()
                .flatten()
                .unwrap_or_else(|| "unreachable".into())
        });
    // The channel's main thread: an email contact's threads are their own mails'; a program's
    // messages start (and keep) a thread of their own.
    let select = "SELECT id, status, last_inbound_at FROM conversation
                  WHERE contact_id = $1 AND channel_id = $2 AND thread = '' AND status <> 'closed'";
    let mut row = sqlx::query(select)
        .bind(contact_id)
        .bind(channel_id)
        .fetch_optional(&mut *w.tx)
        .await?;
    if row.is_none() {
        sqlx::query(
            "INSERT INTO conversation (id, tenant_id, contact_id, channel_id, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT DO NOTHING",
        )
        .bind(new_id())
        .bind(tenant_id)
        .bind(contact_id)
        .bind(channel_id)
        .bind(now)
        .execute(&mut *w.tx)
        .await?;
        row = sqlx::query(select)
            .bind(contact_id)
            .bind(channel_id)
            .fetch_optional(&mut *w.tx)
            .await?;
    }
    let Some(row) = row else {
        return Ok(None);
    };
    Ok(Some(Thread {
        conversation_id: row.try_get("id")?,
        status: row.try_get("status")?,
        last_inbound_at: row.try_get("last_inbound_at")?,
        channel_kind,
        recipient,
        unreachable,
        create: false,
    }))
}

/// Queues one program message in a conversation: stored and put in the outbox together.
#[allow(clippy::too_many_arguments)]
pub async fn queue_message(
    w: &mut WriteTx,
    tenant_id: &str,
    channel_id: &str,
    thread: &Thread,
    text: &str,
    content_json: Option<&str>,
    reply_to: Option<&str>,
    now: i64,
) -> Result<String, sqlx::Error> {
    let seq: i64 = sqlx::query(
        "UPDATE conversation SET last_seq = last_seq + 1, updated_at = $1 WHERE id = $2
         RETURNING last_seq",
    )
    .bind(now)
    .bind(&thread.conversation_id)
    .fetch_one(&mut *w.tx)
    .await?
    .try_get("last_seq")?;
    super::messages::insert_outbound(
        w,
        super::messages::Outbound {
            tenant_id,
            conversation_id: &thread.conversation_id,
            channel_id,
            seq,
            author: "bot",
            text,
            reply_to,
            recipient: &thread.recipient,
            content: content_json,
            created_at: now,
            // The outbox runs on the wall clock (the engine's may be set by hand in tests).
            send_at: now_ms(),
        },
    )
    .await
}

/// Marks an inbound turn processed inside the caller's transaction; `false` if it already was.
pub async fn mark_turn_processed(
    w: &mut WriteTx,
    conversation_id: &str,
    message_id: &str,
    now: i64,
) -> Result<bool, sqlx::Error> {
    // Lock order as the router's completion: the conversation row first.
    sqlx::query("UPDATE conversation SET updated_at = $1 WHERE id = $2")
        .bind(now)
        .bind(conversation_id)
        .execute(&mut *w.tx)
        .await?;
    let marked = sqlx::query(
        "UPDATE message SET processed_at = $1, status = 'processed'
         WHERE id = $2 AND processed_at IS NULL",
    )
    .bind(now)
    .bind(message_id)
    .execute(&mut *w.tx)
    .await?;
    Ok(marked.rows_affected() == 1)
}

pub async fn set_conversation_human(
    w: &mut WriteTx,
    tenant_id: &str,
    conversation_id: &str,
    note: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE conversation SET status = 'human' WHERE id = $1 AND status = 'bot'")
        .bind(conversation_id)
        .execute(&mut *w.tx)
        .await?;
    record_event(
        &mut w.tx,
        Some(tenant_id),
        "conversation.handoff",
        Some(conversation_id),
        &serde_json::json!({ "by": "program", "note": note }).to_string(),
    )
    .await
}

pub async fn audit(
    w: &mut WriteTx,
    tenant_id: &str,
    kind: &str,
    subject: &str,
    detail: Value,
) -> Result<(), sqlx::Error> {
    record_event(
        &mut w.tx,
        Some(tenant_id),
        kind,
        Some(subject),
        &detail.to_string(),
    )
    .await
}

/// The tenant's settings JSON.
pub async fn tenant_settings(store: &Store, tenant_id: &str) -> Result<Value, sqlx::Error> {
    let text: Option<String> = sqlx::query("SELECT settings FROM tenant WHERE id = $1")
        .bind(tenant_id)
        .fetch_optional(&store.pool)
        .await?
        .map(|r| r.try_get("settings"))
        .transpose()?;
    Ok(text
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Object(Map::new())))
}
