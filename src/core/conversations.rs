//! [`Conversations`]: the MQTT 5 requests of one connection still waiting for replies (a
//! publish with a Response Topic and Correlation Data, section 4.10), so that the receive span
//! of a reply links to the publish span of its request.
//!
//! A reply is a message on the request's Response Topic with its Correlation Data. A request
//! is remembered, by its Correlation Data, for [`REQUEST_LIFETIME`], and every reply within
//! that time links to it: a request may have several responders (a request topic with several
//! subscribers), or one responder may answer in parts. A newer request with the same
//! Correlation Data takes the place of the older one. At most [`MAX_REQUESTS`] are remembered
//! (the oldest go first); a request whose Correlation Data or Response Topic is longer than
//! [`MAX_KEY_LEN`] bytes is not remembered. Requests outlive a reconnect: with a persistent
//! session the broker delivers a reply that arrived while the client was away.
//!
//! A message without Correlation Data, or any message while no request waits, costs one load of
//! an atomic counter.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use opentelemetry::trace::SpanContext;

/// How long a request waits for replies.
pub(crate) const REQUEST_LIFETIME: Duration = Duration::from_secs(60);
/// How many requests are remembered at most.
pub(crate) const MAX_REQUESTS: usize = 1024;
/// The longest Correlation Data and Response Topic remembered, in bytes each.
pub(crate) const MAX_KEY_LEN: usize = 1024;

/// One request waiting for replies.
#[derive(Debug)]
struct Request {
    response_topic: Box<str>,
    publish: SpanContext,
    expires: Instant,
    /// Tells this request from an older one with the same Correlation Data in `order`.
    serial: u64,
}

#[derive(Debug, Default)]
struct Waiting {
    by_correlation: HashMap<Arc<[u8]>, Request>,
    /// Correlation Data in the order the requests were made, with their serials.
    order: VecDeque<(Arc<[u8]>, u64)>,
    serial: u64,
}

impl Waiting {
    /// Forgets requests that expired, and the oldest beyond `room` more.
    fn sweep(&mut self, now: Instant, room: usize) {
        while let Some((correlation, serial)) = self.order.front() {
            let current = self
                .by_correlation
                .get(correlation)
                .filter(|request| request.serial == *serial);
            let keep = match current {
                // Replaced by a newer request: the entry in `order` is stale.
                None => false,
                Some(request) => {
                    request.expires > now && self.by_correlation.len() + room <= MAX_REQUESTS
                }
            };
            if keep {
                break;
            }
            if current.is_some() {
                self.by_correlation.remove(correlation);
            }
            self.order.pop_front();
        }
    }
}

/// The requests of one connection waiting for replies.
#[derive(Debug, Default)]
pub(crate) struct Conversations {
    /// How many requests are remembered, read without the lock.
    waiting_count: AtomicUsize,
    waiting: Mutex<Waiting>,
}

impl Conversations {
    fn waiting(&self) -> MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Remembers a request whose publish span is `publish`.
    pub(crate) fn request(&self, response_topic: &str, correlation: &[u8], publish: SpanContext) {
        if correlation.len() > MAX_KEY_LEN || response_topic.len() > MAX_KEY_LEN {
            return;
        }
        let now = Instant::now();
        let mut waiting = self.waiting();
        let replacing = waiting.by_correlation.contains_key(correlation);
        waiting.sweep(now, usize::from(!replacing));
        waiting.serial += 1;
        let serial = waiting.serial;
        let correlation: Arc<[u8]> = Arc::from(correlation);
        waiting.order.push_back((Arc::clone(&correlation), serial));
        waiting.by_correlation.insert(
            correlation,
            Request {
                response_topic: Box::from(response_topic),
                publish,
                expires: now + REQUEST_LIFETIME,
                serial,
            },
        );
        if waiting.order.len() > 2 * MAX_REQUESTS {
            // Correlation Data used again and again behind a request that is still current.
            let Waiting {
                by_correlation,
                order,
                ..
            } = &mut *waiting;
            order.retain(|(correlation, serial)| {
                by_correlation
                    .get(correlation)
                    .is_some_and(|request| request.serial == *serial)
            });
        }
        self.waiting_count
            .store(waiting.by_correlation.len(), Ordering::Relaxed);
    }

