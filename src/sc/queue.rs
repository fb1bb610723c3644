//! The bounded send queue between the client handles and the link task.
//!
//! Callers never block: while the link is down messages wait here, and when
//! the queue is full the oldest message is dropped and counted, because for
//! live media data the newest value matters most. The link task drains the
//! queue in order once the handshake is done.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{Notify, oneshot};

use super::InvokeError;
use super::stats::ScStats;

/// The reply slot of an invoke waiting in the queue or on the wire.
pub(crate) type ReplySender = oneshot::Sender<Result<Option<serde_json::Value>, InvokeError>>;

/// One encoded packet on its way to the server.
pub(crate) struct Outgoing {
    pub text: String,
    /// Set for invokes: the cid in `text` and where its reply goes.
    pub reply: Option<(u64, ReplySender)>,
}

pub(crate) struct OutboundQueue {
    items: Mutex<VecDeque<Outgoing>>,
    capacity: usize,
    ready: Notify,
    /// Set once the link task has ended: nothing would ever send what is
    /// pushed after that (a delayed output holding an old client handle).
    closed: AtomicBool,
}

impl OutboundQueue {
    pub fn new(capacity: usize) -> Self {
        OutboundQueue {
            items: Mutex::new(VecDeque::with_capacity(capacity.min(4096))),
            capacity: capacity.max(1),
            ready: Notify::new(),
            closed: AtomicBool::new(false),
        }
    }

    /// Queues a packet; when full, the oldest is dropped and counted. After
    /// [`close`](Self::close) the packet itself is dropped and counted.
    pub fn push(&self, item: Outgoing, stats: &ScStats) {
        let dropped = {
            let mut items = self.lock();
            // Read under the lock, so a push cannot slip in behind `close`.
            if self.closed.load(Ordering::Relaxed) {
                drop(items);
                if let Some(count) = crate::stats::bump_loggable(&stats.shutdown_dropped) {
                    tracing::warn!(
                        dropped = count,
                        "SocketCluster link has shut down: message dropped"
                    );
                }
                return;
            }
            let dropped = if items.len() >= self.capacity { items.pop_front() } else { None };
            items.push_back(item);
            dropped
        };
        if let Some(dropped) = dropped {
            self.overflowed(dropped, stats);
        }
        self.ready.notify_one();
    }

    /// Puts packets taken for sending, and not sent, back at the front, in
    /// their order, so that they go out first after a reconnect. Newer
    /// packets may have filled the queue meanwhile; then these, the oldest,
    /// are the ones dropped and counted.
    pub fn give_back(&self, unsent: impl DoubleEndedIterator<Item = Outgoing>, stats: &ScStats) {
        let mut dropped = Vec::new();
        {
            let mut items = self.lock();
            for item in unsent.rev() {
                if items.len() >= self.capacity {
                    dropped.push(item);
                } else {
                    items.push_front(item);
                }
            }
        }
        for item in dropped {
            self.overflowed(item, stats);
        }
    }

    fn overflowed(&self, dropped: Outgoing, stats: &ScStats) {
        if let Some(count) = crate::stats::bump_loggable(&stats.queue_overflow) {
            tracing::warn!(
                capacity = self.capacity,
                dropped = count,
                "SocketCluster send queue full: dropped the oldest message"
            );
        }
        if let Some((_, reply)) = dropped.reply {
            let _ = reply.send(Err(InvokeError::Dropped));
        }
    }

    /// Takes up to `max` packets, oldest first.
    pub fn take(&self, max: usize, into: &mut Vec<Outgoing>) {
        let mut items = self.lock();
        let count = items.len().min(max);
        into.extend(items.drain(..count));
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Refuses every later push and empties the queue; returns how many
    /// packets were still in it. Waiting invokes see their reply dropped.
    pub fn close(&self) -> usize {
        let mut items = self.lock();
        self.closed.store(true, Ordering::Relaxed);
        let left = items.len();
        items.clear();
        left
    }

    /// Resolves when something was pushed since the last wait.
    pub async fn ready(&self) {
        self.ready.notified().await
    }

    /// Wakes the next `ready()` at once (more is left after a partial drain).
    pub fn wake(&self) {
        self.ready.notify_one();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Outgoing>> {
        // A panic while holding this lock cannot leave the deque half-updated
        // (push/pop are atomic from its point of view), so poisoning is moot.
        self.items.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_of(queue: &OutboundQueue) -> Vec<String> {
        let mut out = Vec::new();
        queue.take(usize::MAX, &mut out);
        out.into_iter().map(|o| o.text).collect()
    }

    #[test]
    fn overflow_drops_the_oldest_and_counts_it() {
        let stats = ScStats::default();
        let queue = OutboundQueue::new(3);
        for n in 0..5 {
            queue.push(Outgoing { text: n.to_string(), reply: None }, &stats);
        }
        assert_eq!(text_of(&queue), vec!["2", "3", "4"]);
        assert_eq!(ScStats::get(&stats.queue_overflow), 2);
    }

    #[test]
    fn a_closed_queue_reports_what_it_held_and_counts_every_later_push() {
        let stats = ScStats::default();
        let queue = OutboundQueue::new(3);
        queue.push(Outgoing { text: "before".into(), reply: None }, &stats);
        assert_eq!(queue.close(), 1);
        queue.push(Outgoing { text: "after".into(), reply: None }, &stats);
        queue.push(Outgoing { text: "later".into(), reply: None }, &stats);
        assert_eq!(queue.len(), 0);
        assert_eq!(ScStats::get(&stats.shutdown_dropped), 2);
    }

    #[test]
    fn packets_given_back_go_out_first_and_in_order() {
        let stats = ScStats::default();
        let queue = OutboundQueue::new(5);
        for n in 0..4 {
            queue.push(Outgoing { text: n.to_string(), reply: None }, &stats);
        }
        let mut taken = Vec::new();
        queue.take(3, &mut taken);
        queue.push(Outgoing { text: "4".into(), reply: None }, &stats);
        queue.give_back(taken.into_iter(), &stats);
        assert_eq!(text_of(&queue), vec!["0", "1", "2", "3", "4"]);
        assert_eq!(ScStats::get(&stats.queue_overflow), 0);
    }

    #[test]
    fn packets_given_back_to_a_full_queue_are_dropped_oldest_first_and_counted() {
        let stats = ScStats::default();
        let queue = OutboundQueue::new(3);
        for n in 0..3 {
            queue.push(Outgoing { text: n.to_string(), reply: None }, &stats);
        }
        let mut taken = Vec::new();
        queue.take(3, &mut taken);
        for n in 3..5 {
            queue.push(Outgoing { text: n.to_string(), reply: None }, &stats);
        }
        queue.give_back(taken.into_iter(), &stats);
        assert_eq!(text_of(&queue), vec!["2", "3", "4"]);
        assert_eq!(ScStats::get(&stats.queue_overflow), 2);
    }

    #[test]
    fn a_dropped_invoke_is_told_so() {
        let stats = ScStats::default();
        let queue = OutboundQueue::new(1);
        let (tx, mut rx) = oneshot::channel();
        queue.push(Outgoing { text: "a".into(), reply: Some((1, tx)) }, &stats);
        queue.push(Outgoing { text: "b".into(), reply: None }, &stats);
        assert!(matches!(rx.try_recv(), Ok(Err(InvokeError::Dropped))));
    }
}
