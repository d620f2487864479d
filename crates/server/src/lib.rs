//! muster's HTTP server: the native API under `/api/v1`, `/health`,
//! `/ready`, `/metrics` and the OpenAPI document, plus the server's
//! configuration and lifecycle (open the store, serve, shut down in order).
//!
//! Architecture Invariant: handlers are thin. They decode the wire, call one
//! [`muster_registry::Registry`] method, and encode its answer or map its
//! error to a problem document. No business rule lives here.
#![forbid(unsafe_code)]

pub mod acl;
pub mod api;
mod app;
pub mod config;
mod consul;
mod extract;
mod limits;
mod listener;
mod metrics;
mod ops;
mod problem;
mod serve;
pub mod tls;
mod ws;

pub use app::openapi;
pub use config::{Config, RawConfig, StoreConfig, StoreEngine};
pub use problem::Problem;
pub use serve::{Running, ServerError, start};