    /// The publish span of the request that a message on `topic` with `correlation` answers.
    pub(crate) fn reply(&self, topic: &str, correlation: &[u8]) -> Option<SpanContext> {
        if self.waiting_count.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let mut waiting = self.waiting();
        waiting.sweep(Instant::now(), 0);
        self.waiting_count
            .store(waiting.by_correlation.len(), Ordering::Relaxed);
        waiting
            .by_correlation
            .get(correlation)
            .filter(|request| &*request.response_topic == topic)
            .map(|request| request.publish.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};

    fn context(n: u64) -> SpanContext {
        SpanContext::new(
            TraceId::from(u128::from(n) + 1),
            SpanId::from(n + 1),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        )
    }

    fn span_id(context: Option<SpanContext>) -> Option<SpanId> {
        context.map(|c| c.span_id())
    }

    /// Section 4.10: a reply is on the Response Topic with the request's Correlation Data.
    #[test]
    fn a_reply_is_matched_by_correlation_data_and_response_topic() {
        let conversations = Conversations::default();
        assert_eq!(conversations.reply("replies/a", b"1"), None);
        conversations.request("replies/a", b"1", context(1));
        conversations.request("replies/b", b"2", context(2));
        assert_eq!(
            span_id(conversations.reply("replies/a", b"1")),
            Some(context(1).span_id())
        );
        assert_eq!(conversations.reply("replies/b", b"1"), None, "other topic");
        assert_eq!(conversations.reply("replies/a", b"3"), None, "other data");
        // A second reply links as well.
        assert_eq!(
            span_id(conversations.reply("replies/a", b"1")),
            Some(context(1).span_id())
        );
        // A newer request with the same data takes the older one's place.
        conversations.request("replies/c", b"1", context(3));
        assert_eq!(conversations.reply("replies/a", b"1"), None);
        assert_eq!(
            span_id(conversations.reply("replies/c", b"1")),
            Some(context(3).span_id())
        );
        // The replaced request's place in the order went with the next sweep.
        assert_eq!(conversations.waiting().order.len(), 2);
        assert_eq!(conversations.waiting().by_correlation.len(), 2);
    }

    #[test]
    fn requests_are_bounded_in_number_and_size() {
        let conversations = Conversations::default();
        for n in 0..(MAX_REQUESTS as u64 + 10) {
            conversations.request("r", &n.to_be_bytes(), context(n));
        }
        let waiting = conversations.waiting();
        assert_eq!(waiting.by_correlation.len(), MAX_REQUESTS);
        assert_eq!(waiting.order.len(), MAX_REQUESTS);
        drop(waiting);
        assert_eq!(conversations.reply("r", &0_u64.to_be_bytes()), None);
        assert!(
            conversations
                .reply("r", &(MAX_REQUESTS as u64 + 9).to_be_bytes())
                .is_some()
        );
        let hostile = vec![0x55; 65_535];
        let conversations = Conversations::default();
        conversations.request("r", &hostile, context(1));
        conversations.request(&"t".repeat(MAX_KEY_LEN + 1), b"1", context(1));
        assert_eq!(conversations.waiting_count.load(Ordering::Relaxed), 0);
        assert_eq!(conversations.reply("r", &hostile), None);
    }

    #[test]
    fn correlation_data_used_again_and_again_keeps_the_order_bounded() {
        let conversations = Conversations::default();
        conversations.request("r", b"first", context(0));
        for n in 0..(4 * MAX_REQUESTS as u64) {
            conversations.request("r", b"again", context(n));
        }
        let waiting = conversations.waiting();
        assert_eq!(waiting.by_correlation.len(), 2);
        assert!(waiting.order.len() <= 2 * MAX_REQUESTS + 1);
    }

    #[test]
    fn expired_requests_are_forgotten() {
        let conversations = Conversations::default();
        conversations.request("r", b"old", context(1));
        conversations
            .waiting()
            .by_correlation
            .values_mut()
            .for_each(|request| {
                request.expires = Instant::now();
            });
        assert_eq!(conversations.reply("r", b"old"), None);
        assert_eq!(conversations.waiting_count.load(Ordering::Relaxed), 0);
        assert!(conversations.waiting().order.is_empty());
    }
}
