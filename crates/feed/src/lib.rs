//! muster's change feed.
//!
//! The [`Hub`] follows the store's change stream, turns every change into
//! registry events (`muster_registry::events_of`), serializes each event
//! once and broadcasts it to every subscriber as shared bytes. A
//! [`Subscription`] opens either with a snapshot of the watched services
//! (then every delta after it) or from a revision (replaying the retained
//! history, then live), with no gap and no repeat at the seam; a subscriber
//! too slow for its bounded buffer is cut off with the revision to resume
//! from, instead of growing memory or slowing everyone else.
//!
//! [`webhooks`] delivers chosen events to configured URLs, signed, in order,
//! retried, each webhook behind its own bounded queue.
//!
//! Architecture Invariant: no HTTP server code here (the server maps
//! subscriptions to WebSocket and SSE); a slow consumer only loses its own
//! events, never blocks the hub.
#![forbid(unsafe_code)]

mod hub;
mod subscription;
pub mod webhooks;

pub use hub::{FeedItem, Hub};
pub use subscription::{Allow, Filter, Message, Subscription, SubscriptionError, Wire};
