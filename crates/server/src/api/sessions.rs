//! `GET /api/v1/sessions`: registration bound to a WebSocket (the Hound Dog
//! seed). The first text message is a register body plus `service` and
//! optional `monitor: [services]`; the instance lives while the socket is
//! open, and events of its own and the monitored services (custom events
//! addressed to them included) are pushed down the same socket.
//!
//! The socket is the lease: the instance is registered on a short store
//! lease the session renews while the peer answers pings; a close, a silent
//! peer or a server shutdown revokes it, and the store deletes the instance
//! as an `expired` event.

use crate::acl::{Caller, Client};
use crate::app::{ApiResult, AppState};
use crate::limits::Stream;
use crate::problem::Problem;
use crate::ws::{self, Incoming, WebSocket};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use muster_core::RegisterBody;
use muster_feed::{Filter, Subscription};
use serde::Serialize;
use std::collections::HashSet;
use std::time::Duration;
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(session))
}

/// The session's lease: renewed every `RENEW`, lapses after `LEASE` without renewal.
const LEASE: Duration = Duration::from_secs(15);
const RENEW: Duration = Duration::from_secs(5);
const HELLO_WITHIN: Duration = Duration::from_secs(10);

/// A WebSocket session: send a register body with `service` (and optional
/// `monitor`) as the first text message.
#[utoipa::path(get, path = "/api/v1/sessions", tag = "feed",
    responses(
        (status = 101, description = "WebSocket: first a `session` message with the registered instance, then events"),
        (status = 400, description = "not a WebSocket upgrade", body = crate::problem::ProblemDoc, content_type = "application/problem+json"),
    ))]
async fn session(
    State(s): State<AppState>,
    caller: Caller,
    client: Client,
    req: Request,
) -> ApiResult<Response> {
    // Counted against the client's cap for as long as the socket lives.
    let slot = s.limits.open(client.0, Stream::Session)?;
    let (mut parts, _) = req.into_parts();
    let (response, on_upgrade) = ws::upgrade(&mut parts, &s).await.map_err(|e| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!("sessions are WebSockets: {e}"),
        )
    })?;
    s.registry()?;
    tokio::spawn(async move {
        if let Ok(io) = on_upgrade.await {
            run(WebSocket::new(io, s.ping * 3), s, caller).await;
        }
        drop(slot);
    });
    Ok(response)
}

#[derive(Serialize)]
struct Refusal {
    kind: &'static str,
    code: String,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<String>,
}

async fn refuse(mut socket: WebSocket, p: Problem) {
    let msg = Refusal {
        kind: "error",
        code: p.code.to_string(),
        detail: p.detail.clone(),
        field: p.field.clone(),
    };
    if socket
        .send_text(&serde_json::to_string(&msg).unwrap_or_default())
        .await
        .is_ok()
    {
        socket.close(ws::POLICY, "refused").await;
    }
}

/// Splits the hello into the register body and the monitored services.
fn parse_hello(text: &str) -> Result<(String, RegisterBody, Vec<String>), Problem> {
    let mut v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| Problem::bad_request("body", e.to_string()))?;
    let obj = v
        .as_object_mut()
        .ok_or_else(|| Problem::bad_request("body", "the first message must be a JSON object"))?;
    let monitor: Vec<String> = match obj.remove("monitor") {
        None => Vec::new(),
        Some(m) => serde_json::from_value(m).map_err(|_| {
            Problem::bad_request("monitor", "monitor must be a list of service names")
        })?,
    };
    for (i, name) in monitor.iter().enumerate() {
        muster_core::name::validate_service_name(name)
            .map_err(|m| Problem::bad_request(format!("monitor[{i}]"), m))?;
    }
    let service = obj
        .get("service")
        .and_then(|s| s.as_str())
        .map(str::to_string)
        .ok_or_else(|| Problem::bad_request("service", "the session's service is required"))?;
    let body: RegisterBody = crate::extract::decode(&serde_json::to_vec(&v).unwrap_or_default())?;
    Ok((service, body, monitor))
}

