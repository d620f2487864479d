//! `/api/v1/watch` (WebSocket, or SSE with `Accept: text/event-stream`) and
//! `/api/v1/events` (the retained event log; custom events).

use crate::acl::{Caller, Client};
use crate::app::{ApiResult, AppState, json};
use crate::extract::{Json, Query};
use crate::limits::{Stream, StreamGuard};
use crate::problem::{Problem, ProblemDoc};
use crate::ws::{self, Incoming, WebSocket};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use muster_core::{CustomEventBody, Event};
use muster_feed::{Filter, Message, Subscription, SubscriptionError, Wire};
use serde::Serialize;
use std::collections::HashSet;
use std::future::Future;
use std::task::Poll;
use std::time::Duration;
use utoipa_axum::{router::OpenApiRouter, routes};

/// Messages already waiting that one write may carry together.
const COALESCE: usize = 16;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(watch))
        .routes(routes!(list_events, send_event))
}

fn gone(e: SubscriptionError) -> Problem {
    match e {
        SubscriptionError::Gone { .. } => Problem::new(StatusCode::GONE, "gone", e.to_string()),
        SubscriptionError::Closed => {
            Problem::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", e.to_string())
        }
        e => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        ),
    }
}

pub(crate) fn parse_filter(q: &Query) -> ApiResult<(Filter, Option<u64>)> {
    let mut services: Option<HashSet<String>> = None;
    for v in q.all("services").chain(q.all("service")) {
        for name in v.split(',').filter(|n| !n.is_empty()) {
            muster_core::name::validate_service_name(name)
                .map_err(|m| Problem::bad_request("services", m))?;
            services
                .get_or_insert_with(HashSet::new)
                .insert(name.to_string());
        }
    }
    let from = q
        .one("from")
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                Problem::bad_request("from", format!("{v:?} is not a revision number"))
            })
        })
        .transpose()?;
    let full = q.flag("full")?.unwrap_or(false);
    Ok((
        Filter {
            services,
            full,
            allow: None,
        },
        from,
    ))
}

/// The change feed. Without `from`: one `snapshot` per watched service, then
/// every delta. With `from=REV`: the retained events after REV, then live.
/// 410 when REV is older than the retained history.
#[utoipa::path(get, path = "/api/v1/watch", tag = "feed",
    params(
        ("services" = Option<String>, Query, description = "comma-separated services to watch (default all)"),
        ("from" = Option<u64>, Query, description = "resume after this revision"),
        ("full" = Option<bool>, Query, description = "attach the service's instance list to every delta"),
    ),
    responses(
        (status = 101, description = "WebSocket: one JSON event per text message"),
        (status = 200, description = "Server-Sent Events (Accept: text/event-stream): `id` is the revision, `data` the event", content_type = "text/event-stream"),
        (status = 400, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 410, description = "from is older than the retained history", body = ProblemDoc, content_type = "application/problem+json"),
    ))]
async fn watch(
    State(s): State<AppState>,
    caller: Caller,
    client: Client,
    q: Query,
    req: Request,
) -> ApiResult<Response> {
    let (mut filter, mut from) = parse_filter(&q)?;
    // Naming a service one may not read is refused; watching everything
    // shows only what one may read.
    if let Some(services) = &filter.services {
        let mut names: Vec<&String> = services.iter().collect();
        names.sort();
        for name in names {
            caller.require_read(name)?;
        }
    }
    filter.allow = caller.read_filter();
    let (mut parts, _) = req.into_parts();
    let headers: &HeaderMap = &parts.headers;
    // SSE clients resume with Last-Event-ID.
    if from.is_none()
        && let Some(id) = headers.get("last-event-id").and_then(|v| v.to_str().ok())
    {
        from = id.parse().ok();
    }
    let wants_ws = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let wants_sse = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    if !wants_ws && !wants_sse {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            "the feed is a WebSocket (Upgrade: websocket) or Server-Sent Events (Accept: text/event-stream)",
        ));
    }
    let registry = s.registry()?.clone();
    let hub = s.hub()?.clone();
    // A bad handshake is refused before a subscription (and the watcher
    // gauge) is taken; a 410 still wins over the 101 that is then dropped.
    let upgrade = if wants_ws {
        Some(
            ws::upgrade(&mut parts, &s)
                .await
                .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, "invalid", e))?,
        )
    } else {
        None
    };
    // Counted against the client's cap for as long as the stream lives.
    let slot = s.limits.open(client.0, Stream::Watcher)?;
    let sub = Subscription::open(&hub, registry, filter, from)
        .await
        .map_err(gone)?;
    s.metrics.watchers(1);
    if let Some((response, on_upgrade)) = upgrade {
        let metrics = s.metrics.clone();
        let ping = s.ping;
        tokio::spawn(async move {
            if let Ok(io) = on_upgrade.await {
                serve_ws(WebSocket::new(io, ping * 3), sub, ping).await;
            }
            metrics.watchers(-1);
            drop(slot);
        });
        return Ok(response);
    }
    Ok(sse(s, sub, slot))
}

