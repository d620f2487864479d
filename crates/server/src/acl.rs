//! Access control: who a request comes from and what it may do.
//!
//! Architecture Invariant: every decision about rights is made in this
//! module. [`need`] maps each route to what it requires (unknown routes are
//! refused, so a new route cannot slip through unprotected); the
//! [`authorize`] step of every request authenticates the caller and enforces that; a
//! handler whose right depends on its body (the service named in a Consul
//! registration, the targets of a custom event) asks the [`Caller`] the
//! middleware left in the request, and lists are filtered with
//! [`Caller::may_read`].
//!
//! Rights are per service-name prefix (`"web"` covers `web`, `webshop`, …;
//! `"*"` covers every name); the longest matching prefix wins. `operator`
//! covers what is not about one service: broadcast events, elections,
//! snapshots. Secrets are compared as SHA-256 digests in constant time,
//! every configured token checked, so timing tells nothing about them.

use crate::app::AppState;
use crate::problem::Problem;
use axum::extract::{FromRequestParts, MatchedPath, RawPathParams, Request};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// What a token may do with the services under one name prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Right {
    None,
    Read,
    Write,
}

/// One configured token, as validated from `[[acl.tokens]]`.
#[derive(Clone)]
pub struct TokenSpec {
    pub name: String,
    pub secret: Vec<u8>,
    /// Service-name prefixes (`"*"` for all) and the right on each.
    pub services: Vec<(String, Right)>,
    pub operator: bool,
}

impl std::fmt::Debug for TokenSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSpec")
            .field("name", &self.name)
            .field("services", &self.services)
            .field("operator", &self.operator)
            .finish_non_exhaustive()
    }
}

/// `[acl]`, validated.
#[derive(Debug, Clone)]
pub struct AclConfig {
    pub enabled: bool,
    /// What a request without a token may do: `None` or `Read` (on every service).
    pub anonymous: Right,
    pub tokens: Vec<TokenSpec>,
}

impl Default for AclConfig {
    fn default() -> Self {
        AclConfig {
            enabled: false,
            anonymous: Right::None,
            tokens: Vec::new(),
        }
    }
}

/// What one token grants, rules ordered longest prefix first.
#[derive(Debug)]
pub struct Grants {
    pub name: Arc<str>,
    rules: Vec<(String, Right)>,
    operator: bool,
}

/// Who a request comes from.
#[derive(Debug, Clone)]
pub enum Caller {
    /// ACLs are off: everything is allowed.
    Unrestricted,
    /// No token was presented.
    Anonymous {
        read: bool,
    },
    Token(Arc<Grants>),
}

impl Caller {
    /// The right on `service`: the longest matching prefix rule's.
    pub fn right(&self, service: &str) -> Right {
        match self {
            Caller::Unrestricted => Right::Write,
            Caller::Anonymous { read: true } => Right::Read,
            Caller::Anonymous { read: false } => Right::None,
            Caller::Token(g) => g
                .rules
                .iter()
                .find(|(prefix, _)| service.starts_with(prefix.as_str()))
                .map_or(Right::None, |(_, r)| *r),
        }
    }

    pub fn may_read(&self, service: &str) -> bool {
        self.right(service) >= Right::Read
    }

    pub fn may_write(&self, service: &str) -> bool {
        self.right(service) >= Right::Write
    }

    pub fn is_operator(&self) -> bool {
        match self {
            Caller::Unrestricted => true,
            Caller::Anonymous { .. } => false,
            Caller::Token(g) => g.operator,
        }
    }

    /// Whether lists need filtering at all.
    pub fn reads_everything(&self) -> bool {
        match self {
            Caller::Unrestricted | Caller::Anonymous { read: true } => true,
            Caller::Anonymous { read: false } => false,
            Caller::Token(g) => {
                g.rules
                    .iter()
                    .any(|(p, r)| p.is_empty() && *r >= Right::Read)
                    && g.rules.iter().all(|(_, r)| *r >= Right::Read)
            }
        }
    }

    /// For feed filters: `None` when every service may be read, else the
    /// predicate this caller's rights make.
    pub fn read_filter(&self) -> Option<muster_feed::Allow> {
        if self.reads_everything() {
            return None;
        }
        let me = self.clone();
        Some(Arc::new(move |service: &str| me.may_read(service)))
    }

    /// May be anything but an anonymous caller refused.
    pub fn require_token(&self) -> Result<(), Problem> {
        match self {
            Caller::Anonymous { .. } => Err(self.refuse("this needs a token")),
            _ => Ok(()),
        }
    }

    pub fn require_read(&self, service: &str) -> Result<(), Problem> {
        if self.may_read(service) {
            Ok(())
        } else {
            Err(self.refuse(&format!(
                "reading service {service:?} needs the read right on it"
            )))
        }
    }

