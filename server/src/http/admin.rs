//! The admin REST API: projects, their API keys, and minting tokens with a key.
//!
//! Creating and listing projects is the operator's: over the control socket (which the `roomd`
//! command uses), or anyone reaching the server in open development mode. A project's own keys
//! may also be managed with its API key as the bearer, or with a token holding the `admin`
//! grant for that project. A key's secret appears in one answer only, the one creating it.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use roomd_room_apis::participants::rfc3339;
use roomd_room_apis::{ApiScope, Forbidden, KeyId, Role};

use super::{ApiError, Requester};
use crate::auth::{mint_token, preset, Caller, TokenRequest};
use crate::identity::{AdminError, KeyInfo};
use crate::store::ProjectRecord;
use crate::App;

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> ApiError {
        match e {
            AdminError::NoSuchProject(_) | AdminError::NoSuchKey(_) => {
                ApiError::not_found(e.to_string())
            }
            AdminError::ProjectExists(_) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            AdminError::BadProjectName => ApiError::bad_request(e.to_string()),
            AdminError::Store(e) => {
                tracing::error!(error = %e, "admin write failed");
                ApiError::internal()
            }
        }
    }
}

fn project_json(p: &ProjectRecord) -> serde_json::Value {
    serde_json::json!({
        "id": uuid::Uuid::from_bytes(p.id).to_string(),
        "name": p.name,
        "created": rfc3339(p.created_ms),
        "allow_tokens_without_expiry": p.allow_no_expiry,
    })
}

fn key_json(k: &KeyInfo) -> serde_json::Value {
    serde_json::json!({
        "id": k.id.to_string(),
        "project": k.project.to_string(),
        "created": rfc3339(k.created_ms),
        "revoked": k.revoked_ms.map(rfc3339),
    })
}

/// True for the operator: the control socket, or anyone in open development mode.
fn is_operator(req: &Requester) -> bool {
    req.operator || matches!(req.caller, Caller::Anonymous { .. })
}

/// Runs an admin write off the async threads (it flushes the store).
async fn admin<T: Send + 'static>(
    app: &Arc<App>,
    f: impl FnOnce(&crate::identity::Identity) -> Result<T, AdminError> + Send + 'static,
) -> Result<T, ApiError> {
    let app = app.clone();
    tokio::task::spawn_blocking(move || f(&app.ctx.auth.identity))
        .await
        .map_err(|_| ApiError::internal())?
        .map_err(ApiError::from)
}

/// The project `id_or_name`, if the requester may manage it.
fn managed_project(
    app: &App,
    req: &Requester,
    id_or_name: &str,
) -> Result<ProjectRecord, ApiError> {
    let project = app.ctx.auth.identity.project(id_or_name)?;
    if is_operator(req) || (req.caller.is_project_admin() && req.caller.project() == project.id) {
        Ok(project)
    } else {
        Err(req.forbid(app, Forbidden::NoAdminGrant, None))
    }
}

/// `GET /v1/projects`: every project for the operator; a project's own for its admin.
pub async fn list_projects(
    State(app): State<Arc<App>>,
    req: Requester,
) -> Result<Json<serde_json::Value>, ApiError> {
    let projects: Vec<serde_json::Value> = if is_operator(&req) {
        app.ctx
            .auth
            .identity
            .projects()
            .iter()
            .map(project_json)
            .collect()
    } else if req.caller.is_project_admin() {
        let own = uuid::Uuid::from_bytes(req.caller.project()).to_string();
        vec![project_json(&app.ctx.auth.identity.project(&own)?)]
    } else {
        return Err(req.forbid(&app, Forbidden::NoAdminGrant, None));
    };
    Ok(Json(serde_json::json!({ "projects": projects })))
}

/// The body of `POST /v1/projects`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewProject {
    name: String,
    #[serde(default)]
    allow_tokens_without_expiry: bool,
}

/// `POST /v1/projects`: the operator's.
pub async fn create_project(
    State(app): State<Arc<App>>,
    req: Requester,
    Json(body): Json<NewProject>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    if !is_operator(&req) {
        return Err(ApiError::forbidden(
            "projects are created by the operator (`roomd project create`)",
        ));
    }
    let project = admin(&app, move |id| {
        id.create_project(&body.name, body.allow_tokens_without_expiry)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(project_json(&project))))
}

/// `GET /v1/projects/{project}` (an id or a name).
pub async fn get_project(
    State(app): State<Arc<App>>,
    Path(project): Path<String>,
    req: Requester,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(project_json(&managed_project(&app, &req, &project)?)))
}

/// The body of `PATCH /v1/projects/{project}`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectChange {
    allow_tokens_without_expiry: bool,
}

/// `PATCH /v1/projects/{project}`: whether tokens without expiry are accepted.
pub async fn update_project(
    State(app): State<Arc<App>>,
    Path(project): Path<String>,
    req: Requester,
    Json(body): Json<ProjectChange>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let p = managed_project(&app, &req, &project)?;
    let id = uuid::Uuid::from_bytes(p.id).to_string();
    let p = admin(&app, move |identity| {
        identity.set_allow_no_expiry(&id, body.allow_tokens_without_expiry)
    })
    .await?;
    Ok(Json(project_json(&p)))
}

