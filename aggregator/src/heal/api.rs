//! Healing's API, on the aggregator's server beside the incident API (reads only; healing's
//! writes are its own):
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/api/v1/heal/efficacy` | per playbook: actions verified healed, not healed, the share |
//! | GET | `/api/v1/heal/policy` | the policy in force, its file, and why a reload was refused |
//! | GET | `/api/v1/incidents/{id}/actions` | the incident's action records (intent, outcome, verification, restore) |
//! | GET | `/api/v1/incidents/{id}/plan` | what the policy would do now (observes, changes nothing) |

use super::Healer;
use crate::api::{ApiError, valid_id};
use crate::policy::{Decision, Policy};
use crate::store::{ActionRecord, ActionStore, Efficacy, IncidentStore, efficacy};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use selfheal_core::incident::{Incident, IncidentId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The routes.
pub fn router<S: IncidentStore + ActionStore + Clone>(healer: Arc<Healer<S>>) -> Router {
    Router::new()
        .route("/api/v1/heal/efficacy", get(efficacy_of::<S>))
        .route("/api/v1/heal/policy", get(policy_of::<S>))
        .route("/api/v1/incidents/{id}/actions", get(actions::<S>))
        .route("/api/v1/incidents/{id}/plan", get(plan::<S>))
        .with_state(healer)
}

/// One playbook's efficacy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EfficacyView {
    /// Counts.
    #[serde(flatten)]
    pub counts: Efficacy,
    /// Share healed; `null` before any verification.
    pub share: Option<f64>,
}

/// `GET /api/v1/heal/efficacy`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EfficacyBody {
    /// Per playbook.
    pub playbooks: BTreeMap<String, EfficacyView>,
}

async fn efficacy_of<S: IncidentStore + ActionStore + Clone>(
    State(h): State<Arc<Healer<S>>>,
) -> Result<Json<EfficacyBody>, ApiError> {
    let all = h.incidents().store().actions_since(0).await?;
    Ok(Json(EfficacyBody {
        playbooks: efficacy(&all)
            .into_iter()
            .map(|(k, v)| {
                (
                    k,
                    EfficacyView {
                        share: v.share(),
                        counts: v,
                    },
                )
            })
            .collect(),
    }))
}

/// `GET /api/v1/heal/policy`.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyBody {
    /// The file, if any (else the built-in defaults).
    pub path: Option<String>,
    /// The policy in force.
    pub policy: Policy,
    /// Why the file in place was refused, when the last reload failed.
    pub last_reload_error: Option<String>,
}

async fn policy_of<S: IncidentStore + ActionStore + Clone>(
    State(h): State<Arc<Healer<S>>>,
) -> Json<PolicyBody> {
    let p = h.policy();
    Json(PolicyBody {
        path: p.path().map(|p| p.display().to_string()),
        policy: (*p.current()).clone(),
        last_reload_error: p.last_error(),
    })
}

async fn actions<S: IncidentStore + ActionStore + Clone>(
    State(h): State<Arc<Healer<S>>>,
    Path(id): Path<String>,
) -> Result<Json<Vec<ActionRecord>>, ApiError> {
    let id = valid_id(&id)?;
    Ok(Json(h.incidents().store().actions_of(&id).await?))
}

/// `GET /api/v1/incidents/{id}/plan`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanBody {
    /// The incident as decided on.
    pub incident: Incident,
    /// Whether the policy is in dry-run.
    pub dry_run: bool,
    /// What the policy would do now.
    pub decision: Decision,
    /// What was recorded already.
    pub actions: Vec<ActionRecord>,
}

async fn plan<S: IncidentStore + ActionStore + Clone>(
    State(h): State<Arc<Healer<S>>>,
    Path(id): Path<String>,
) -> Result<Json<PlanBody>, ApiError> {
    let id: IncidentId = valid_id(&id)?;
    let Some((incident, decision)) = h.plan(&id).await else {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("no incident {id}")));
    };
    let actions = h.incidents().store().actions_of(&id).await?;
    Ok(Json(PlanBody {
        incident,
        dry_run: h.policy().current().dry_run,
        decision,
        actions,
    }))
}
