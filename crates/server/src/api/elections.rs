//! `/api/v1/elections/{name}` (leader election: campaign, heartbeat, resign,
//! read) and `/api/v1/cluster` (who this server is and who leads the
//! cluster).
//!
//! The election rules live in `muster_registry` (`Registry::campaign` and
//! friends); these handlers only decode, call and encode.

use crate::app::{ApiResult, AppState, json};
use crate::extract::Json;
use crate::problem::ProblemDoc;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use muster_registry::{Campaign, CampaignBody, CandidateBody, Election};
use serde::Serialize;
use std::sync::OnceLock;
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(campaign))
        .routes(routes!(heartbeat))
        .routes(routes!(resign))
        .routes(routes!(get_election))
        .routes(routes!(cluster))
}

/// Asks to lead an election, without waiting. The candidate becomes leader
/// when nobody leads (the term goes up by one), stays leader (its lease
/// renewed) when it already leads, and otherwise learns who leads.
/// Leadership lapses when no heartbeat arrives within `ttl`.
#[utoipa::path(post, path = "/api/v1/elections/{name}/campaign", tag = "coordination",
    params(("name" = String, Path, description = "election name: 1-63 of a-z0-9-._, starting with a letter or digit")),
    request_body = CampaignBody,
    responses(
        (status = 200, description = "`leader` says whether the candidate leads now", body = Campaign),
        (status = 400, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "the election kept changing concurrently", body = ProblemDoc, content_type = "application/problem+json"),
    ))]
async fn campaign(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Json(body): Json<CampaignBody>,
) -> ApiResult<Response> {
    Ok(json(
        StatusCode::OK,
        &s.registry()?.campaign(&name, body).await?,
    ))
}

/// Keeps a held leadership for another ttl.
#[utoipa::path(put, path = "/api/v1/elections/{name}/heartbeat", tag = "coordination",
    params(("name" = String, Path, description = "election name")),
    request_body = CandidateBody,
    responses(
        (status = 200, body = Election),
        (status = 400, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "nobody leads (it lapsed): campaign again", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "another candidate leads", body = ProblemDoc, content_type = "application/problem+json"),
    ))]
async fn heartbeat(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Json(body): Json<CandidateBody>,
) -> ApiResult<Response> {
    Ok(json(
        StatusCode::OK,
        &s.registry()?.heartbeat_leader(&name, body).await?,
    ))
}

/// Gives up a held leadership; the term is kept, the next leader gets the next one.
#[utoipa::path(delete, path = "/api/v1/elections/{name}/leader", tag = "coordination",
    params(("name" = String, Path, description = "election name")),
    request_body = CandidateBody,
    responses(
        (status = 200, description = "resigned; nobody leads", body = Election),
        (status = 400, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "nobody leads", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "another candidate leads", body = ProblemDoc, content_type = "application/problem+json"),
    ))]
async fn resign(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Json(body): Json<CandidateBody>,
) -> ApiResult<Response> {
    Ok(json(
        StatusCode::OK,
        &s.registry()?.resign(&name, body).await?,
    ))
}

/// Who leads an election and since when. An election nobody campaigned in
/// answers `term: 0` and no holder.
#[utoipa::path(get, path = "/api/v1/elections/{name}", tag = "coordination",
    params(("name" = String, Path, description = "election name")),
    responses(
        (status = 200, body = Election),
        (status = 400, body = ProblemDoc, content_type = "application/problem+json"),
    ))]
async fn get_election(State(s): State<AppState>, Path(name): Path<String>) -> ApiResult<Response> {
    Ok(json(StatusCode::OK, &s.registry()?.election(&name).await?))
}

/// `GET /api/v1/cluster`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Cluster {
    /// `standalone` (one server, its own store) or `etcd`.
    mode: String,
    /// This server: `hostname@host:port`.
    node: String,
    members: Vec<String>,
    leader: String,
}

/// The machine's host name, read once: it does not change while the server
/// runs, and a blocking read of a tiny file once is cheaper than a thread hop
/// per request.
fn hostname() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "muster".to_string())
    })
}

/// The cluster this server belongs to. In standalone mode it is its own
/// only member and leader.
#[utoipa::path(get, path = "/api/v1/cluster", tag = "coordination",
    responses((status = 200, body = Cluster)))]
async fn cluster(headers: HeaderMap) -> Response {
    // The address the client reached us at stands in for the listen address,
    // which handlers do not see; it tells nodes on one machine apart.
    let node = match headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
        Some(host) if !host.is_empty() => format!("{}@{host}", hostname()),
        _ => hostname().to_string(),
    };
    json(
        StatusCode::OK,
        &Cluster {
            mode: "standalone".into(),
            members: vec![node.clone()],
            leader: node.clone(),
            node,
        },
    )
}