#[derive(Serialize)]
struct Closing<'a> {
    kind: &'static str,
    code: &'a str,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    resume_from: Option<u64>,
}

fn closing(e: &SubscriptionError) -> String {
    let (code, resume_from) = match e {
        SubscriptionError::Lagged { resume_from, .. } => ("lagged", Some(*resume_from)),
        SubscriptionError::Gone { .. } => ("gone", None),
        _ => ("closed", None),
    };
    serde_json::to_string(&Closing {
        kind: "error",
        code,
        detail: e.to_string(),
        resume_from,
    })
    .unwrap_or_default()
}

/// Pushes the subscription down the socket; pings the peer and drops it when
/// it stops answering. Each event's frame is encoded once for all watchers
/// (`Message::wire`); messages already waiting go out in the same write.
pub(crate) async fn serve_ws(mut socket: WebSocket, mut sub: Subscription, every: Duration) {
    let mut ping = tokio::time::interval(every);
    // When the ping timer is due next: before then it cannot have fired.
    let mut ping_due = ping.tick().await + every;
    let mut last_heard = tokio::time::Instant::now();
    // Reused across events: no allocation per event once it has grown.
    let mut frames: Vec<Wire> = Vec::with_capacity(1);
    enum Next {
        Event(Result<Message, SubscriptionError>),
        Incoming(Result<Incoming, ws::WsError>),
        Ping,
    }
    // Whether an event was just sent, and whether the socket and the timer
    // last answered `Pending` (their interest is registered); see below.
    let mut after_event = false;
    let mut idle_armed = false;
    loop {
        // Events first. Polled after every event, as a `select!` does, the
        // socket's read side and the ping timer would register interest with
        // the runtime again each time (the socket's under a lock), per
        // watcher per event, nearly always for nothing. So right after an
        // event they are skipped while the timer is not yet due: the timer's
        // interest then still stands and is sure to wake this task, which
        // then polls both. A wake-up by the socket that came together with an
        // event is thus answered by the next wake-up without an event, at the
        // latest at the next ping (a peer that has gone is found sooner, by
        // the next write failing).
        let next = {
            let mut event = std::pin::pin!(sub.next());
            std::future::poll_fn(|cx| {
                if let Poll::Ready(m) = event.as_mut().poll(cx) {
                    return Poll::Ready(Next::Event(m));
                }
                if std::mem::take(&mut after_event)
                    && idle_armed
                    && tokio::time::Instant::now() < ping_due
                {
                    return Poll::Pending;
                }
                idle_armed = false;
                if let Poll::Ready(r) = std::pin::pin!(socket.recv()).poll(cx) {
                    return Poll::Ready(Next::Incoming(r));
                }
                if let Poll::Ready(at) = ping.poll_tick(cx) {
                    ping_due = at + every;
                    return Poll::Ready(Next::Ping);
                }
                idle_armed = true;
                Poll::Pending
            })
            .await
        };
        match next {
            Next::Event(msg) => {
                let mut ended = None;
                match msg {
                    Ok(m) => frames.push(m.into_wire(ws::text_frame)),
                    Err(e) => ended = Some(e),
                }
                while ended.is_none() && frames.len() < COALESCE {
                    match sub.try_next() {
                        Some(Ok(m)) => frames.push(m.into_wire(ws::text_frame)),
                        Some(Err(e)) => ended = Some(e),
                        None => break,
                    }
                }
                let sent = socket.send(&frames).await;
                frames.clear();
                if sent.is_err() {
                    return;
                }
                after_event = true;
                if let Some(e) = ended {
                    if socket.send_text(&closing(&e)).await.is_ok() {
                        let (code, reason) = close_code(&e);
                        socket.close(code, reason).await;
                    }
                    return;
                }
            }
            Next::Incoming(incoming) => match incoming {
                Ok(Incoming::Close(code)) => return socket.close_reply(code).await,
                Ok(Incoming::Ping(p)) => {
                    last_heard = tokio::time::Instant::now();
                    if socket.pong(&p).await.is_err() {
                        return;
                    }
                }
                Ok(_) => last_heard = tokio::time::Instant::now(),
                Err(e) => return socket.fail(&e).await,
            },
            Next::Ping => {
                if last_heard.elapsed() > every * 3 {
                    tracing::info!("watcher stopped answering pings; closing");
                    return;
                }
                if socket.ping().await.is_err() {
                    return;
                }
            }
        }
    }
}

