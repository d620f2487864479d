//! Request decoding that never answers with anything but a problem document:
//! JSON bodies with the offending field named, and repeatable query parameters.

use crate::problem::Problem;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

/// A JSON body decoded strictly: unknown fields, wrong types and oversized
/// bodies become 400/413 problems naming the field.
pub struct Json<T>(pub T);

/// Like [`Json`], but an empty body means `T::default()`.
pub struct OptionalJson<T>(pub T);

/// Reads the body whatever its declared type (a `curl -d` without
/// `-H 'Content-Type: application/json'` is still JSON); the decoder decides.
async fn body_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, Problem> {
    Bytes::from_request(req, state).await.map_err(|rej| {
        if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                "the request body is larger than this server accepts (limits.body_bytes)",
            )
        } else {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid",
                format!("cannot read the request body: {rej}"),
            )
        }
    })
}

/// Decodes JSON, naming the field at fault.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(Problem::bad_request(
            "body",
            "the body must be a JSON object",
        ));
    }
    // The fast path; only a body that fails is decoded again to learn
    // where (tracking the path costs on every field).
    if let Ok(v) = serde_json::from_slice(bytes) {
        return Ok(v);
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let decoded: Result<T, _> = serde_path_to_error::deserialize(&mut *de);
    if decoded.is_ok() {
        // What failed above is what follows the object.
        return Err(Problem::bad_request(
            "body",
            "the body must hold one JSON object and nothing after it",
        ));
    }
    decoded.map_err(|e| {
        let path = e.path().to_string();
        let inner = e.inner().to_string();
        // serde names unknown and missing fields in backticks; make that the field.
        let named = inner.split('`').nth(1).map(str::to_string);
        // The path of an unknown field already ends in it; a missing field's
        // path is its parent object.
        let field = match (path.as_str(), named) {
            (".", Some(n)) => n,
            (p, Some(n)) if inner.starts_with("missing field") => format!("{p}.{n}"),
            ("." | "?", _) => "body".to_string(),
            (p, _) => p.to_string(),
        };
        let detail = inner
            .split(" at line ")
            .next()
            .unwrap_or(&inner)
            .to_string();
        Problem::bad_request(field, detail)
    })
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = Problem;
    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        let bytes = body_bytes(req, state).await?;
        if bytes.is_empty() {
            return Err(Problem::bad_request("body", "a JSON body is required"));
        }
        decode(&bytes).map(Json)
    }
}

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for OptionalJson<T> {
    type Rejection = Problem;
    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        let bytes = body_bytes(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(T::default()));
        }
        decode(&bytes).map(OptionalJson)
    }
}

/// Query parameters as ordered pairs, so repeated keys (`?tag=a&tag=b`) keep every value.
pub struct Query(pub Vec<(String, String)>);

impl Query {
    pub fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn one<'a>(&'a self, key: &'a str) -> Option<&'a str> {
        self.all(key).last()
    }

    /// `?x`, `?x=true`, `?x=1` are true; `?x=false`, `?x=0` false.
    pub fn flag(&self, key: &str) -> Result<Option<bool>, Problem> {
        match self.one(key) {
            None => Ok(None),
            Some("" | "true" | "1") => Ok(Some(true)),
            Some("false" | "0") => Ok(Some(false)),
            Some(v) => Err(Problem::bad_request(
                key,
                format!("{v:?} is not true or false"),
            )),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Query {
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        let q = parts.uri.query().unwrap_or("");
        Ok(Query(
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_core::RegisterBody;

    fn field_of(json: &str) -> String {
        decode::<RegisterBody>(json.as_bytes())
            .err()
            .and_then(|p| p.field)
            .unwrap_or_default()
    }

    #[test]
    fn decoding_errors_name_the_field() {
        assert_eq!(field_of(r#"{"address":"a","port":"eighty"}"#), "port");
        assert_eq!(
            field_of(r#"{"address":"a","port":80,"colour":1}"#),
            "colour"
        );
        assert_eq!(field_of(r#"{"port":80}"#), "address");
        assert_eq!(
            field_of(r#"{"address":"a","port":80,"checks":[{"tcp":"a:1","bogus":1}]}"#),
            "checks[0].bogus"
        );
        assert_eq!(field_of(r#"{"address":"a","port":80,"ttl":"soon"}"#), "ttl");
        assert_eq!(field_of(r#"{"address":"a""#), "body");
        assert_eq!(field_of(r#"[1]"#), "body");
        assert_eq!(field_of(r#"{"address":"a","port":80} {"x":1}"#), "body");
        assert!(decode::<RegisterBody>(br#" {"address":"a","port":80} "#).is_ok());
    }
}
