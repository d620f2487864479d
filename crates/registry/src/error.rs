//! What can go wrong in a registry operation, one variant per client-visible outcome.

use muster_core::ValidationError;
use muster_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{0}")]
    Invalid(#[from] ValidationError),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The store refused or failed the write; the client may retry.
    #[error("{0}")]
    Unavailable(String),
    /// The server is starting or stopping.
    #[error("the registry is not ready")]
    NotReady,
}

impl From<StoreError> for RegistryError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Closed => RegistryError::NotReady,
            e => RegistryError::Unavailable(e.to_string()),
        }
    }
}
