//! Watching: replay retained history, then follow live changes, with no gap
//! and no repeat at the seam. Shared by the engines.
//!
//! Every change bumps the revision by exactly one and is broadcast after it is
//! committed, so a watcher can tell a gap (a revision it did not see) and fill
//! it from the engine's history; the broadcast channel is only the fast path.

use crate::{Change, Result, Revision, StoreError};
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::broadcast;

/// Where a watcher reads changes it missed on the live channel.
pub(crate) trait History: Send + Sync {
    /// Up to `max` retained changes from `from` on, in order;
    /// `Err(Compacted)` if `from` is older than the oldest retained.
    fn read(&self, from: Revision, max: usize) -> Result<Vec<Arc<Change>>>;
    fn current(&self) -> Revision;
}

const CHUNK: usize = 1024;

/// An ordered stream of changes from a revision on.
pub struct Watcher {
    next: Revision,
    live: broadcast::Receiver<Arc<Change>>,
    history: Arc<dyn History>,
    backlog: VecDeque<Arc<Change>>,
}

impl Watcher {
    /// `live` must be subscribed before this is called, so every change after
    /// the history read below arrives on it.
    pub(crate) fn new(
        from: Revision,
        live: broadcast::Receiver<Arc<Change>>,
        history: Arc<dyn History>,
    ) -> Result<Self> {
        let from = from.max(1);
        let mut w = Watcher {
            next: from,
            live,
            history,
            backlog: VecDeque::new(),
        };
        if from <= w.history.current() {
            w.refill()?;
        }
        Ok(w)
    }

    /// The revision the next change will carry.
    pub fn next_revision(&self) -> Revision {
        self.next
    }

    fn refill(&mut self) -> Result<()> {
        let chunk = self.history.read(self.next, CHUNK)?;
        if chunk.is_empty() && self.next <= self.history.current() {
            return Err(StoreError::Compacted {
                requested: self.next,
                oldest: self.history.current() + 1,
            });
        }
        if chunk.first().is_some_and(|c| c.revision != self.next) {
            return Err(StoreError::Compacted {
                requested: self.next,
                oldest: chunk[0].revision,
            });
        }
        self.backlog.extend(chunk);
        Ok(())
    }

    /// The next change, or `None` once the store is closed. An `Err` ends the
    /// stream: the watcher fell behind retained history.
    pub async fn next(&mut self) -> Option<Result<Arc<Change>>> {
        loop {
            if let Some(c) = self.backlog.pop_front() {
                self.next = c.revision + 1;
                return Some(Ok(c));
            }
            if self.next <= self.history.current() {
                // Behind (lagged live channel, or a gap): catch up from history.
                if let Err(e) = self.refill() {
                    return Some(Err(e));
                }
                if !self.backlog.is_empty() {
                    continue;
                }
            }
            match self.live.recv().await {
                Ok(c) if c.revision < self.next => continue,
                Ok(c) if c.revision == self.next => {
                    self.next += 1;
                    return Some(Ok(c));
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}