    pub fn require_write(&self, service: &str) -> Result<(), Problem> {
        if self.may_write(service) {
            Ok(())
        } else {
            Err(self.refuse(&format!(
                "changing service {service:?} needs the write right on it"
            )))
        }
    }

    pub fn require_operator(&self) -> Result<(), Problem> {
        if self.is_operator() {
            Ok(())
        } else {
            Err(self.refuse("this needs a token with the operator right"))
        }
    }

    /// 401 for a caller without a token (presenting one might help), 403
    /// for a token without the right.
    fn refuse(&self, detail: &str) -> Problem {
        match self {
            Caller::Anonymous { .. } => Problem::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                format!("{detail}; send one in Authorization: Bearer <token>"),
            ),
            Caller::Token(g) => Problem::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("token {:?}: {detail}", g.name),
            ),
            Caller::Unrestricted => {
                Problem::new(StatusCode::FORBIDDEN, "forbidden", detail.to_string())
            }
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Problem;

    /// The caller [`authorize`] authenticated. A handler reached without it
    /// (a route the middleware does not cover) is refused, not opened.
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Caller, Problem> {
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            Problem::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this route has no access rule",
            )
        })
    }
}

struct Token {
    digest: [u8; 32],
    grants: Arc<Grants>,
}

/// The server's access control, built once from the configuration.
pub struct Acl {
    enabled: bool,
    anonymous: Right,
    tokens: Vec<Token>,
}

fn digest(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

/// Equal without an early exit: the time taken does not depend on where
/// the digests differ.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Acl {
    pub fn new(config: &AclConfig) -> Acl {
        let tokens = config
            .tokens
            .iter()
            .map(|t| {
                let mut rules: Vec<(String, Right)> = t
                    .services
                    .iter()
                    .map(|(p, r)| (if p == "*" { String::new() } else { p.clone() }, *r))
                    .collect();
                rules.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
                Token {
                    digest: digest(&t.secret),
                    grants: Arc::new(Grants {
                        name: Arc::from(t.name.as_str()),
                        rules,
                        operator: t.operator,
                    }),
                }
            })
            .collect();
        Acl {
            enabled: config.enabled,
            anonymous: config.anonymous,
            tokens,
        }
    }

    /// Who presented `secret` (`None`: no token at all). 401 for a secret
    /// no token has.
    pub fn authenticate(&self, secret: Option<&str>) -> Result<Caller, Problem> {
        if !self.enabled {
            return Ok(Caller::Unrestricted);
        }
        let Some(secret) = secret else {
            return Ok(Caller::Anonymous {
                read: self.anonymous >= Right::Read,
            });
        };
        let presented = digest(secret.as_bytes());
        let mut found = None;
        for t in &self.tokens {
            if same(&t.digest, &presented) {
                found = Some(t.grants.clone());
            }
        }
        found.map(Caller::Token).ok_or_else(|| {
            Problem::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the token presented is not known to this server",
            )
        })
    }
}

/// Who per-client limits count a request against (`None`: exempt); left
/// in the request for handlers that open long-lived streams.
#[derive(Debug, Clone)]
pub struct Client(pub Option<crate::limits::ClientKey>);

impl<S: Send + Sync> FromRequestParts<S> for Client {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Client, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<Client>()
            .cloned()
            .unwrap_or(Client(None)))
    }
}