/// `GET /v1/projects/{project}/keys`: the project's keys, never their secrets.
pub async fn list_keys(
    State(app): State<Arc<App>>,
    Path(project): Path<String>,
    req: Requester,
) -> Result<Json<serde_json::Value>, ApiError> {
    let p = managed_project(&app, &req, &project)?;
    let id = roomd_room_apis::ProjectId::from_uuid(uuid::Uuid::from_bytes(p.id));
    let keys: Vec<serde_json::Value> = app
        .ctx
        .auth
        .identity
        .keys(Some(id))
        .iter()
        .map(key_json)
        .collect();
    Ok(Json(serde_json::json!({ "keys": keys })))
}

/// `POST /v1/projects/{project}/keys`: a new key; its whole form (`ma-…`, with the secret) is
/// in this answer and nowhere else.
pub async fn create_key(
    State(app): State<Arc<App>>,
    Path(project): Path<String>,
    req: Requester,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let p = managed_project(&app, &req, &project)?;
    let id = uuid::Uuid::from_bytes(p.id).to_string();
    let (info, key) = admin(&app, move |identity| identity.create_key(&id)).await?;
    tracing::info!(key = %info.id, project = %info.project, "API key created");
    let mut body = key_json(&info);
    body["key"] = serde_json::Value::String(key.to_string());
    Ok((StatusCode::CREATED, Json(body)))
}

/// `DELETE /v1/projects/{project}/keys/{key}`: revokes the key; tokens it signed are refused from
/// the next request on.
pub async fn revoke_key(
    State(app): State<Arc<App>>,
    Path((project, key)): Path<(String, String)>,
    req: Requester,
) -> Result<Json<serde_json::Value>, ApiError> {
    let p = managed_project(&app, &req, &project)?;
    let key: KeyId = key
        .parse()
        .map_err(|_| ApiError::bad_request("a key id is a UUID"))?;
    let owned = app
        .ctx
        .auth
        .identity
        .keys(None)
        .iter()
        .any(|k| k.id == key && *k.project.uuid().as_bytes() == p.id);
    if !owned {
        return Err(ApiError::not_found("no such key in this project"));
    }
    let info = admin(&app, move |identity| identity.revoke_key(key)).await?;
    tracing::info!(key = %info.id, "API key revoked");
    Ok(Json(key_json(&info)))
}

/// The body of `POST /v1/tokens`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    room: String,
    name: String,
    #[serde(default)]
    role: Option<Role>,
    /// An `ApiScope` as JSON; or use `preset`.
    #[serde(default)]
    api: Option<serde_json::Value>,
    /// `user`, `agent` or `full` (the MeshAgent SDK's presets); `user` by default.
    #[serde(default)]
    preset: Option<String>,
    /// How long the token is valid (`90s`, `1h`, `7d`; default `1h`), or `none` for a token
    /// without expiry.
    #[serde(default)]
    ttl: Option<String>,
}

/// Reads a time to live: a duration such as `1h`, or `none`.
pub fn parse_ttl(text: &str) -> Result<Option<std::time::Duration>, String> {
    if text == "none" {
        return Ok(None);
    }
    humantime::parse_duration(text)
        .map(Some)
        .map_err(|e| format!("ttl {text:?}: {e}"))
}

/// `POST /v1/tokens` with an API key as the bearer: a participant token signed with that key.
pub async fn create_token(
    State(app): State<Arc<App>>,
    req: Requester,
    Json(body): Json<NewToken>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Caller::ProjectKey { key, .. } = req.caller else {
        return Err(ApiError::forbidden(
            "tokens are minted with an API key as the bearer",
        ));
    };
    let api_key = app
        .ctx
        .auth
        .identity
        .api_key(key)
        .ok_or_else(|| ApiError::forbidden("the key was revoked"))?;
    let api = match (body.api, body.preset.as_deref()) {
        (Some(_), Some(_)) => return Err(ApiError::bad_request("give api or preset, not both")),
        (Some(api), None) => serde_json::from_value::<ApiScope>(api)
            .map_err(|e| ApiError::bad_request(format!("api: {e}")))?,
        (None, name) => preset(name.unwrap_or("user"))
            .ok_or_else(|| ApiError::bad_request("preset is user, agent or full"))?,
    };
    let ttl = parse_ttl(body.ttl.as_deref().unwrap_or("1h")).map_err(ApiError::bad_request)?;
    let request = TokenRequest {
        room: body.room,
        name: body.name,
        role: body.role.unwrap_or_default(),
        api,
        ttl,
    };
    let (token, exp) = mint_token(&api_key, &request).map_err(ApiError::bad_request)?;
    Ok(Json(serde_json::json!({
        "token": token,
        "expires_at": exp,
    })))
}
