//! The router and the state every handler shares.

use crate::metrics::Metrics;
use crate::problem::Problem;
use crate::{api, ops};
use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use muster_feed::Hub;
use muster_health::Health;
use muster_registry::Registry;
use std::sync::{Arc, OnceLock};
use tokio::time::Instant;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

/// What exists once the store is open and the index loaded.
pub struct Ready {
    pub registry: Arc<Registry>,
    pub health: Health,
    pub hub: Hub,
}

/// Shared by every handler. The registry appears once the store is open and
/// the index loaded; until then the API answers 503 and `/ready` says not yet.
///
/// One `Arc`: axum clones the state for every request, and the layer and
/// extractors clone it again; one count to bump, not one per field.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

/// What [`AppState`] shares (its fields, read through `Deref`).
pub struct Shared {
    ready: OnceLock<Ready>,
    pub metrics: Arc<Metrics>,
    /// WebSocket ping interval; a peer silent for three of them is dropped.
    pub ping: std::time::Duration,
    /// Who may do what; see [`crate::acl`].
    pub acl: Arc<crate::acl::Acl>,
    /// Per-client request rate and stream caps.
    pub limits: Arc<crate::limits::ClientLimits>,
    pub body: crate::limits::BodyLimits,
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    pub fn new(metrics: Arc<Metrics>, config: &crate::Config) -> AppState {
        AppState(Arc::new(Shared {
            ready: OnceLock::new(),
            metrics,
            ping: config.ping,
            acl: Arc::new(crate::acl::Acl::new(&config.acl)),
            limits: crate::limits::ClientLimits::new(config.client_limits.clone()),
            body: crate::limits::BodyLimits {
                normal: config.body_limit,
                snapshot: config.snapshot_limit,
                timeout: config.body_timeout,
            },
        }))
    }

    pub fn set_ready(&self, r: Ready) {
        let _ = self.ready.set(r);
    }

    pub fn registry(&self) -> Result<&Arc<Registry>, Problem> {
        self.ready().map(|r| &r.registry)
    }

    pub fn health(&self) -> Result<&Health, Problem> {
        self.ready().map(|r| &r.health)
    }

    pub fn hub(&self) -> Result<&Hub, Problem> {
        self.ready().map(|r| &r.hub)
    }

    fn ready(&self) -> Result<&Ready, Problem> {
        self.ready.get().ok_or_else(|| {
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                "the registry is still loading its store; retry shortly",
            )
        })
    }

    pub fn is_ready(&self) -> bool {
        self.ready.get().is_some()
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "muster", description = "muster's native HTTP API: services, instances, health and operations."),
    tags(
        (name = "services", description = "Service definitions"),
        (name = "instances", description = "Registration, discovery, heartbeats"),
        (name = "checks", description = "Health checks, probe history and stats"),
        (name = "feed", description = "The change feed, the event log and custom events"),
        (name = "coordination", description = "Leader elections and cluster membership"),
        (name = "operations", description = "Liveness, readiness, metrics"),
    ),
    components(schemas(crate::problem::ProblemDoc))
)]
struct ApiDoc;

/// The errors any operation can answer, whatever it does: bad input, no
/// or the wrong token, a body too large, a rate limit, a store not ready.
/// Added to every operation so the document says what the server does.
struct CommonErrors;

impl utoipa::Modify for CommonErrors {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let problem = |what: &str| {
            ResponseBuilder::new()
                .description(what)
                .content(
                    "application/problem+json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("Problem")))
                        .build(),
                )
                .build()
        };
        let common = [
            ("400", "invalid input; `field` names the offending field"),
            ("401", "no token, or one this server does not know"),
            ("403", "the token lacks the right this needs"),
            ("413", "the body is larger than this route accepts"),
            (
                "429",
                "rate limited or over a per-client cap; see Retry-After",
            ),
            (
                "503",
                "the store is loading or cannot take writes; see Retry-After",
            ),
        ];
        for (path, item) in doc.paths.paths.iter_mut() {
            if matches!(path.as_str(), "/health" | "/ready") {
                continue;
            }
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                for (code, what) in common {
                    op.responses
                        .responses
                        .entry(code.to_string())
                        .or_insert_with(|| problem(what).into());
                }
            }
        }
    }
}

fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(api::services::routes())
        .merge(api::instances::routes())
        .merge(api::checks::routes())
        .merge(api::feed::routes())
        .merge(api::sessions::routes())
        .merge(api::elections::routes())
        .merge(api::prometheus::routes())
        .merge(api::snapshot::routes())
        .merge(ops::routes())
}

/// The OpenAPI document of every native route.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = routes().into_openapi();
    utoipa::Modify::modify(&CommonErrors, &mut doc);
    doc
}

pub fn router(state: AppState) -> Router {
    let (router, mut doc) = routes().split_for_parts();
    utoipa::Modify::modify(&CommonErrors, &mut doc);
    let doc = Arc::new(doc);
    router
        .route(
            "/api/openapi.json",
            axum::routing::get(move || {
                let doc = doc.clone();
                async move { axum::Json(doc.as_ref().clone()) }
            }),
        )
        .merge(crate::consul::router())
        .fallback(|| async { Problem::not_found("no such route; see /api/openapi.json") })
        .method_not_allowed_fallback(|| async {
            Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), gate))
        // `gate` bounds every body by its route's limit instead.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

/// What every request goes through, in one layer (each axum `from_fn`
/// layer costs a boxed clone of the service beneath and a boxed future per
/// request): it is timed and counted, and stamped with `X-Muster-Revision`;
/// access control and rate limits let it in or refuse it (`acl`); a request
/// let in has its body bounded (`limits`).
async fn gate(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    // Shared, not copied: the route's pattern as the router matched it.
    let route = req.extensions().get::<MatchedPath>().cloned();
    let mut resp = match crate::acl::authorize(&state, req).await {
        Ok(req) => {
            let req =
                crate::limits::limit_body(state.body, route.as_ref().map(|r| r.as_str()), req);
            next.run(req).await
        }
        Err(refused) => refused,
    };
    let revision = state.ready.get().map_or(0, |r| r.registry.revision());
    resp.headers_mut()
        .insert("x-muster-revision", HeaderValue::from(revision));
    state.metrics.observe_request(
        method.as_str(),
        route.as_ref().map_or("unmatched", |r| r.as_str()),
        resp.status().as_u16(),
        started.elapsed(),
    );
    resp
}

/// A handler result: JSON with a status, or a problem.
pub type ApiResult<T> = Result<T, Problem>;

/// A body that is already JSON (stored instance records, written as they are).
pub fn raw_json(status: StatusCode, body: Vec<u8>) -> Response {
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

pub fn json<T: serde::Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (
            status,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            bytes,
        )
            .into_response(),
        Err(e) => Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("cannot encode the answer: {e}"),
        )
        .into_response(),
    }
}