/// What a route requires of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Liveness, readiness and the API description: no token.
    Public,
    /// Any known token, or an anonymous caller when anonymous reads are on.
    Reader,
    /// The handler decides from the body or filters what it lists; the
    /// caller is authenticated here.
    Handler,
    /// Read right on the service named by this path parameter.
    Read(&'static str),
    /// Write right on the service named by this path parameter.
    Write(&'static str),
    /// Write right on the service of the instance named by this parameter.
    WriteInstance(&'static str),
    /// Read/write right on the service of the check named by `id`.
    ReadCheck,
    WriteCheck,
    Operator,
}

/// The rule of every route, native and Consul-compatible. `None`: the route
/// has no rule, and is refused.
pub fn need(method: &Method, route: &str) -> Option<Need> {
    use Need::*;
    let get = method == Method::GET || method == Method::HEAD;
    Some(match route {
        "/health" | "/ready" | "/api/openapi.json" => Public,
        "/metrics" => Reader,
        "/api/v1/services" => Handler,
        "/api/v1/services/{name}" if get => Read("name"),
        "/api/v1/services/{name}" => Write("name"),
        "/api/v1/services/{service}/instances" | "/api/v1/services/{service}/instances/{id}"
            if get =>
        {
            Read("service")
        }
        "/api/v1/services/{service}/instances"
        | "/api/v1/services/{service}/instances/{id}"
        | "/api/v1/services/{service}/instances/{id}/heartbeat"
        | "/api/v1/services/{service}/instances/{id}/maintenance" => Write("service"),
        "/api/v1/checks" => Handler,
        "/api/v1/checks/{id}" | "/api/v1/checks/{id}/probes" | "/api/v1/checks/{id}/stats"
            if get =>
        {
            ReadCheck
        }
        "/api/v1/checks/{id}"
        | "/api/v1/checks/{id}/pass"
        | "/api/v1/checks/{id}/warn"
        | "/api/v1/checks/{id}/fail" => WriteCheck,
        "/api/v1/watch" | "/api/v1/events" | "/api/v1/sessions" => Handler,
        "/api/v1/prometheus/targets" => Handler,
        "/api/v1/cluster" => Reader,
        "/api/v1/elections/{name}"
        | "/api/v1/elections/{name}/campaign"
        | "/api/v1/elections/{name}/heartbeat"
        | "/api/v1/elections/{name}/leader"
        | "/api/v1/snapshot" => Operator,
        // The Consul-compatible subset.
        "/v1/agent/service/register" => Handler,
        "/v1/agent/service/deregister/{id}" | "/v1/agent/service/maintenance/{id}" => {
            WriteInstance("id")
        }
        "/v1/agent/check/pass/{id}"
        | "/v1/agent/check/warn/{id}"
        | "/v1/agent/check/fail/{id}"
        | "/v1/agent/check/update/{id}" => WriteCheck,
        "/v1/agent/self" | "/v1/status/leader" | "/v1/status/peers" | "/v1/catalog/datacenters" => {
            Reader
        }
        "/v1/agent/services" | "/v1/catalog/services" => Handler,
        "/v1/catalog/service/{name}" | "/v1/health/service/{name}" => Read("name"),
        _ => return None,
    })
}

/// The token a request presents: `Authorization: Bearer`, `X-Muster-Token`,
/// and on the Consul-compatible routes `X-Consul-Token` or `?token=`.
fn presented(parts: &Parts) -> Result<Option<String>, Problem> {
    let header = |name: &str| -> Result<Option<String>, Problem> {
        match parts.headers.get(name) {
            None => Ok(None),
            Some(v) => v.to_str().map(|s| Some(s.trim().to_string())).map_err(|_| {
                Problem::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    format!("{name} is not readable text"),
                )
            }),
        }
    };
    if let Some(auth) = header("authorization")? {
        return match auth.split_once(' ') {
            Some((scheme, token))
                if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
            {
                Ok(Some(token.trim().to_string()))
            }
            _ => Err(Problem::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Authorization must be \"Bearer <token>\"",
            )),
        };
    }
    if let Some(t) = header("x-muster-token")? {
        return Ok(Some(t));
    }
    if parts.uri.path().starts_with("/v1/") {
        if let Some(t) = header("x-consul-token")? {
            return Ok(Some(t));
        }
        let query = parts.uri.query().unwrap_or("");
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            if k == "token" {
                return Ok(Some(v.into_owned()));
            }
        }
    }
    Ok(None)
}

/// Authenticates a request and enforces its route's [`need`]; leaves the
/// [`Caller`] in the request for handlers that decide or filter. `Err` is
/// the refusal, already counted. (Run by the server's one middleware,
/// `app::gate`, for every request.)
pub async fn authorize(state: &AppState, req: Request) -> Result<Request, Response> {
    admit(state, req).await.map_err(|p| {
        state.metrics.refused(p.code);
        p.into_response()
    })
}

/// A path parameter the router matched (empty when absent).
fn path_param<'a>(params: Option<&'a RawPathParams>, name: &str) -> &'a str {
    params
        .and_then(|p| p.iter().find(|(k, _)| *k == name).map(|(_, v)| v))
        .unwrap_or("")
}

