//! Coaching programs over HTTP (SPEC §5): programs and their versions, enrolments, a contact's
//! time zone and fields, events, preview and stats. The engine is `crate::programs`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, json_body};
use crate::core::Role;
use crate::programs::definition::{Problem, Program};
use crate::programs::{EnrollError, time};

/// Most contacts enrolled by one bulk request.
const MAX_BULK: usize = 1000;

fn invalid(problems: Vec<Problem>) -> ApiError {
    let first = problems
        .first()
        .map(|p| {
            if p.path.is_empty() {
                p.message.clone()
            } else {
                format!("{}: {}", p.path, p.message)
            }
        })
        .unwrap_or_default();
    ApiError::bad_request(
        "invalid_program",
        format!(
            "the program is not valid ({} problem{}): {first}",
            problems.len(),
            if problems.len() == 1 { "" } else { "s" }
        ),
    )
    .with_detail("errors", json!(problems))
}

/// Parses and validates a definition from a request body.
fn definition(body: Result<Bytes, BytesRejection>) -> Result<(Program, String), ApiError> {
    let value: Value = json_body(body, "invalid_program")?;
    let program = Program::parse(&value).map_err(invalid)?;
    let text = serde_json::to_string(&value).map_err(ApiError::internal)?;
    Ok((program, text))
}

fn view(row: &crate::store::programs::ProgramRow) -> Value {
    let definition: Value = serde_json::from_str(&row.definition).unwrap_or(Value::Null);
    let slug = Program::from_stored(&row.definition)
        .map(|p| p.slug())
        .unwrap_or_default();
    json!({
        "id": row.id,
        "name": row.name,
        "slug": slug,
        "current_version": row.current_version,
        "created_at": crate::store::messages::rfc3339(row.created_at),
        "updated_at": crate::store::messages::rfc3339(row.updated_at),
        "definition": definition,
    })
}

#[derive(Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct ProgramSettings {
    /// The tenant's default time zone for its contacts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timezone: Option<String>,
    /// `"21:00-08:00"`; `null` for none.
    #[serde(default = "default_quiet")]
    quiet_hours: Option<String>,
    #[serde(default = "default_cap")]
    max_proactive_per_day: i64,
}

fn default_quiet() -> Option<String> {
    Some(crate::programs::DEFAULT_QUIET_HOURS.to_owned())
}

fn default_cap() -> i64 {
    crate::programs::DEFAULT_DAILY_CAP
}

/// `GET /v1/programs/settings`: the tenant's time zone, quiet hours and daily cap.
pub async fn get_settings(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<impl IntoResponse, ApiError> {
    let principal = caller.require(&[Role::Admin, Role::Creator])?;
    let all = crate::store::programs::tenant_settings(&state.store, &principal.tenant_id).await?;
    let settings: ProgramSettings = all
        .get("programs")
        .cloned()
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or(ProgramSettings {
            timezone: None,
            quiet_hours: default_quiet(),
            max_proactive_per_day: default_cap(),
        });
    Ok(Json(json!({
        "timezone": settings.timezone.unwrap_or_else(|| state.config.timezone.clone()),
        "quiet_hours": settings.quiet_hours,
        "max_proactive_per_day": settings.max_proactive_per_day,
    })))
}

/// `PUT /v1/programs/settings`: `{"timezone"?, "quiet_hours": "21:00-08:00" | null,
/// "max_proactive_per_day"}`.
pub async fn put_settings(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let principal = caller.require(&[Role::Admin])?;
    let settings: ProgramSettings = json_body(body, "invalid_settings")?;
    if let Some(tz) = &settings.timezone
        && time::zone(tz).is_none()
    {
        return Err(ApiError::bad_request(
            "invalid_settings",
            format!("{tz:?} is not an IANA time zone"),
        ));
    }
    if let Some(q) = &settings.quiet_hours
        && let Err(e) = q.parse::<time::QuietHours>()
    {
        return Err(ApiError::bad_request("invalid_settings", e));
    }
    if !(1..=1000).contains(&settings.max_proactive_per_day) {
        return Err(ApiError::bad_request(
            "invalid_settings",
            "max_proactive_per_day is 1-1000",
        ));
    }
    let value = serde_json::to_value(&settings).map_err(ApiError::internal)?;
    state
        .store
        .set_program_settings(&principal.tenant_id, &value)
        .await?;
    Ok(Json(value))
}

/// `GET /v1/programs`.
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<impl IntoResponse, ApiError> {
    let principal = caller.require(&[Role::Admin, Role::Creator])?;
    let programs: Vec<Value> = state
        .store
        .programs(&principal.tenant_id)
        .await?
        .iter()
        .map(view)
        .collect();
    Ok(Json(json!({ "programs": programs })))
}

/// `POST /v1/programs`: the body is the definition; validated whole before it is saved.
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let principal = caller.require(&[Role::Admin, Role::Creator])?;
    let (program, text) = definition(body)?;
    let row = state
        .store
        .create_program(&principal.tenant_id, &program.definition.name, &text)
        .await?;
    Ok((StatusCode::CREATED, Json(view(&row))))
}

