//! The incident API (JSON under `/api/v1`) and the web page, mounted on the aggregator's HTTP
//! server beside `/metrics` and `/healthz`.
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/api/v1/incidents` | list; `state`, `severity` (comma lists), `namespace`, `workload`, `family`, `since`, `until` (RFC 3339 or unix ms), `limit` (≤ 500), `after` (paging) |
//! | GET | `/api/v1/incidents/{id}` | one incident and its timeline (`events_from`, `events_limit`) |
//! | POST | `/api/v1/incidents/{id}/ack` | acknowledge: `{"by": "...", "comment": "..."}` |
//! | POST | `/api/v1/incidents/{id}/resolve` | resolve by hand, same body |
//! | GET | `/api/v1/counts` | incidents by state and severity |
//! | GET | `/api/v1/silences` | every silence kept |
//! | POST | `/api/v1/silences` | create: `{"matchers": ["namespace=shop"], "ends_at" or "duration_secs", "created_by", "comment"}` |
//! | DELETE | `/api/v1/silences/{id}?by=...` | expire now |
//! | GET | `/`, `/incidents`, `/incidents/{id}` | the page ([`page`]) |
//!
//! Every input is bounded (bodies 64 KiB, lists and strings capped, limits clamped) and every
//! refusal is a JSON `{"error": ...}` with a 4xx status. The write routes (ack, resolve,
//! silences) need `Authorization: Bearer <token>` ([`auth`]); without a configured token they
//! refuse every request. The read routes and the page are open to whoever reaches the port, as
//! `/metrics` is: bind the server to the cluster network.

pub mod auth;
pub mod cli;
pub mod page;

use crate::incident::Incidents;
use crate::incident::engine::EngineError;
use crate::incident::handler::IncidentError;
use crate::store::{Counts, IncidentStore, Query as StoreQuery};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use selfheal_core::Family;
use selfheal_core::incident::{
    Actor, Event, Incident, IncidentId, Matcher, Severity, Silence, SilenceState, State as IncState,
};
use serde::{Deserialize, Serialize};

/// Most incidents one page returns.
pub const MAX_LIMIT: usize = 500;
/// Most events one incident answer returns.
pub const MAX_EVENTS: usize = 2_000;
const MAX_BODY: usize = 64 * 1024;
const MAX_TEXT: usize = 1_024;
const MAX_MATCHERS: usize = 32;

/// The API's and the page's routes; the write routes behind `auth` ([`auth::require_token`]).
pub fn router<S: IncidentStore + Clone>(incidents: Incidents<S>, auth: auth::WriteAuth) -> Router {
    let writes = Router::new()
        .route("/api/v1/incidents/{id}/ack", post(ack::<S>))
        .route("/api/v1/incidents/{id}/resolve", post(resolve::<S>))
        .route("/api/v1/silences", post(create_silence::<S>))
        .route(
            "/api/v1/silences/{id}",
            axum::routing::delete(expire_silence::<S>),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            auth,
            auth::require_token,
        ));
    Router::new()
        .route("/api/v1/incidents", get(list::<S>))
        .route("/api/v1/incidents/{id}", get(show::<S>))
        .route("/api/v1/counts", get(counts::<S>))
        .route("/api/v1/silences", get(silences::<S>))
        .merge(writes)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(incidents)
        .merge(page::router())
}

/// An API refusal.
#[derive(Debug)]
pub struct ApiError(pub(crate) StatusCode, pub(crate) String);

#[derive(Serialize)]
struct ErrorBody {
    error: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.0.is_server_error() {
            tracing::warn!(status = self.0.as_u16(), error = %self.1, "ApiError");
        } else {
            tracing::debug!(status = self.0.as_u16(), error = %self.1, "ApiRefused");
        }
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            selfheal_runtime::chain::ErrorChain::new(&e).to_string(),
        )
    }
}

impl From<IncidentError> for ApiError {
    fn from(e: IncidentError) -> Self {
        match e {
            IncidentError::Store(s) => s.into(),
            IncidentError::Engine(EngineError::NotActive(id)) => ApiError(
                StatusCode::CONFLICT,
                format!("incident {id} is not active (unknown or already resolved)"),
            ),
            IncidentError::Engine(EngineError::NoSilence(id)) => {
                ApiError(StatusCode::NOT_FOUND, format!("no silence {id}"))
            }
            IncidentError::Engine(e @ EngineError::Transition(_)) => {
                ApiError(StatusCode::CONFLICT, e.to_string())
            }
            IncidentError::Engine(e @ EngineError::Matcher(_)) => {
                bad(selfheal_runtime::chain::ErrorChain::new(&e).to_string())
            }
        }
    }
}

/// A time given as RFC 3339 or unix milliseconds.
fn parse_time(field: &str, v: &str) -> Result<i64, ApiError> {
    if let Ok(ms) = v.parse::<i64>() {
        return Ok(ms);
    }
    time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .map_err(|_| {
            bad(format!(
                "{field}: {v:?} is neither RFC 3339 nor unix milliseconds"
            ))
        })
}

fn list_of<T: std::str::FromStr>(field: &str, v: Option<&str>) -> Result<Vec<T>, ApiError>
where
    T::Err: std::fmt::Display,
{
    let Some(v) = v.filter(|v| !v.is_empty()) else {
        return Ok(Vec::new());
    };
    v.split(',')
        .take(16)
        .map(|s| {
            s.trim()
                .parse::<T>()
                .map_err(|e| bad(format!("{field}: {e}")))
        })
        .collect()
}

fn text(field: &str, v: &str, max: usize) -> Result<(), ApiError> {
    if v.chars().count() > max {
        return Err(bad(format!("{field}: longer than {max} characters")));
    }
    if v.chars().any(|c| c.is_control() && c != '\n') {
        return Err(bad(format!("{field}: control characters")));
    }
    Ok(())
}

/// `GET /api/v1/incidents` parameters.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    state: Option<String>,
    severity: Option<String>,
    namespace: Option<String>,
    workload: Option<String>,
    family: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<usize>,
    after: Option<String>,
}

fn non_empty(v: &Option<String>) -> Option<String> {
    v.as_ref().filter(|s| !s.is_empty()).cloned()
}

impl ListParams {
    fn query(&self) -> Result<StoreQuery, ApiError> {
        for (f, v) in [
            ("namespace", &self.namespace),
            ("workload", &self.workload),
            ("after", &self.after),
        ] {
            if let Some(v) = v {
                text(f, v, 256)?;
            }
        }
        Ok(StoreQuery {
            states: list_of::<IncState>("state", self.state.as_deref())?,
            severities: list_of::<Severity>("severity", self.severity.as_deref())?,
            namespace: non_empty(&self.namespace),
            workload: non_empty(&self.workload),
            family: match non_empty(&self.family) {
                Some(f) => Some(
                    f.parse::<Family>()
                        .map_err(|e| bad(format!("family: {e}")))?,
                ),
                None => None,
            },
            since_ms: non_empty(&self.since)
                .map(|v| parse_time("since", &v))
                .transpose()?,
            until_ms: non_empty(&self.until)
                .map(|v| parse_time("until", &v))
                .transpose()?,
            limit: self.limit.unwrap_or(50).clamp(1, MAX_LIMIT),
            after: non_empty(&self.after).map(IncidentId),
        })
    }
}

/// The list answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct ListBody {
    /// The page.
    pub incidents: Vec<Incident>,
    /// `after` for the next page.
    pub next: Option<IncidentId>,
    /// Counts by state and severity over every incident kept.
    pub counts: Counts,
    /// The server's clock, unix ms (the page shows ages with it).
    pub now_ms: i64,
}

async fn list<S: IncidentStore + Clone>(
    State(inc): State<Incidents<S>>,
    Query(p): Query<ListParams>,
) -> Result<Json<ListBody>, ApiError> {
    let q = p.query()?;
    let page = inc.store().list(&q).await?;
    let counts = inc.store().counts().await?;
    Ok(Json(ListBody {
        incidents: page.incidents,
        next: page.next,
        counts,
        now_ms: inc.now_ms(),
    }))
}

async fn counts<S: IncidentStore + Clone>(
    State(inc): State<Incidents<S>>,
) -> Result<Json<Counts>, ApiError> {
    Ok(Json(inc.store().counts().await?))
}

/// `GET /api/v1/incidents/{id}` parameters.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShowParams {
    events_from: Option<u64>,
    events_limit: Option<usize>,
}

/// One incident with its timeline.
#[derive(Debug, Serialize, Deserialize)]
pub struct ShowBody {
    /// The incident.
    pub incident: Incident,
    /// Its events, in order.
    pub events: Vec<Event>,
    /// The server's clock, unix ms.
    pub now_ms: i64,
}

pub(crate) fn valid_id(id: &str) -> Result<IncidentId, ApiError> {
    if id.len() == 20 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(IncidentId(id.to_owned()))
    } else {
        Err(bad(format!("{id:?} is not an incident id (20 hex digits)")))
    }
}

async fn show<S: IncidentStore + Clone>(
    State(inc): State<Incidents<S>>,
    Path(id): Path<String>,
    Query(p): Query<ShowParams>,
) -> Result<Json<ShowBody>, ApiError> {
    let id = valid_id(&id)?;
    let Some(incident) = inc.store().get(&id).await? else {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("no incident {id}")));
    };
    let events = inc
        .store()
        .events(
            &id,
            p.events_from.unwrap_or(0),
            p.events_limit.unwrap_or(MAX_EVENTS).clamp(1, MAX_EVENTS),
        )
        .await?;
    Ok(Json(ShowBody {
        incident,
        events,
        now_ms: inc.now_ms(),
    }))
}

/// Body of ack and resolve.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ActBody {
    /// Who.
    pub by: String,
    /// Why.
    #[serde(default)]
    pub comment: String,
}

fn actor(b: &ActBody) -> Result<Actor, ApiError> {
    if b.by.trim().is_empty() {
        return Err(bad("by: say who you are"));
    }
    text("by", &b.by, 128)?;
    text("comment", &b.comment, MAX_TEXT)?;
    Ok(Actor::Person(b.by.trim().to_owned()))
}

async fn ack<S: IncidentStore + Clone>(
    State(inc): State<Incidents<S>>,
    Path(id): Path<String>,
    Json(b): Json<ActBody>,
) -> Result<Json<Incident>, ApiError> {
    let id = valid_id(&id)?;
    let a = actor(&b)?;
    let cause = if b.comment.is_empty() {
        "acknowledged"
    } else {
        &b.comment
    };
    Ok(Json(
        inc.transition(&id, IncState::Acknowledged, cause, a)
            .await?,
    ))
}

async fn resolve<S: IncidentStore + Clone>(
    State(inc): State<Incidents<S>>,
    Path(id): Path<String>,
    Json(b): Json<ActBody>,
) -> Result<Json<Incident>, ApiError> {
    let id = valid_id(&id)?;
    let a = actor(&b)?;
    let cause = if b.comment.is_empty() {
        "resolved by hand"
    } else {
        &b.comment
    };
    Ok(Json(
        inc.transition(&id, IncState::Resolved, cause, a).await?,
    ))
}

/// A silence with its state, as listed.
#[derive(Debug, Serialize, Deserialize)]
pub struct SilenceView {
    /// The silence.
    #[serde(flatten)]
    pub silence: Silence,
    /// Pending, active or expired, now.
    pub state: SilenceState,
}

async fn silences<S: IncidentStore + Clone>(
    State(inc): State<Incidents<S>>,
) -> Result<Json<Vec<SilenceView>>, ApiError> {
    let now = inc.now_ms();
    let all = inc.store().silences().await?;
    Ok(Json(
        all.into_iter()
            .map(|s| SilenceView {
                state: s.state(now),
                silence: s,
            })
            .collect(),
    ))
}

/// `POST /api/v1/silences` body.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NewSilence {
    /// `label=value`, `label!=value`, `label=~regex`, `label!~regex`; all must match.
    pub matchers: Vec<String>,
    /// Start (RFC 3339 or unix ms); default now.
    #[serde(default)]
    pub starts_at: Option<String>,
    /// End (RFC 3339 or unix ms); or give `duration_secs`.
    #[serde(default)]
    pub ends_at: Option<String>,
    /// Length from the start, seconds.
    #[serde(default)]
    pub duration_secs: Option<f64>,
    /// Who.
    pub created_by: String,
    /// Why.
    pub comment: String,
}

async fn create_silence<S: IncidentStore + Clone>(
    State(inc): State<Incidents<S>>,
    Json(b): Json<NewSilence>,
) -> Result<(StatusCode, Json<Silence>), ApiError> {
    let now = inc.now_ms();
    if b.matchers.is_empty() {
        return Err(bad(
            "matchers: at least one (a silence of everything is a mistake)",
        ));
    }
    if b.matchers.len() > MAX_MATCHERS {
        return Err(bad(format!("matchers: at most {MAX_MATCHERS}")));
    }
    let mut matchers = Vec::new();
    for m in &b.matchers {
        text("matchers", m, 512)?;
        matchers.push(
            m.parse::<Matcher>()
                .map_err(|e| bad(format!("matchers: {e}")))?,
        );
    }
    if b.created_by.trim().is_empty() {
        return Err(bad("created_by: say who you are"));
    }
    text("created_by", &b.created_by, 128)?;
    if b.comment.trim().is_empty() {
        return Err(bad("comment: say why"));
    }
    text("comment", &b.comment, MAX_TEXT)?;
    let start = match &b.starts_at {
        Some(v) => parse_time("starts_at", v)?,
        None => now,
    };
    let end = match (&b.ends_at, b.duration_secs) {
        (Some(v), None) => parse_time("ends_at", v)?,
        (None, Some(d)) if d.is_finite() && d > 0.0 && d <= 365.0 * 86_400.0 => {
            start + (d * 1000.0) as i64
        }
        (None, Some(d)) => return Err(bad(format!("duration_secs: {d} is not in (0, 1 year]"))),
        _ => return Err(bad("give exactly one of ends_at and duration_secs")),
    };
    if end <= start || end <= now {
        return Err(bad("ends_at: must be after starts_at and in the future"));
    }
    let s = Silence {
        id: format!("{:012x}{:08x}", now.max(0), fastrand::u32(..)),
        matchers,
        starts_at_ms: start,
        ends_at_ms: end,
        created_by: b.created_by.trim().to_owned(),
        comment: b.comment,
        created_at_ms: now,
        expired_by: None,
    };
    let s = inc.put_silence(s).await?;
    tracing::info!(silence = %s.id, by = %s.created_by, "SilenceCreated");
    Ok((StatusCode::CREATED, Json(s)))
}

/// `DELETE /api/v1/silences/{id}` parameters.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpireParams {
    by: Option<String>,
}

async fn expire_silence<S: IncidentStore + Clone>(
    State(inc): State<Incidents<S>>,
    Path(id): Path<String>,
    Query(p): Query<ExpireParams>,
) -> Result<Json<Silence>, ApiError> {
    text("id", &id, 64)?;
    let by = p.by.unwrap_or_else(|| "api".into());
    text("by", &by, 128)?;
    let s = inc.expire_silence(&id, &by).await?;
    tracing::info!(silence = %s.id, by = %by, "SilenceExpired");
    Ok(Json(s))
}