async fn run(mut socket: WebSocket, s: AppState, caller: Caller) {
    let hello = match tokio::time::timeout(HELLO_WITHIN, socket.recv()).await {
        Ok(Ok(Incoming::Text(t))) => t,
        Ok(Err(e)) => return socket.fail(&e).await,
        Ok(Ok(Incoming::Close(code))) => return socket.close_reply(code).await,
        Ok(Ok(_)) => {
            return refuse(
                socket,
                Problem::bad_request("body", "the first message must be a text register body"),
            )
            .await;
        }
        _ => return,
    };
    let (service, body, monitor) = match parse_hello(&hello) {
        Ok(h) => h,
        Err(p) => return refuse(socket, p).await,
    };
    // The session registers into its service and hears the monitored ones.
    let allowed = caller
        .require_write(&service)
        .and_then(|()| monitor.iter().try_for_each(|m| caller.require_read(m)));
    if let Err(p) = allowed {
        s.metrics.refused(p.code);
        return refuse(socket, p).await;
    }
    let (Ok(registry), Ok(hub)) = (s.registry().cloned(), s.hub().cloned()) else {
        return;
    };
    let mut services: HashSet<String> = monitor.into_iter().collect();
    services.insert(service.clone());
    // Subscribe before registering: the snapshot, then the session's own
    // registration, arrive in order.
    let filter = Filter {
        services: Some(services),
        full: false,
        allow: None,
    };
    let mut sub = match Subscription::open(&hub, registry.clone(), filter, None).await {
        Ok(sub) => sub,
        Err(e) => {
            return refuse(
                socket,
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    e.to_string(),
                ),
            )
            .await;
        }
    };
    let registered = match registry.register_session(&service, body, LEASE).await {
        Ok(r) => r,
        Err(e) => return refuse(socket, e.into()).await,
    };
    let Some(lease) = registered.lease else {
        return;
    };
    let instance: serde_json::Value =
        serde_json::from_slice(&registered.instance.to_vec()).unwrap_or_default();
    let hello_back = serde_json::json!({"kind": "session", "revision": registered.revision, "service": service, "instance": instance});
    s.metrics.sessions(1);
    let store = registry.store().clone();
    let mut renew = tokio::time::interval(RENEW);
    let mut ping = tokio::time::interval(s.ping);
    let silent_limit = s.ping * 3;
    let mut last_heard = tokio::time::Instant::now();
    let mut frames: Vec<muster_feed::Wire> = Vec::with_capacity(1);
    let mut peer_closed = None;
    let reason = if socket.send_text(&hello_back.to_string()).await.is_err() {
        "peer gone"
    } else {
        loop {
            tokio::select! {
                msg = sub.next() => match msg {
                    Ok(m) => {
                        frames.push(m.into_wire(ws::text_frame));
                        let sent = socket.send(&frames).await;
                        frames.clear();
                        if sent.is_err() {
                            break "peer gone";
                        }
                    }
                    Err(_) => break "feed ended",
                },
                incoming = socket.recv() => match incoming {
                    Ok(Incoming::Close(code)) => {
                        peer_closed = Some(code);
                        break "closed";
                    }
                    Ok(Incoming::Ping(p)) => {
                        last_heard = tokio::time::Instant::now();
                        if socket.pong(&p).await.is_err() {
                            break "peer gone";
                        }
                    }
                    Ok(_) => last_heard = tokio::time::Instant::now(),
                    Err(_) => break "closed",
                },
                _ = renew.tick() => {
                    if store.lease_keepalive(lease).await.is_err() {
                        break "lease lost";
                    }
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() > silent_limit {
                        break "silent peer";
                    }
                    if socket.ping().await.is_err() {
                        break "peer gone";
                    }
                }
            }
        }
    };
    // The socket was the lease: ending it removes the instance (`expired`).
    let _ = store.lease_revoke(lease).await;
    if let Some(code) = peer_closed {
        socket.close_reply(code).await;
    }
    s.metrics.sessions(-1);
    tracing::info!(service, reason, "session ended");
}