/// The close frame's code and reason; the closing message says the rest.
fn close_code(e: &SubscriptionError) -> (u16, &'static str) {
    match e {
        SubscriptionError::Lagged { .. } => (ws::POLICY, "lagged"),
        SubscriptionError::Gone { .. } => (ws::POLICY, "gone"),
        _ => (ws::GOING_AWAY, "closed"),
    }
}

fn sse(s: AppState, sub: Subscription, slot: StreamGuard) -> Response {
    struct Guard(AppState, #[allow(dead_code)] StreamGuard);
    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.metrics.watchers(-1);
        }
    }
    let stream = futures_util::stream::unfold(
        (sub, false, Guard(s, slot)),
        |(mut sub, done, guard)| async move {
            if done {
                return None;
            }
            match sub.next().await {
                Ok(m) => {
                    let ev = SseEvent::default()
                        .id(m.revision.to_string())
                        .data(String::from_utf8_lossy(m.json()));
                    Some((Ok::<_, std::convert::Infallible>(ev), (sub, false, guard)))
                }
                Err(e) => {
                    let ev = SseEvent::default().event("error").data(closing(&e));
                    Some((Ok(ev), (sub, true, guard)))
                }
            }
        },
    );
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// The retained event log, oldest first.
#[utoipa::path(get, path = "/api/v1/events", tag = "feed",
    params(
        ("since" = Option<u64>, Query, description = "only events after this revision"),
        ("service" = Option<String>, Query),
        ("limit" = Option<u32>, Query, description = "at most this many (default 100, at most 10000)"),
    ),
    responses(
        (status = 200, body = Vec<Event>),
        (status = 400, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 410, body = ProblemDoc, content_type = "application/problem+json"),
    ))]
async fn list_events(State(s): State<AppState>, caller: Caller, q: Query) -> ApiResult<Response> {
    let hub = s.hub()?;
    let store = hub.store();
    let since = match q.one("since") {
        None => store.oldest_revision().saturating_sub(1),
        Some(v) => v.parse::<u64>().map_err(|_| {
            Problem::bad_request("since", format!("{v:?} is not a revision number"))
        })?,
    };
    let limit = match q.one("limit") {
        None => 100,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=10_000).contains(n))
            .ok_or_else(|| {
                Problem::bad_request("limit", format!("{v:?} is not a number from 1 to 10000"))
            })?,
    };
    let service = q.one("service");
    if let Some(name) = service {
        caller.require_read(name)?;
    }
    let everything = caller.reads_everything();
    if since + 1 < store.oldest_revision() {
        return Err(Problem::new(
            StatusCode::GONE,
            "gone",
            format!(
                "revision {since} is no longer retained; the oldest retained is {}",
                store.oldest_revision()
            ),
        ));
    }
    // Read in chunks so a small limit does not replay the whole history.
    let mut out: Vec<u8> = b"[".to_vec();
    let (mut n, mut from, upto) = (0usize, since + 1, store.current_revision());
    while n < limit && from <= upto {
        let to = (from + 1023).min(upto);
        let items = hub
            .history(from, to)
            .await
            .map_err(|e| Problem::new(StatusCode::GONE, "gone", e.to_string()))?;
        for item in items {
            if n >= limit {
                break;
            }
            let readable = everything || item.is_broadcast() || caller.may_read(&item.service);
            if readable && service.is_none_or(|sv| *item.service == *sv || item.is_broadcast()) {
                if n > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(&item.json);
                n += 1;
            }
        }
        from = to + 1;
    }
    out.push(b']');
    Ok(crate::app::raw_json(StatusCode::OK, out))
}

#[derive(Serialize, utoipa::ToSchema)]
struct Accepted {
    revision: u64,
}

/// A custom event for watchers of some services, or for all (`broadcast`).
#[utoipa::path(post, path = "/api/v1/events", tag = "feed", request_body = CustomEventBody,
    responses(
        (status = 202, body = Accepted),
        (status = 400, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 413, body = ProblemDoc, content_type = "application/problem+json"),
    ))]
async fn send_event(
    State(s): State<AppState>,
    caller: Caller,
    Json(body): Json<CustomEventBody>,
) -> ApiResult<Response> {
    // A broadcast (or an event addressed to no service in particular)
    // reaches everyone: the operator's right. Targeted events need write on
    // every service they are addressed to.
    match &body.services {
        Some(services) if !body.broadcast => {
            for name in services {
                caller.require_write(name)?;
            }
        }
        _ => caller.require_operator()?,
    }
    let revision = s.registry()?.custom_event(body).await?;
    Ok(json(StatusCode::ACCEPTED, &Accepted { revision }))
}
