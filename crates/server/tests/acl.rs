//! Access control over real HTTP: tokens, rights per service prefix, the
//! operator right, anonymous access, list filtering, the Consul token
//! spellings, and a walk of the OpenAPI document proving every write route
//! refuses an anonymous caller.

mod common;

use muster_server::{Config, RawConfig, StoreConfig};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const TOKENS: &str = r#"
[acl]
enabled = true
anonymous = "ANON"

[[acl.tokens]]
name = "deployer"
secret = "s3cr3t-deployer"
services = { "web" = "write", "*" = "read", "internal" = "none" }

[[acl.tokens]]
name = "reader"
secret = "reader-secret-0123"
services = { "*" = "read" }

[[acl.tokens]]
name = "ops"
secret_file = "SECRET_FILE"
services = { "*" = "write" }
operator = true
"#;

const DEPLOYER: &str = "s3cr3t-deployer";
const READER: &str = "reader-secret-0123";
const OPS: &str = "ops-secret-from-a-file";

fn config(anonymous: &str, dir: &std::path::Path) -> Config {
    let secret_file = dir.join("ops.token");
    std::fs::write(&secret_file, format!("{OPS}\n")).unwrap();
    let toml = TOKENS
        .replace("ANON", anonymous)
        .replace("SECRET_FILE", secret_file.to_str().unwrap());
    let mut c = Config::try_from(RawConfig::from_toml(&toml).unwrap()).unwrap();
    c.store = StoreConfig::Memory;
    c.http_addr = "127.0.0.1:0".parse().unwrap();
    c.dns_addr = "127.0.0.1:0".parse().unwrap();
    c
}

struct Acl {
    s: common::Server,
    _dir: tempfile::TempDir,
}

async fn start(anonymous: &str) -> Acl {
    let dir = tempfile::tempdir().unwrap();
    let s = common::start_ready(config(anonymous, dir.path())).await;
    Acl { s, _dir: dir }
}

