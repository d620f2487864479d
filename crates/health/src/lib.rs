//! muster's health-check engine.
//!
//! [`probe`] runs one check against its target and says what it found: the
//! executors for every active check kind (http, tcp, grpc, mqtt, exec), each
//! behind the probe target guard, which refuses addresses in the configured
//! deny ranges after DNS resolution, not only as written in the check.
//! Scheduling probes, thresholds and history are built on top of it.
#![forbid(unsafe_code)]

pub mod metrics;
pub mod probe;
pub mod scheduler;

pub use scheduler::{Health, HealthConfig, HealthParts};
pub mod history;
pub mod influx;
