//! The native API under `/api/v1`, one module per resource.

pub mod checks;
pub mod elections;
pub mod feed;
pub mod instances;
pub mod prometheus;
pub mod services;
pub mod sessions;
pub mod snapshot;
