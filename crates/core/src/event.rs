//! Events: every change to the registry, numbered by the store revision that
//! made it.

use crate::Timestamp;
use crate::instance::InstanceRecord;
use crate::status::Status;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Snapshot,
    Registered,
    Deregistered,
    Expired,
    StatusChanged,
    ServiceUpdated,
    ServiceDeleted,
    Custom,
}

/// One message of the event log and the change feed.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Event {
    pub revision: u64,
    pub kind: EventKind,
    pub service: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::InstanceDoc>)]
    pub instance: Option<Arc<InstanceRecord>>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
    /// `deregistered`: the reason the instance gave.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `deregistered`: the error the instance exited with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `status_changed`: the instance's status before and after.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<Status>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<Status>,
    /// `status_changed`: the check whose result caused it, and its output.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// `status_changed` of a check that started (`true`) or stopped (`false`) flapping.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flapping: Option<bool>,
    /// `custom`: the event's type, and its body as sent.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<serde_json::Value>,
    /// `snapshot` (and every delta with `?full=true`): the service's instances.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<crate::InstanceDoc>>)]
    pub instances: Option<Box<serde_json::value::RawValue>>,
}

/// `service` of a broadcast custom event: every watcher receives it.
pub const BROADCAST: &str = "*";

/// `POST /api/v1/events`.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomEventBody {
    #[serde(rename = "type")]
    pub event_type: String,
    #[serde(default)]
    pub body: serde_json::Value,
    pub services: Option<Vec<String>>,
    #[serde(default)]
    pub broadcast: bool,
}

/// Largest custom event body, serialized.
pub const MAX_CUSTOM_BODY: usize = 64 * 1024;

impl CustomEventBody {
    pub fn validate(&self) -> Result<(), crate::ValidationError> {
        let mut errs = crate::error::Errors::default();
        let t = &self.event_type;
        if t.is_empty()
            || t.len() > 64
            || !t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        {
            errs.push(
                "type",
                "type must be 1-64 characters of A-Z, a-z, 0-9, '-', '_', '.', ':'",
            );
        }
        if serde_json::to_vec(&self.body).map_or(0, |b| b.len()) > MAX_CUSTOM_BODY {
            errs.push(
                "body",
                format!("the body is larger than {MAX_CUSTOM_BODY} bytes"),
            );
        }
        match (&self.services, self.broadcast) {
            (Some(s), false) if !s.is_empty() => {
                if s.len() > 100 {
                    errs.push("services", "at most 100 services");
                }
                for (i, name) in s.iter().enumerate() {
                    if let Err(m) = crate::name::validate_service_name(name) {
                        errs.push(format!("services[{i}]"), m);
                    }
                }
            }
            (None, true) => {}
            (Some(s), true) if s.is_empty() => {}
            (Some(_), true) => errs.push(
                "broadcast",
                "give either services or broadcast: true, not both",
            ),
            _ => errs.push(
                "services",
                "name the services to tell, or set broadcast: true",
            ),
        }
        errs.finish()
    }
}

impl Event {
    pub fn new(revision: u64, kind: EventKind, service: impl Into<String>, at: Timestamp) -> Self {
        Event {
            revision,
            kind,
            service: service.into(),
            instance: None,
            at,
            reason: None,
            error: None,
            from: None,
            to: None,
            check: None,
            output: None,
            flapping: None,
            event_type: None,
            body: None,
            instances: None,
        }
    }
}