impl Acl {
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .s
            .http
            .request(method, format!("{}{path}", self.s.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
}

fn instance(port: u16) -> Value {
    json!({"address": "10.0.0.1", "port": port})
}

#[tokio::test]
async fn tokens_get_what_their_rules_grant_and_nothing_more() {
    let a = start("none").await;
    let post = |svc: &str| format!("/api/v1/services/{svc}/instances");

    // No token, an unknown token, a malformed header: 401 with a problem body.
    let (st, body) = a.call(Method::GET, "/api/v1/services", None, None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert_eq!(body["status"], 401);
    assert!(body["detail"].as_str().unwrap().contains("Bearer"));
    let (st, _) = a
        .call(Method::GET, "/api/v1/services", Some("nope"), None)
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let r =
        a.s.http
            .get(format!("{}/api/v1/services", a.s.base))
            .header("authorization", "Basic Zm9vOmJhcg==")
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // The deployer writes web*, reads the rest, and not internal*.
    let (st, _) = a
        .call(
            Method::POST,
            &post("web"),
            Some(DEPLOYER),
            Some(instance(1)),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let (st, _) = a
        .call(
            Method::POST,
            &post("webshop"),
            Some(DEPLOYER),
            Some(instance(2)),
        )
        .await;
    assert_eq!(
        st,
        StatusCode::CREATED,
        "a rule covers every name with its prefix"
    );
    let (st, body) = a
        .call(
            Method::POST,
            &post("api"),
            Some(DEPLOYER),
            Some(instance(3)),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    assert!(
        body["detail"].as_str().unwrap().contains("deployer"),
        "{body}"
    );
    // The ops token (secret read from a file) writes anything.
    for svc in ["api", "internal-billing"] {
        let (st, _) = a
            .call(Method::POST, &post(svc), Some(OPS), Some(instance(4)))
            .await;
        assert_eq!(st, StatusCode::CREATED);
    }
    let (st, _) = a
        .call(Method::GET, &post("api"), Some(DEPLOYER), None)
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = a
        .call(Method::GET, &post("internal-billing"), Some(DEPLOYER), None)
        .await;
    assert_eq!(
        st,
        StatusCode::FORBIDDEN,
        "the longest prefix (internal = none) wins over *"
    );
    let (st, _) = a
        .call(
            Method::GET,
            "/api/v1/services/internal-billing",
            Some(DEPLOYER),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);

    // The reader reads and writes nothing.
    let (st, _) = a.call(Method::GET, &post("web"), Some(READER), None).await;
    assert_eq!(st, StatusCode::OK);
    for (m, path, body) in [
        (Method::POST, post("web"), Some(instance(5))),
        (
            Method::PUT,
            "/api/v1/services/web".to_string(),
            Some(json!({})),
        ),
        (
            Method::DELETE,
            "/api/v1/services/web?cascade=true".to_string(),
            None,
        ),
    ] {
        let (st, _) = a.call(m.clone(), &path, Some(READER), body).await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{m} {path}");
    }

    // Lists are filtered to what the token may read.
    let names = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect()
    };
    let (_, all) = a
        .call(Method::GET, "/api/v1/services", Some(OPS), None)
        .await;
    assert!(names(&all).contains(&"internal-billing".to_string()));
    let (_, some) = a
        .call(Method::GET, "/api/v1/services", Some(DEPLOYER), None)
        .await;
    assert!(
        !names(&some).contains(&"internal-billing".to_string()),
        "{some}"
    );
    assert!(names(&some).contains(&"api".to_string()));
    let (_, targets) = a
        .call(
            Method::GET,
            "/api/v1/prometheus/targets",
            Some(DEPLOYER),
            None,
        )
        .await;
    assert!(
        !targets.to_string().contains("internal-billing"),
        "{targets}"
    );
    let (st, _) = a
        .call(
            Method::GET,
            "/api/v1/prometheus/targets?service=internal-billing",
            Some(DEPLOYER),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);

    // Operator routes: snapshots, elections.
    let (st, _) = a
        .call(Method::GET, "/api/v1/snapshot", Some(DEPLOYER), None)
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = a
        .call(Method::GET, "/api/v1/snapshot", Some(OPS), None)
        .await;
    assert_eq!(st, StatusCode::OK);
    let campaign = json!({"candidate": "a", "ttl": "10s"});
    let (st, _) = a
        .call(
            Method::POST,
            "/api/v1/elections/lead/campaign",
            Some(DEPLOYER),
            Some(campaign.clone()),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = a
        .call(
            Method::POST,
            "/api/v1/elections/lead/campaign",
            Some(OPS),
            Some(campaign),
        )
        .await;
    assert_eq!(st, StatusCode::OK);

    // Liveness, readiness and the API description need no token.
    for path in ["/health", "/ready", "/api/openapi.json"] {
        let (st, _) = a.call(Method::GET, path, None, None).await;
        assert_eq!(st, StatusCode::OK, "{path}");
    }
    // Refusals are counted.
    let (_, metrics) = a.call(Method::GET, "/metrics", Some(READER), None).await;
    let m = metrics.as_str().unwrap();
    assert!(
        m.contains("muster_refused_requests_total{reason=\"unauthorized\"}"),
        "{m}"
    );
    assert!(
        m.contains("muster_refused_requests_total{reason=\"forbidden\"}"),
        "{m}"
    );
}

#[tokio::test]
async fn checks_are_guarded_by_the_service_they_belong_to() {
    let a = start("none").await;
    let mut body = instance(80);
    body["checks"] = json!([{"ttl": "30s"}]);
    let (st, inst) = a
        .call(
            Method::POST,
            "/api/v1/services/web/instances",
            Some(OPS),
            Some(body.clone()),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let (st, _) = a
        .call(
            Method::POST,
            "/api/v1/services/internal/instances",
            Some(OPS),
            Some(body),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let check = inst["checks"][0]["id"].as_str().unwrap().to_string();

    let (st, _) = a
        .call(
            Method::PUT,
            &format!("/api/v1/checks/{check}/pass"),
            Some(READER),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = a
        .call(
            Method::PUT,
            &format!("/api/v1/checks/{check}/pass"),
            Some(DEPLOYER),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = a
        .call(
            Method::GET,
            &format!("/api/v1/checks/{check}"),
            Some(READER),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = a
        .call(
            Method::PUT,
            &format!("/api/v1/checks/{check}/pass"),
            None,
            None,
        )
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    // An unknown check: a token learns it is unknown, nobody else does.
    let (st, _) = a
        .call(Method::PUT, "/api/v1/checks/nope/pass", None, None)
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, _) = a
        .call(Method::PUT, "/api/v1/checks/nope/pass", Some(READER), None)
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);

    let (_, list) = a
        .call(Method::GET, "/api/v1/checks", Some(DEPLOYER), None)
        .await;
    let services: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["service"].as_str().unwrap())
        .collect();
    assert_eq!(services, ["web"], "internal's check is filtered out");
    let add = json!({"service": "web", "instance": inst["id"], "ttl": "10s"});
    let (st, _) = a
        .call(
            Method::POST,
            "/api/v1/checks",
            Some(READER),
            Some(add.clone()),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = a
        .call(Method::POST, "/api/v1/checks", Some(DEPLOYER), Some(add))
        .await;
    assert_eq!(st, StatusCode::CREATED);
}

#[tokio::test]
async fn anonymous_read_reads_and_never_writes() {
    let a = start("read").await;
    let (st, _) = a.call(Method::GET, "/api/v1/services", None, None).await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = a
        .call(Method::GET, "/api/v1/services/web/instances", None, None)
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = a
        .call(
            Method::POST,
            "/api/v1/services/web/instances",
            None,
            Some(instance(1)),
        )
        .await;
    assert_eq!(
        st,
        StatusCode::UNAUTHORIZED,
        "a write without a token is 401 even when reads are open"
    );
    // A wrong token is still refused, not treated as anonymous.
    let (st, _) = a
        .call(Method::GET, "/api/v1/services", Some("wrong"), None)
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn consul_routes_take_x_consul_token_and_the_token_parameter() {
    let a = start("none").await;
    let url = |p: &str| format!("{}{p}", a.s.base);
    let reg = json!({"Name": "web", "ID": "web-1", "Address": "10.0.0.1", "Port": 80});
    let r =
        a.s.http
            .put(url("/v1/agent/service/register"))
            .json(&reg)
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r =
        a.s.http
            .put(url("/v1/agent/service/register"))
            .header("X-Consul-Token", READER)
            .json(&reg)
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r =
        a.s.http
            .put(url("/v1/agent/service/register"))
            .header("X-Consul-Token", DEPLOYER)
            .json(&reg)
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r =
        a.s.http
            .get(url(&format!("/v1/health/service/web?token={READER}")))
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.json::<Value>().await.unwrap().as_array().unwrap().len(),
        1
    );
    let r =
        a.s.http
            .get(url("/v1/health/service/web"))
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // `?token=` is a Consul spelling only.
    let r =
        a.s.http
            .get(url(&format!("/api/v1/services?token={READER}")))
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r =
        a.s.http
            .put(url("/v1/agent/service/deregister/web-1"))
            .header("X-Consul-Token", READER)
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r =
        a.s.http
            .put(url("/v1/agent/service/deregister/web-1"))
            .header("X-Consul-Token", DEPLOYER)
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

/// Every route in the OpenAPI document that changes something, and every
/// Consul-compatible write route, refuses a caller without a token — with
/// anonymous reads on as well as off.
#[tokio::test]
async fn every_write_route_refuses_an_anonymous_caller() {
    for anonymous in ["none", "read"] {
        let a = start(anonymous).await;
        let (_, doc) = a.call(Method::GET, "/api/openapi.json", None, None).await;
        let mut writes = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                if matches!(method.as_str(), "put" | "post" | "delete" | "patch") {
                    let concrete = path
                        .replace("{name}", "web")
                        .replace("{service}", "web")
                        .replace("{id}", "some-id");
                    writes.push((method.to_uppercase(), concrete));
                }
            }
        }
        assert!(writes.len() >= 15, "the walk found only {writes:?}");
        for path in [
            "/v1/agent/service/register",
            "/v1/agent/service/deregister/some-id",
            "/v1/agent/service/maintenance/some-id?enable=true",
            "/v1/agent/check/pass/some-id",
            "/v1/agent/check/warn/some-id",
            "/v1/agent/check/fail/some-id",
            "/v1/agent/check/update/some-id",
        ] {
            writes.push(("PUT".to_string(), path.to_string()));
        }
        for (method, path) in &writes {
            let m = Method::from_bytes(method.as_bytes()).unwrap();
            let (st, body) = a.call(m, path, None, Some(json!({}))).await;
            assert_eq!(
                st,
                StatusCode::UNAUTHORIZED,
                "{method} {path} with anonymous = {anonymous}: {body}"
            );
        }
        // And GETs without a token, when anonymous reads are off.
        if anonymous == "none" {
            for (path, item) in doc["paths"].as_object().unwrap() {
                if item.get("get").is_none() || ["/health", "/ready"].contains(&path.as_str()) {
                    continue;
                }
                let concrete = path
                    .replace("{name}", "web")
                    .replace("{service}", "web")
                    .replace("{id}", "x");
                let (st, _) = a.call(Method::GET, &concrete, None, None).await;
                assert_eq!(st, StatusCode::UNAUTHORIZED, "GET {concrete}");
            }
        }
    }
}

#[test]
fn tokens_without_acl_enabled_are_refused_and_so_are_bad_rights() {
    let check = |t: &str| Config::try_from(RawConfig::from_toml(t).unwrap());
    assert!(
        check("[[acl.tokens]]\nname = \"x\"\nsecret = \"y\"")
            .unwrap_err()
            .contains("enabled"),
        "tokens must not be silently ignored"
    );
    let e = check("[acl]\nenabled = true\n[[acl.tokens]]\nname = \"x\"\nsecret = \"y\"\nservices = { web = \"admin\" }")
        .unwrap_err();
    assert!(e.contains("acl.tokens[0].services.web"), "{e}");
    let e = check("[acl]\nenabled = true\nanonymous = \"write\"").unwrap_err();
    assert!(e.contains("acl.anonymous"), "{e}");
    let e = check("[acl]\nenabled = true\n[[acl.tokens]]\nname = \"x\"").unwrap_err();
    assert!(e.contains("secret"), "{e}");
    let e = check(
        "[acl]\nenabled = true\n[[acl.tokens]]\nname = \"a\"\nsecret = \"same\"\n[[acl.tokens]]\nname = \"b\"\nsecret = \"same\"",
    )
    .unwrap_err();
    assert!(e.contains("same secret"), "{e}");
    // With ACLs on, listening beyond loopback is allowed.
    let c = check("http_addr = \"0.0.0.0:8500\"\n[acl]\nenabled = true").unwrap();
    assert!(c.check_exposure().is_ok());
}

/// Reads SSE `data:` lines until `want` of them arrived (or a second passed).
async fn sse_events(resp: &mut reqwest::Response, want: usize) -> Vec<Value> {
    let mut buf = String::new();
    let mut out = Vec::new();
    while out.len() < want {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(1), resp.chunk()).await;
        let Ok(Ok(Some(bytes))) = chunk else { break };
        buf.push_str(&String::from_utf8_lossy(&bytes));
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            for line in frame.lines() {
                if let Some(data) = line.strip_prefix("data:") {
                    out.push(serde_json::from_str(data.trim()).unwrap());
                }
            }
        }
    }
    out
}

#[tokio::test]
async fn the_feed_the_event_log_and_custom_events_follow_the_rights() {
    let a = start("none").await;
    let post = |svc: &str| format!("/api/v1/services/{svc}/instances");
    for svc in ["web", "internal-billing"] {
        let (st, _) = a
            .call(Method::POST, &post(svc), Some(OPS), Some(instance(1)))
            .await;
        assert_eq!(st, StatusCode::CREATED);
    }
    let watch = |token: Option<&str>, query: &str| {
        let mut r =
            a.s.http
                .get(format!("{}/api/v1/watch{query}", a.s.base))
                .header("accept", "text/event-stream");
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    assert_eq!(
        watch(None, "").await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        watch(Some(DEPLOYER), "?services=internal-billing")
            .await
            .unwrap()
            .status(),
        StatusCode::FORBIDDEN
    );
    // Watching everything: only what the token may read, snapshots included.
    let mut feed = watch(Some(DEPLOYER), "").await.unwrap();
    assert_eq!(feed.status(), StatusCode::OK);
    let opening = sse_events(&mut feed, 1).await;
    assert_eq!(opening.len(), 1, "{opening:?}");
    assert_eq!(opening[0]["kind"], "snapshot");
    assert_eq!(opening[0]["service"], "web");
    let (st, _) = a
        .call(
            Method::POST,
            &post("internal-billing"),
            Some(OPS),
            Some(instance(2)),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let (st, _) = a
        .call(Method::POST, &post("web"), Some(OPS), Some(instance(2)))
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let (st, _) = a
        .call(
            Method::POST,
            "/api/v1/events",
            Some(OPS),
            Some(json!({"type": "deploy", "broadcast": true})),
        )
        .await;
    assert_eq!(st, StatusCode::ACCEPTED);
    let deltas = sse_events(&mut feed, 3).await;
    let seen: Vec<(String, String)> = deltas
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().into(),
                e["service"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("registered".to_string(), "web".to_string()),
            ("custom".to_string(), "*".to_string())
        ],
        "internal-billing's registration is not shown; the broadcast is"
    );

    // The event log, filtered the same way.
    let (st, log) = a
        .call(Method::GET, "/api/v1/events?since=0", Some(DEPLOYER), None)
        .await;
    assert_eq!(st, StatusCode::OK);
    assert!(!log.to_string().contains("internal-billing"), "{log}");
    assert!(log.to_string().contains("\"web\""), "{log}");
    let (st, _) = a
        .call(
            Method::GET,
            "/api/v1/events?service=internal-billing",
            Some(DEPLOYER),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);

    // Custom events: write on every target; a broadcast needs the operator.
    for (body, want) in [
        (
            json!({"type": "t", "services": ["web"]}),
            StatusCode::ACCEPTED,
        ),
        (
            json!({"type": "t", "services": ["web", "api"]}),
            StatusCode::FORBIDDEN,
        ),
        (
            json!({"type": "t", "broadcast": true}),
            StatusCode::FORBIDDEN,
        ),
    ] {
        let (st, resp) = a
            .call(
                Method::POST,
                "/api/v1/events",
                Some(DEPLOYER),
                Some(body.clone()),
            )
            .await;
        assert_eq!(st, want, "{body}: {resp}");
    }
}

#[tokio::test]
async fn sessions_need_write_on_their_service_and_read_on_what_they_monitor() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};
    let a = start("none").await;
    let open = |token: &str, hello: Value| {
        let addr = a.s.addr.clone();
        let token = token.to_string();
        async move {
            let mut req = format!("ws://{addr}/api/v1/sessions")
                .into_client_request()
                .unwrap();
            req.headers_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
            let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
            ws.send(Message::text(hello.to_string())).await.unwrap();
            let first = tokio::time::timeout(std::time::Duration::from_secs(2), ws.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            serde_json::from_str::<Value>(first.to_text().unwrap()).unwrap()
        }
    };
    let hello = |svc: &str, monitor: &[&str]| json!({"service": svc, "address": "10.0.0.9", "port": 9, "monitor": monitor});
    let refused = open(DEPLOYER, hello("api", &[])).await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    let refused = open(DEPLOYER, hello("web", &["internal-billing"])).await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    let ok = open(DEPLOYER, hello("web", &["api"])).await;
    assert_ne!(ok["kind"], "error", "{ok}");
    // Without a token the upgrade itself is refused.
    let err = tokio_tungstenite::connect_async(format!("ws://{}/api/v1/sessions", a.s.addr)).await;
    assert!(err.is_err());
}

#[tokio::test]
async fn watchers_per_client_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config("read", dir.path());
    c.client_limits.watchers_per_client = 2;
    c.client_limits.limit_loopback = true;
    let s = common::start_ready(c).await;
    let watch = || {
        s.http
            .get(format!("{}/api/v1/watch", s.base))
            .header("accept", "text/event-stream")
            .bearer_auth(READER)
            .send()
    };
    let first = watch().await.unwrap();
    let second = watch().await.unwrap();
    assert_eq!(
        (first.status(), second.status()),
        (StatusCode::OK, StatusCode::OK)
    );
    let third = watch().await.unwrap();
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(third.headers().contains_key("retry-after"));
    // Another client (here: another token) has its own count.
    let other = s
        .http
        .get(format!("{}/api/v1/watch", s.base))
        .header("accept", "text/event-stream")
        .bearer_auth(DEPLOYER)
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::OK);
    drop(first);
    // The slot comes back once the server sees the stream end.
    let mut freed = false;
    for _ in 0..50 {
        if watch().await.unwrap().status() == StatusCode::OK {
            freed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(freed, "a closed watcher gives its slot back");
}
