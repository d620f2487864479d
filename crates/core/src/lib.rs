//! muster's domain: the types every layer shares and the pure rules over them.
//!
//! Architecture Invariant: this crate does no I/O and never reads a clock.
//! Callers pass `now` in; validation, id derivation and status aggregation are
//! plain functions that can be tested with a table of inputs.
#![forbid(unsafe_code)]

pub mod check;
pub mod duration;
pub mod error;
pub mod event;
pub mod health;
pub mod id;
pub mod instance;
pub mod name;
pub mod net;
pub mod service;
pub mod status;

pub use check::{CheckKind, CheckRecord, CheckSpec};
pub use duration::Millis;
pub use error::{FieldError, ValidationError};
pub use event::{BROADCAST, CustomEventBody, Event, EventKind};
pub use instance::{
    DeregisterBody, HeartbeatBody, InstanceDoc, InstanceRecord, Lifetime, MaintenanceBody,
    RegisterBody, RegisterError, Registration, Reported,
};
pub use service::{ServiceBody, ServiceRecord};
pub use status::Status;

/// Timestamps are UTC; serialized as RFC 3339 everywhere.
pub type Timestamp = time::OffsetDateTime;

/// Formats a timestamp as RFC 3339 in UTC.
pub fn rfc3339(t: Timestamp) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
