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
        }
    }
}
