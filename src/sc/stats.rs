//! Counters of the SocketCluster link: what went through, and every reason a
//! frame or message was dropped. Read by logs now and by `/metrics` later.

use std::sync::atomic::AtomicU64;

crate::stats::counters! {
    /// Counters of the SocketCluster link.
    pub struct ScStats {
        /// Successful handshakes (the first connection and every reconnect).
        connections,
        /// Connection attempts that failed before the handshake completed.
        connect_failures,
        /// Text frames received.
        frames_in,
        /// Text frames sent.
        frames_out,
        /// Frames (or batch elements) that were not valid SocketCluster packets.
        malformed_frames,
        /// Frames over `max_frame_bytes`, skipped unread.
        oversized_frames,
        /// Binary frames, which the protocol does not use.
        binary_frames,
        /// `#publish` pushes received for subscribed channels.
        publishes_in,
        /// `#publish` pushes for a channel we do not hold; dropped.
        publishes_unsubscribed,
        /// Custom events from the server delivered to the consumer.
        events_in,
        /// Messages for the consumer dropped because its queue was full.
        inbound_queue_full,
        /// Reserved (`#`) events this client does not know; ignored.
        unknown_events,
        /// Replies whose rid matched nothing pending (usually a timed-out invoke).
        unknown_replies,
        /// Outgoing messages dropped (oldest first) because the send queue was full.
        queue_overflow,
        /// Packets lost because a write to the socket failed (the connection
        /// broke): every packet of that write, since which of them reached
        /// the server is unknown; the packets behind go back to the send
        /// queue.
        write_failures,
        /// Packets still queued when the link shut down, or handed to it
        /// after that.
        shutdown_dropped,
        /// Invokes whose reply did not arrive within the ack timeout.
        invokes_timed_out,
        /// Invokes lost with the connection before a reply arrived.
        invokes_lost,
        /// Subscriptions the server refused.
        subscribe_failures,
        /// Channels the server kicked us out of.
        kick_outs,
        /// Handshakes whose token the server rejected.
        auth_errors,
        /// Pings received.
        pings,
        /// Text frames that arrived after scbridge began closing the
        /// connection (shutdown, reset, switched off, a ping timeout); not
        /// read.
        frames_after_close,
    }
}

impl ScStats {
    /// Adds one to a counter.
    pub(crate) fn bump(counter: &AtomicU64) {
        crate::stats::bump(counter);
    }

    /// The current value of a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        crate::stats::get(counter)
    }
}