async fn admit(state: &AppState, req: Request) -> Result<Request, Problem> {
    let (mut parts, body) = req.into_parts();
    let rule = match parts.extensions.get::<MatchedPath>() {
        Some(p) => need(&parts.method, p.as_str()),
        // No route: authenticate, then let the 404 / 405 answer.
        None => Some(Need::Reader),
    };
    if rule == Some(Need::Public) {
        return Ok(Request::from_parts(parts, body));
    }
    let caller = state.acl.authenticate(presented(&parts)?.as_deref())?;
    // The rate limit counts every authenticated request, refused ones too.
    let peer = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    let client = state.limits.key(&caller, peer);
    if let Some(key) = &client {
        state.limits.admit(key)?;
    }
    parts.extensions.insert(Client(client));
    // What the router matched, percent-decoded.
    let params = RawPathParams::from_request_parts(&mut parts, &())
        .await
        .ok();
    let param = |name: &str| path_param(params.as_ref(), name);
    // An anonymous caller never writes, and reads only when allowed to.
    if let Caller::Anonymous { read } = caller {
        let reading = parts.method == Method::GET || parts.method == Method::HEAD;
        if !(read && reading) {
            return Err(caller.refuse(if reading {
                "anonymous reads are off"
            } else {
                "changes need a token"
            }));
        }
    }
    match rule {
        // Every operation has a rule (a unit test walks the document), so a
        // matched path without one is a method the route does not take.
        None => {
            return Err(Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            ));
        }
        Some(Need::Public) | Some(Need::Handler) => {}
        Some(Need::Reader) => {
            if matches!(caller, Caller::Anonymous { read: false }) {
                return Err(caller.refuse("this needs a token"));
            }
        }
        Some(Need::Read(p)) => caller.require_read(param(p))?,
        Some(Need::Write(p)) => caller.require_write(param(p))?,
        Some(Need::Operator) => caller.require_operator()?,
        Some(Need::WriteInstance(p)) => {
            let id = param(p);
            match state.registry().ok().and_then(|r| r.find_instance(id)) {
                Some(service) => caller.require_write(&service)?,
                // Unknown: a token is needed to learn that it is unknown.
                None => caller.require_token()?,
            }
        }
        Some(n @ (Need::ReadCheck | Need::WriteCheck)) => {
            let id = param("id");
            match state.registry().ok().and_then(|r| r.check_service(id)) {
                Some(service) if n == Need::ReadCheck => caller.require_read(&service)?,
                Some(service) => caller.require_write(&service)?,
                None if n == Need::ReadCheck => {
                    if matches!(caller, Caller::Anonymous { read: false }) {
                        return Err(caller.refuse("this needs a token"));
                    }
                }
                None => caller.require_token()?,
            }
        }
    }
    parts.extensions.insert(caller);
    Ok(Request::from_parts(parts, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every route has a rule: a route added without one would be refused
    /// (fail closed), and this says so before anyone ships it.
    #[test]
    fn every_route_has_a_rule() {
        let doc = serde_json::to_value(crate::app::openapi()).unwrap();
        let mut n = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
                assert!(
                    need(&m, path).is_some(),
                    "{method} {path} has no access rule"
                );
                n += 1;
            }
        }
        assert!(n > 30, "only {n} routes in the document");
        for (path, _) in crate::consul::routes() {
            assert!(
                need(&Method::GET, path).is_some(),
                "{path} has no access rule"
            );
        }
        assert_eq!(need(&Method::GET, "/api/v1/made-up"), None);
    }

    fn caller(rules: &[(&str, Right)], operator: bool) -> Caller {
        let acl = Acl::new(&AclConfig {
            enabled: true,
            anonymous: Right::None,
            tokens: vec![TokenSpec {
                name: "t".into(),
                secret: b"secret".to_vec(),
                services: rules.iter().map(|(p, r)| (p.to_string(), *r)).collect(),
                operator,
            }],
        });
        acl.authenticate(Some("secret")).unwrap()
    }

    #[test]
    fn the_longest_prefix_wins() {
        let c = caller(
            &[
                ("*", Right::Read),
                ("pay", Right::Write),
                ("payroll", Right::None),
            ],
            false,
        );
        assert_eq!(c.right("web"), Right::Read);
        assert_eq!(c.right("payments"), Right::Write);
        assert_eq!(c.right("payroll-eu"), Right::None);
        assert!(!c.is_operator());
        assert!(!c.reads_everything());
        assert!(caller(&[("*", Right::Read)], true).reads_everything());
        assert_eq!(caller(&[], true).right("web"), Right::None);
    }

    #[test]
    fn secrets_match_whole_and_exactly() {
        let acl = Acl::new(&AclConfig {
            enabled: true,
            anonymous: Right::Read,
            tokens: vec![TokenSpec {
                name: "t".into(),
                secret: b"secret".to_vec(),
                services: vec![],
                operator: false,
            }],
        });
        for wrong in ["secre", "secret ", "Secret", "secretsecret", ""] {
            assert!(acl.authenticate(Some(wrong)).is_err(), "{wrong:?}");
        }
        assert!(matches!(
            acl.authenticate(None),
            Ok(Caller::Anonymous { read: true })
        ));
        assert!(same(&digest(b"a"), &digest(b"a")));
        assert!(!same(&digest(b"a"), &digest(b"b")));
        let off = Acl::new(&AclConfig::default());
        assert!(matches!(
            off.authenticate(Some("anything")),
            Ok(Caller::Unrestricted)
        ));
    }
}