/// The tenant's program, or 404.
async fn program_or_404(
    state: &AppState,
    tenant_id: &str,
    id: &str,
) -> Result<crate::store::programs::ProgramRow, ApiError> {
    state
        .store
        .program(tenant_id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("program"))
}

/// `GET /v1/programs/{id}`.
pub async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let principal = caller.require(&[Role::Admin, Role::Creator])?;
    let row = program_or_404(&state, &principal.tenant_id, &id).await?;
    Ok(Json(view(&row)))
}

/// `PUT /v1/programs/{id}`: replaces the draft (running enrolments keep their version).
pub async fn put(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let principal = caller.require(&[Role::Admin, Role::Creator])?;
    let (program, text) = definition(body)?;
    if !state
        .store
        .update_program(&principal.tenant_id, &id, &program.definition.name, &text)
        .await?
    {
        return Err(ApiError::not_found("program"));
    }
    let row = program_or_404(&state, &principal.tenant_id, &id).await?;
    Ok(Json(view(&row)))
}

/// `DELETE /v1/programs/{id}`: running enrolments stop.
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let principal = caller.require(&[Role::Admin, Role::Creator])?;
    if state
        .store
        .delete_program(&principal.tenant_id, &id)
        .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("program"))
    }
}

/// `POST /v1/programs/{id}/publish`: the draft becomes the next version.
pub async fn publish(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let principal = caller.require(&[Role::Admin, Role::Creator])?;
    let version = state
        .store
        .publish_program(&principal.tenant_id, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("program"))?;
    Ok(Json(json!({ "id": id, "version": version })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Target {
    #[serde(default)]
    contact_id: Option<String>,
    #[serde(default)]
    channel_id: Option<String>,
    #[serde(default)]
    external_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrollBody {
    #[serde(default)]
    contact_id: Option<String>,
    #[serde(default)]
    channel_id: Option<String>,
    #[serde(default)]
    external_id: Option<String>,
    #[serde(default)]
    contacts: Option<Vec<Target>>,
}

fn enroll_error(e: EnrollError) -> ApiError {
    match e {
        EnrollError::NotPublished => {
            ApiError::new(StatusCode::CONFLICT, "not_published", e.to_string())
        }
        EnrollError::NoProgram => ApiError::not_found("program"),
        EnrollError::NoContact => ApiError::not_found("contact"),
        EnrollError::NoChannel => ApiError::bad_request("no_channel", e.to_string()),
        EnrollError::OptedOut => ApiError::new(StatusCode::CONFLICT, "opted_out", e.to_string()),
        EnrollError::WrongChannel(_) => ApiError::bad_request("wrong_channel", e.to_string()),
        EnrollError::Other(e) => ApiError::internal(format!("{e:#}")),
    }
}

/// The contact a target names (created for a new channel identity), and the channel to use.
async fn resolve(
    state: &AppState,
    tenant_id: &str,
    t: &Target,
) -> Result<(String, Option<String>), ApiError> {
    match (&t.contact_id, &t.channel_id, &t.external_id) {
        (Some(contact), None, None) => Ok((contact.clone(), None)),
        (None, Some(channel), Some(external)) => {
            let channel_row = state
                .store
                .channel(tenant_id, channel)
                .await?
                .ok_or_else(|| ApiError::not_found("channel"))?;
            let external = external.trim();
            if external.is_empty() || external.len() > 256 {
                return Err(ApiError::bad_request(
                    "invalid_enrollment",
                    "external_id must be 1-256 characters",
                ));
            }
            let contact = state
                .store
                .contact_for_identity(tenant_id, &channel_row.id, external)
                .await?;
            Ok((contact, Some(channel_row.id)))
        }
        _ => Err(ApiError::bad_request(
            "invalid_enrollment",
            "give {\"contact_id\"} or {\"channel_id\",\"external_id\"} (or a list of them under \"contacts\")",
        )),
    }
}

/// `POST /v1/programs/{id}/enrollments`: one contact or a list; idempotent.
pub async fn enroll(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let principal = caller.require(&[Role::Admin])?;
    let request: EnrollBody = json_body(body, "invalid_enrollment")?;
    let tenant = principal.tenant_id.clone();
    if let Some(list) = request.contacts {
        if list.len() > MAX_BULK {
            return Err(ApiError::bad_request(
                "invalid_enrollment",
                format!("at most {MAX_BULK} contacts per request"),
            ));
        }
        let mut out = Vec::with_capacity(list.len());
        for t in &list {
            let result = match resolve(&state, &tenant, t).await {
                Ok((contact, channel)) => state
                    .programs
                    .enroll(&tenant, &id, &contact, channel.as_deref(), "api")
                    .await
                    .map_err(enroll_error),
                Err(e) => Err(e),
            };
            out.push(match result {
                Ok(e) => json!({ "enrollment_id": e.enrollment_id, "status": e.status, "created": e.created }),
                // The program itself is wrong: no point going on with the list.
                Err(e)
                    if e.code == "not_published"
                        || (e.status == StatusCode::NOT_FOUND && e.message.starts_with("program")) =>
                {
                    return Err(e);
                }
                Err(e) => json!({ "error": { "code": e.code, "message": e.message } }),
            });
        }
        return Ok((StatusCode::OK, Json(json!({ "enrollments": out }))));
    }
    let target = Target {
        contact_id: request.contact_id,
        channel_id: request.channel_id,
        external_id: request.external_id,
    };
    let (contact, channel) = resolve(&state, &tenant, &target).await?;
    let enrolled = state
        .programs
        .enroll(&tenant, &id, &contact, channel.as_deref(), "api")
        .await
        .map_err(enroll_error)?;
    let status = if enrolled.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(
            json!({ "enrollment_id": enrolled.enrollment_id, "status": enrolled.status, "created": enrolled.created }),
        ),
    ))
}

#[derive(Debug, Deserialize)]
pub struct PreviewParams {
    contact: Option<String>,
}

/// `GET /v1/programs/{id}/preview?contact=…`: the next 10 messages in the contact's time.
pub async fn preview(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    params: Result<Query<PreviewParams>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let principal = caller.require(&[Role::Admin, Role::Creator])?;
    let Query(params) = params?;
    let contact = params.contact.filter(|c| !c.is_empty()).ok_or_else(|| {
        ApiError::bad_request("invalid_preview", "name the contact: ?contact=<contact id>")
    })?;
    program_or_404(&state, &principal.tenant_id, &id).await?;
    state
        .store
        .contact_row(&contact)
        .await?
        .filter(|c| c.tenant_id == principal.tenant_id)
        .ok_or_else(|| ApiError::not_found("contact"))?;
    let fires = state
        .programs
        .preview(&principal.tenant_id, &id, &contact)
        .await?;
    Ok(Json(json!({ "fires": fires })))
}

/// `GET /v1/programs/{id}/stats`: enrolments by status, the funnel, completion.
pub async fn stats(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let principal = caller.require(&[Role::Admin, Role::Creator])?;
    let row = program_or_404(&state, &principal.tenant_id, &id).await?;
    let (statuses, funnel, mut durations) = state.store.program_stats(&id).await?;
    let count = |s: &str| {
        statuses
            .iter()
            .find(|(k, _)| k == s)
            .map(|(_, n)| *n)
            .unwrap_or(0)
    };
    let enrolled: i64 = statuses.iter().map(|(_, n)| n).sum();
    durations.sort_unstable();
    let median = (!durations.is_empty()).then(|| durations[durations.len() / 2]);
    // The funnel in the order of the draft's steps (unknown ones — removed since — last).
    let order: Vec<String> = Program::from_stored(&row.definition)
        .map(|p| {
            p.definition
                .steps
                .iter()
                .map(|s| s.id().to_owned())
                .collect()
        })
        .unwrap_or_default();
    let mut funnel = funnel;
    funnel.sort_by_key(|f| {
        order
            .iter()
            .position(|s| s == &f.step)
            .unwrap_or(usize::MAX)
    });
    let funnel: Vec<Value> = funnel
        .iter()
        .map(|f| {
            json!({
                "step": f.step,
                "reached": f.reached,
                "answered": f.answered,
                "dropped": f.dropped,
            })
        })
        .collect();
    let engagement = state.store.program_engagement(&id).await?;
    let rate = |answered: i64, n: i64| (n > 0).then(|| answered as f64 / n as f64);
    let mut checkins: Vec<Value> = Vec::new();
    for r in engagement.iter().filter(|r| r.kind == "checkin") {
        checkins.push(json!({
            "id": r.step,
            "sent": r.count,
            "answered": r.answered,
            "answer_rate": rate(r.answered, r.count),
        }));
    }
    // Nudge lift: first nudges sent against quiet episodes held back (`inactivity.holdout`),
    // each answered when the contact wrote within 24 hours.
    let first = |status: &str| {
        engagement
            .iter()
            .filter(|r| r.kind == "nudge" && r.step == "nudge-0" && r.status == status)
            .fold((0, 0), |(n, a), r| (n + r.count, a + r.answered))
    };
    let (nudged, nudged_answered) = first("done");
    let (held, held_answered) = first("skipped");
    let nudges_sent: i64 = engagement
        .iter()
        .filter(|r| r.kind == "nudge" && r.status == "done")
        .map(|r| r.count)
        .sum();
    let nudged_rate = rate(nudged_answered, nudged);
    let held_rate = rate(held_answered, held);
    let lift = match (nudged_rate, held_rate) {
        (Some(n), Some(h)) if h > 0.0 => Some(n / h),
        _ => None,
    };
    Ok(Json(json!({
        "enrolled": enrolled,
        "active": count("active"),
        "paused": count("paused"),
        "completed": count("completed"),
        "stopped": count("stopped"),
        "completion_rate": if enrolled > 0 { count("completed") as f64 / enrolled as f64 } else { 0.0 },
        "median_time_to_complete_ms": median,
        "funnel": funnel,
        "checkins": checkins,
        "nudges_sent": nudges_sent,
        "nudge_lift": {
            "nudged": { "episodes": nudged, "answered_24h": nudged_answered, "rate": nudged_rate },
            "held_back": { "episodes": held, "answered_24h": held_answered, "rate": held_rate },
            "lift": lift,
        },
    })))
}

/// `GET /v1/contacts/{id}/enrollments`.
pub async fn contact_enrollments(
    State(state): State<AppState>,
    caller: Caller,
    Path(contact_id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let principal = caller.require(&[Role::Admin, Role::Moderator])?;
    state
        .store
        .contact_row(&contact_id)
        .await?
        .filter(|c| c.tenant_id == principal.tenant_id)
        .ok_or_else(|| ApiError::not_found("contact"))?;
    let rows = state
        .store
        .contact_enrollments(&principal.tenant_id, &contact_id)
        .await?;
    let mut items = Vec::with_capacity(rows.len());
    for e in rows {
        let total = state
            .programs
            .version(&e.program_id, e.version)
            .await
            .map(|p| p.total_steps())
            .unwrap_or(0);
        items.push(json!({
            "id": e.id,
            "program_id": e.program_id,
            "version": e.version,
            "status": e.status,
            "step": e.step,
            "waiting": e.waiting,
            "progress": { "done": e.steps_done.min(total as i64), "total": total },
            "streak": e.streak,
            "best_streak": e.best_streak,
            "badges": e.badges,
            "nudges": e.nudges,
            "at_risk": e.at_risk,
            "channel_id": e.channel_id,
            "stopped_reason": e.stopped_reason,
            "started_at": crate::store::messages::rfc3339(e.started_at),
            "completed_at": e.completed_at.map(crate::store::messages::rfc3339),
        }));
    }
    Ok(Json(json!({ "enrollments": items })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusBody {
    status: String,
}

/// `PATCH /v1/enrollments/{id}`: `{"status":"paused"|"active"|"stopped"}`.
pub async fn patch_enrollment(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let principal = caller.require(&[Role::Admin])?;
    let request: StatusBody = json_body(body, "invalid_enrollment")?;
    if !matches!(request.status.as_str(), "paused" | "active" | "stopped") {
        return Err(ApiError::bad_request(
            "invalid_enrollment",
            "status is one of paused, active, stopped",
        ));
    }
    let e = state
        .programs
        .set_status(&principal.tenant_id, &id, &request.status)
        .await
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, "invalid_transition", format!("{e:#}")))?
        .ok_or_else(|| ApiError::not_found("enrollment"))?;
    Ok(Json(json!({ "id": e.id, "status": e.status })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ContactPatch {
    #[serde(default, deserialize_with = "double_option")]
    timezone: Option<Option<String>>,
    #[serde(default)]
    fields: Option<Map<String, Value>>,
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    quiet_hours: Option<Option<String>>,
}

/// `null` → `Some(None)` (clear), absent → `None` (keep).
fn double_option<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// `PATCH /v1/contacts/{id}`: `{"timezone"?, "fields"?, "display_name"?, "quiet_hours"?}`.
pub async fn patch_contact(
    State(state): State<AppState>,
    caller: Caller,
    Path(contact_id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let principal = caller.require(&[Role::Admin])?;
    let request: ContactPatch = json_body(body, "invalid_contact")?;
    if let Some(Some(tz)) = &request.timezone
        && time::zone(tz).is_none()
    {
        return Err(ApiError::bad_request(
            "invalid_contact",
            format!("{tz:?} is not an IANA time zone (e.g. America/New_York)"),
        ));
    }
    if let Some(Some(q)) = &request.quiet_hours
        && let Err(e) = q.parse::<time::QuietHours>()
    {
        return Err(ApiError::bad_request("invalid_contact", e));
    }
    if let Some(fields) = &request.fields {
        let size = serde_json::to_string(fields).map(|s| s.len()).unwrap_or(0);
        if fields.len() > 100 || size > 16 * 1024 {
            return Err(ApiError::bad_request(
                "invalid_contact",
                "at most 100 fields and 16 KiB of them",
            ));
        }
    }
    let name = request.display_name.as_deref().map(|n| n.replace('\0', ""));
    if !state
        .store
        .update_contact(
            &principal.tenant_id,
            &contact_id,
            request.timezone.as_ref().map(|t| t.as_deref()),
            request.fields.as_ref(),
            name.as_deref(),
            request.quiet_hours.as_ref().map(|q| q.as_deref()),
        )
        .await?
    {
        return Err(ApiError::not_found("contact"));
    }
    let c = state
        .store
        .contact_row(&contact_id)
        .await?
        .ok_or_else(|| ApiError::not_found("contact"))?;
    Ok(Json(json!({
        "id": c.id,
        "display_name": c.display_name,
        "timezone": c.timezone,
        "quiet_hours": c.quiet_hours,
        "fields": c.fields,
        "tags": c.tags,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventBody {
    #[serde(default)]
    contact_id: Option<String>,
    #[serde(default)]
    channel_id: Option<String>,
    #[serde(default)]
    external_id: Option<String>,
    name: String,
    #[serde(default)]
    payload: Option<Value>,
}

/// `POST /v1/events`: a named event for a contact; programs that start on it enrol them.
pub async fn post_event(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let principal = caller.require(&[Role::Admin])?;
    let request: EventBody = json_body(body, "invalid_event")?;
    let name = request.name.trim();
    if name.is_empty() || name.len() > 100 {
        return Err(ApiError::bad_request(
            "invalid_event",
            "name is 1-100 characters",
        ));
    }
    let target = Target {
        contact_id: request.contact_id,
        channel_id: request.channel_id,
        external_id: request.external_id,
    };
    let (contact, _) = resolve(&state, &principal.tenant_id, &target).await?;
    state
        .store
        .contact_row(&contact)
        .await?
        .filter(|c| c.tenant_id == principal.tenant_id)
        .ok_or_else(|| ApiError::not_found("contact"))?;
    state
        .store
        .record_contact_event(
            &principal.tenant_id,
            &contact,
            name,
            request.payload.as_ref(),
        )
        .await?;
    let enrolled = state
        .programs
        .on_event(&principal.tenant_id, &contact, name)
        .await?;
    let (enrolled, advanced) = enrolled;
    let enrollments: Vec<Value> = enrolled
        .into_iter()
        .map(|(program_id, e)| json!({ "program_id": program_id, "enrollment_id": e.enrollment_id, "status": e.status, "created": e.created }))
        .collect();
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "contact_id": contact, "enrollments": enrollments, "advanced": advanced })),
    ))
}
