//! Moderation over HTTP (SPEC §5): the tenant's policy, the flag queue and its verdicts, the
//! measured precision of each rule, and tickets. Moderators and admins only; another tenant's
//! flag or ticket is a 404 like one that does not exist.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, json_body};
use crate::core::Role;
use crate::moderation::{Compiled, Policy, sla};
use crate::store::messages::rfc3339;
use crate::store::moderation::{self as store, FlagRow, TicketChange, TicketFilter, TicketRow};
use crate::store::now_ms;

const MODERATORS: &[Role] = &[Role::Admin, Role::Moderator];
/// Most flags or tickets in one listing.
const MAX_LIST: i64 = 500;
/// Longest note, subject or edited answer.
const MAX_TEXT: usize = 16_384;

/// `GET /v1/moderation/policy`: the current policy (the default when none was saved).
pub async fn get_policy(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<impl IntoResponse, ApiError> {
    let principal = caller.require(&[Role::Admin])?;
    let (version, policy) = match state.store.moderation_policy(&principal.tenant_id).await? {
        Some((version, text)) => (
            version,
            serde_json::from_str::<Value>(&text).unwrap_or(Value::Null),
        ),
        None => (0, json!(Policy::default())),
    };
    Ok(Json(json!({ "version": version, "policy": policy })))
}

/// `PUT /v1/moderation/policy`: validates the whole policy (400 `invalid_policy` with every
/// problem and its path) and saves it as the next version.
pub async fn put_policy(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let principal = caller.require(&[Role::Admin])?;
    let value: Value = json_body(body, "invalid_policy")?;
    let compiled = Compiled::parse(&value).map_err(|problems| {
        let first = problems
            .first()
            .map(|p| format!("{}: {}", p.path, p.message))
            .unwrap_or_default();
        ApiError::bad_request(
            "invalid_policy",
            format!("the policy is not valid: {first}"),
        )
        .with_detail("errors", json!(problems))
    })?;
    // Stored as the validated policy with its defaults filled in: what is read back is what runs.
    let text = serde_json::to_string(&compiled.policy).map_err(ApiError::internal)?;
    let version = state
        .store
        .save_moderation_policy(&principal.tenant_id, &text, &principal.key_id)
        .await?;
    state.moderation.invalidate(&principal.tenant_id);
    Ok(Json(
        json!({ "version": version, "policy": compiled.policy }),
    ))
}

fn flag_view(f: &FlagRow) -> Value {
    json!({
        "id": f.id,
        "conversation_id": f.conversation_id,
        "contact_id": f.contact_id,
        "message_id": f.message_id,
        "direction": f.direction,
        "action": f.action,
        "shadow": f.shadow,
        "status": f.status,
        "policy_version": f.policy_version,
        "evidence": f.evidence,
        "verdict": f.verdict,
        "verdict_text": f.verdict_text,
        "verdict_by": f.verdict_by,
        "verdict_at": f.verdict_at.map(rfc3339),
        "created_at": rfc3339(f.created_at),
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlagQuery {
    status: Option<String>,
    limit: Option<i64>,
}

/// `GET /v1/flags?status=`: the queue, newest first.
pub async fn list_flags(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<FlagQuery>, QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let principal = caller.require(MODERATORS)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_LIST);
    let flags = state
        .store
        .flags(&principal.tenant_id, q.status.as_deref(), limit)
        .await?;
    Ok(Json(
        json!({ "flags": flags.iter().map(flag_view).collect::<Vec<_>>() }),
    ))
}

/// `GET /v1/flags/{id}`: one flag with its evidence.
pub async fn get_flag(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let principal = caller.require(MODERATORS)?;
    let flag = state
        .store
        .flag(&principal.tenant_id, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("flag"))?;
    Ok(Json(flag_view(&flag)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Verdict {
    action: String,
    #[serde(default)]
    text: Option<String>,
}

/// `POST /v1/flags/{id}/verdict`: a moderator's decision, carried out and recorded (an audit
/// event attributed to the key). `approve`: the message was fine — a held answer is sent, a
/// held conversation goes back to the bot; `edit` (`text`): the held answer is sent as edited;
/// `reject`: a held answer is never sent; `take_over`: the conversation is the moderator's;
/// `block` / `unblock`: the contact; `close`: closes the flag without judging it.
pub async fn verdict(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let principal = caller.require(MODERATORS)?;
    let request: Verdict = json_body(body, "invalid_verdict")?;
    let flag = state
        .store
        .flag(&principal.tenant_id, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("flag"))?;
    let text = request
        .text
        .as_deref()
        .map(|t| t.replace('\0', ""))
        .filter(|t| !t.trim().is_empty());
    if text.as_ref().is_some_and(|t| t.len() > MAX_TEXT) {
        return Err(ApiError::bad_request(
            "invalid_verdict",
            format!("text is longer than {MAX_TEXT} bytes"),
        ));
    }
    // A program message moderation kept back is stored (withheld); a held bot answer is only
    // in the flag's evidence.
    let program = flag.evidence["source"] == "program";
    let withheld = program && flag.evidence["withheld"].is_string();
    let held_answer =
        (flag.direction == "outbound" && flag.action == "hold" && !flag.shadow && !program)
            || withheld;
    let status = match request.action.as_str() {
        "approve" => "approved",
        "edit" => {
            if !held_answer {
                return Err(ApiError::bad_request(
                    "invalid_verdict",
                    "only a held bot answer can be edited; write to the conversation instead",
                ));
            }
            if text.is_none() {
                return Err(ApiError::bad_request(
                    "invalid_verdict",
                    "`edit` needs the text to send",
                ));
            }
            "edited"
        }
        "reject" => "rejected",
        "take_over" => "taken_over",
        "block" => "blocked",
        "unblock" => "unblocked",
        "close" => "closed",
        other => {
            return Err(ApiError::bad_request(
                "invalid_verdict",
                format!(
                    "unknown action {other:?} (approve, edit, reject, take_over, block, unblock, close)"
                ),
            ));
        }
    };
    let now = now_ms();
    let tenant = &principal.tenant_id;
    let by = &principal.key_id;
    let mut w = state.store.begin_write().await?;
    if !store::judge_flag(
        &mut w,
        tenant,
        &id,
        &request.action,
        status,
        text.as_deref(),
        by,
        now,
    )
    .await?
    {
        return Err(ApiError::conflict(
            "already_judged",
            "this flag has a verdict already",
        ));
    }
    // What the verdict sends, if anything: a held answer as it was, or as edited.
    let send = match request.action.as_str() {
        _ if withheld => None,
        "approve" if held_answer => flag.evidence["answer"].as_str().map(str::to_owned),
        "edit" => text.clone(),
        _ => None,
    };
    match request.action.as_str() {
        "approve" | "edit" if withheld => {
            store::release_withheld(&mut w, tenant, &flag.message_id, text.as_deref(), by, now)
                .await?;
        }
        "reject" if withheld => {
            store::discard_withheld(&mut w, tenant, &flag.message_id).await?;
        }
        "approve" | "edit" if flag.action == "hold" && !program => {
            store::hand_back(&mut w, tenant, &flag.conversation_id, by, now).await?;
        }
        "take_over" => {
            store::take_over(&mut w, tenant, &flag.conversation_id, by, now).await?;
        }
        "block" => {
            store::block_contact(
                &mut w,
                tenant,
                &flag.contact_id,
                &format!("flag {}", flag.id),
                by,
                now,
            )
            .await?;
        }
        "unblock" => {
            store::unblock_contact(&mut w, tenant, &flag.contact_id, by).await?;
        }
        _ => {}
    }
    w.commit().await?;
    if let Some(text) = send {
        state
            .store
            .post_message_as(tenant, &flag.conversation_id, &text, None, "bot")
            .await
            .map_err(|e| ApiError::internal(format!("{e:?}")))?;
        state.router.wake_outbox();
    }
    let flag = state
        .store
        .flag(tenant, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("flag"))?;
    Ok(Json(flag_view(&flag)))
}

/// `GET /v1/moderation/stats`: per rule and category, its hits (shadow ones apart), the
/// verdicts on them and the measured precision: confirmed ÷ judged, where `approve` and
/// `unblock` say the flag was wrong and `edit`, `reject`, `take_over`, `block` that it was right.
pub async fn stats(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<impl IntoResponse, ApiError> {
    let principal = caller.require(MODERATORS)?;
    let flags = state.store.judged_flags(&principal.tenant_id).await?;
    #[derive(Default)]
    struct Counts {
        hits: u64,
        shadow: u64,
        judged: u64,
        confirmed: u64,
    }
    let mut rules: BTreeMap<String, Counts> = BTreeMap::new();
    for f in &flags {
        let right = match f.verdict.as_deref() {
            Some("edit" | "reject" | "take_over" | "block") => Some(true),
            Some("approve" | "unblock") => Some(false),
            _ => None,
        };
        let hits = f.evidence["hits"].as_array().cloned().unwrap_or_default();
        for hit in hits {
            let Some(rule) = hit["rule"].as_str() else {
                continue;
            };
            let c = rules.entry(rule.to_owned()).or_default();
            c.hits += 1;
            if hit["shadow"].as_bool() == Some(true) {
                c.shadow += 1;
            }
            if let Some(right) = right {
                c.judged += 1;
                c.confirmed += u64::from(right);
            }
        }
    }
    let rules: Vec<Value> = rules
        .into_iter()
        .map(|(rule, c)| {
            json!({
                "rule": rule,
                "hits": c.hits,
                "shadow_hits": c.shadow,
                "judged": c.judged,
                "confirmed": c.confirmed,
                "precision": (c.judged > 0).then(|| c.confirmed as f64 / c.judged as f64),
            })
        })
        .collect();
    let open = flags.iter().filter(|f| f.status == "open").count();
    let tickets = state
        .store
        .ticket_metrics(&principal.tenant_id, now_ms())
        .await?;
    Ok(Json(
        json!({ "flags": flags.len(), "open": open, "rules": rules, "tickets": tickets }),
    ))
}

fn ticket_view(t: &TicketRow, now: i64) -> Value {
    let first_breached = t.first_response_at.unwrap_or(now) > t.first_response_due_at;
    let resolved_at = t.solved_at.or(t.closed_at);
    let resolution_breached = resolved_at.unwrap_or(now) > t.resolution_due_at;
    json!({
        "id": t.id,
        "subject": t.subject,
        "source": t.source,
        "status": t.status,
        "priority": t.priority,
        "assignee": t.assignee,
        "conversation_id": t.conversation_id,
        "contact_id": t.contact_id,
        "flag_id": t.flag_id,
        "sla": {
            "first_response_due_at": rfc3339(t.first_response_due_at),
            "resolution_due_at": rfc3339(t.resolution_due_at),
            "first_response_at": t.first_response_at.map(rfc3339),
            "first_response_breached": first_breached,
            "resolution_breached": resolution_breached,
        },
        "solved_at": t.solved_at.map(rfc3339),
        "closed_at": t.closed_at.map(rfc3339),
        "created_by": t.created_by,
        "created_at": rfc3339(t.created_at),
        "updated_at": rfc3339(t.updated_at),
    })
}

const STATUSES: [&str; 4] = ["open", "pending", "solved", "closed"];
const PRIORITIES: [&str; 4] = ["low", "normal", "high", "urgent"];

fn check_one_of(field: &str, value: Option<&str>, allowed: &[&str]) -> Result<(), ApiError> {
    match value {
        Some(v) if !allowed.contains(&v) => Err(ApiError::bad_request(
            "invalid_ticket",
            format!("{field} must be one of {}", allowed.join(", ")),
        )),
        _ => Ok(()),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TicketQuery {
    status: Option<String>,
    priority: Option<String>,
    assignee: Option<String>,
    conversation_id: Option<String>,
    limit: Option<i64>,
}

/// `GET /v1/tickets?status=&priority=&assignee=&conversation_id=`
pub async fn list_tickets(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<TicketQuery>, QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let principal = caller.require(MODERATORS)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    check_one_of("status", q.status.as_deref(), &STATUSES)?;
    check_one_of("priority", q.priority.as_deref(), &PRIORITIES)?;
    let filter = TicketFilter {
        status: q.status,
        priority: q.priority,
        assignee: q.assignee,
        conversation_id: q.conversation_id,
    };
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_LIST);
    let tickets = state
        .store
        .tickets(&principal.tenant_id, &filter, limit)
        .await?;
    let now = now_ms();
    Ok(Json(
        json!({ "tickets": tickets.iter().map(|t| ticket_view(t, now)).collect::<Vec<_>>() }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTicket {
    subject: String,
    #[serde(default)]
    priority: Option<String>,
    #[serde(default)]
    conversation_id: Option<String>,
    #[serde(default)]
    contact_id: Option<String>,
    #[serde(default)]
    note: Option<String>,
}

/// `POST /v1/tickets`: a ticket by hand → 201 (or 200 with the open ticket of the conversation).
pub async fn create_ticket(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let principal = caller.require(MODERATORS)?;
    let request: NewTicket = json_body(body, "invalid_ticket")?;
    let subject = request.subject.replace('\0', "");
    if subject.trim().is_empty() || subject.len() > 500 {
        return Err(ApiError::bad_request(
            "invalid_ticket",
            "subject: 1 to 500 bytes",
        ));
    }
    check_one_of("priority", request.priority.as_deref(), &PRIORITIES)?;
    let priority = request.priority.as_deref().unwrap_or("normal");
    let tenant = &principal.tenant_id;
    // A conversation or contact named must be the tenant's own.
    let mut contact_id = request.contact_id.clone();
    if let Some(conversation) = &request.conversation_id {
        let owner = state
            .store
            .conversation_contact(tenant, conversation)
            .await?
            .ok_or_else(|| ApiError::not_found("conversation"))?;
        contact_id.get_or_insert(owner);
    }
    if let Some(contact) = &contact_id
        && state
            .store
            .contact_row(contact)
            .await?
            .is_none_or(|c| &c.tenant_id != tenant)
    {
        return Err(ApiError::not_found("contact"));
    }
    let (first, resolution) = sla(priority);
    let now = now_ms();
    let mut w = state.store.begin_write().await?;
    let (id, created) = store::open_ticket(
        &mut w,
        store::NewTicket {
            tenant_id: tenant,
            subject: &subject,
            source: "api",
            priority,
            conversation_id: request.conversation_id.as_deref(),
            contact_id: contact_id.as_deref(),
            flag_id: None,
            created_by: Some(&principal.key_id),
            first_response_ms: first,
            resolution_ms: resolution,
        },
        now,
    )
    .await?;
    if let Some(note) = request.note.as_deref().filter(|n| !n.trim().is_empty()) {
        if note.len() > MAX_TEXT {
            return Err(ApiError::bad_request(
                "invalid_ticket",
                format!("note: at most {MAX_TEXT} bytes"),
            ));
        }
        store::add_ticket_note(&mut w, &id, Some(&principal.key_id), note, now).await?;
    }
    w.commit().await?;
    let ticket = state
        .store
        .ticket(tenant, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("ticket"))?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(ticket_view(&ticket, now_ms()))))
}

/// `GET /v1/tickets/{id}`: the ticket with its notes.
pub async fn get_ticket(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let principal = caller.require(MODERATORS)?;
    let ticket = state
        .store
        .ticket(&principal.tenant_id, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("ticket"))?;
    let notes: Vec<Value> = state
        .store
        .ticket_notes(&id)
        .await?
        .into_iter()
        .map(|(author, text, at)| json!({ "author": author, "text": text, "created_at": rfc3339(at) }))
        .collect();
    let mut view = ticket_view(&ticket, now_ms());
    view["notes"] = json!(notes);
    Ok(Json(view))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TicketPatch {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    priority: Option<String>,
    /// `null` unassigns.
    #[serde(default, deserialize_with = "present")]
    assignee: Option<Option<String>>,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    note: Option<String>,
}

/// A member that is present: `Some(value)`, `Some(None)` for `null` (absent: `None`).
fn present<'de, D>(d: D) -> Result<Option<Option<String>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    Option::<String>::deserialize(d).map(Some)
}

/// `PATCH /v1/tickets/{id}`: status, priority, assignee, subject, a note.
pub async fn patch_ticket(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let principal = caller.require(MODERATORS)?;
    let request: TicketPatch = json_body(body, "invalid_ticket")?;
    check_one_of("status", request.status.as_deref(), &STATUSES)?;
    check_one_of("priority", request.priority.as_deref(), &PRIORITIES)?;
    for (field, text) in [("subject", &request.subject), ("note", &request.note)] {
        if text.as_ref().is_some_and(|t| t.len() > MAX_TEXT) {
            return Err(ApiError::bad_request(
                "invalid_ticket",
                format!("{field}: at most {MAX_TEXT} bytes"),
            ));
        }
    }
    let change = TicketChange {
        status: request.status,
        priority: request.priority,
        assignee: request.assignee,
        subject: request.subject.filter(|s| !s.trim().is_empty()),
        note: request.note.filter(|n| !n.trim().is_empty()),
    };
    if !state
        .store
        .update_ticket(&principal.tenant_id, &id, &change, &principal.key_id)
        .await?
    {
        return Err(ApiError::not_found("ticket"));
    }
    let ticket = state
        .store
        .ticket(&principal.tenant_id, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("ticket"))?;
    Ok(Json(ticket_view(&ticket, now_ms())))
}
