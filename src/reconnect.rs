//! What the traced event loops do around reconnects that rumqttc does not: a delay between
//! attempts, and no silent loss when the broker forgets the session.
//!
//! # Backoff
//!
//! rumqttc reconnects on the next `poll()` with no delay, so a loop that polls again after an
//! error hammers an unreachable broker as fast as connections are refused. With
//! [`ReconnectBackoff`] set on a traced event loop, a `poll()` that would attempt a connection
//! after a failed one first waits: `initial`, doubling per consecutive failure up to `max`, with
//! random jitter so that a fleet does not reconnect in lockstep. It is opt-in, because it changes
//! how `poll()` behaves.
//!
//! # Requests that were never written
//!
//! When a connection breaks, rumqttc moves every request still in its channel into its
//! `pending` queue, and after the reconnect it sends that whole queue at once, ignoring its
//! in-flight limit: the new packet ids then collide with ones still in use, and rumqttc keeps
//! only the last of several colliding publishes, so the others are lost. The traced event loops
//! take those never-written requests out of `pending` when the connection breaks and feed them
//! back in order, one publish at a time, while the in-flight window (rumqttc's limit, or the
//! broker's Receive Maximum for MQTT 5) has room and no publish is parked on a collision. They
//! survive a session loss too: sending them cannot duplicate anything.
//!
//! # Resending after a session loss
//!
//! rumqttc keeps the publishes it had written and not yet seen acknowledged, to replay them on
//! the next connection. But when the broker answers that CONNACK with `session_present = false`
//! (a clean start, an expired session, a broker that lost its state), rumqttc clears them: they
//! vanish without an event. The traced event loops put them back instead, in their order, with
//! fresh packet ids, and send them on the new connection (counted in `mqtt.client.resent`). A
//! QoS 1 or 2 message may then arrive twice, which MQTT allows for those levels. QoS 2 publishes
//! already past PUBREC cannot be resent (rumqttc no longer holds their payload; the broker has
//! them) and end with `error.type = session_lost`.
//!
//! This is on by default; `set_resend_after_session_loss(false)` restores rumqttc's behaviour
//! for written publishes, whose spans then end with `error.type = session_lost` (never-written
//! ones are still sent, as above).
//!
//! rumqttc also keeps a publish parked on a packet-id collision across a session loss, waiting
//! for an acknowledgement the new session never sends, which stalls all later publishes (rumqtt
//! issue 1056). The traced event loops take it out on such a CONNACK: resent with the others, or,
//! with resending off, ended as `session_lost`.

use std::time::{Duration, Instant};

/// Delays between reconnection attempts: exponential, capped, with jitter.
///
/// ```
/// use std::time::Duration;
/// use rumqttc_opentelemetry::reconnect::ReconnectBackoff;
///
/// let backoff = ReconnectBackoff::new(Duration::from_millis(100), Duration::from_secs(30))
///     .with_jitter(0.2);
/// // The third consecutive failure waits about 400 ms (100 ms doubled twice), +-20 %.
/// let delay = backoff.delay(3);
/// assert!(delay >= Duration::from_millis(320) && delay <= Duration::from_millis(480));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReconnectBackoff {
    initial: Duration,
    max: Duration,
    jitter: f64,
}

impl ReconnectBackoff {
    /// Waits `initial` after the first failure, doubling per further failure up to `max`, with
    /// 10 % jitter.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            jitter: 0.1,
        }
    }

    /// Sets the jitter: each delay is drawn from `delay * (1 - jitter) ..= delay * (1 + jitter)`.
    /// Clamped to `0.0..=1.0`.
    pub fn with_jitter(mut self, jitter: f64) -> Self {
        self.jitter = if jitter.is_nan() {
            0.0
        } else {
            jitter.clamp(0.0, 1.0)
        };
        self
    }

    /// The delay before the attempt that follows `failures` consecutive failures (1 or more).
    pub fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        let base = self
            .initial
            .saturating_mul(1_u32 << doublings)
            .min(self.max);
        let spread = self.jitter * (2.0 * unit_random() - 1.0);
        base.mul_f64((1.0 + spread).max(0.0))
    }
}

/// A number in `0.0..1.0` from the clock and a per-thread xorshift state: jitter only needs to
/// differ between clients, not to be unpredictable.
fn unit_random() -> f64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let nanos = Instant::now().elapsed().as_nanos() as u64;
            let seed = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            (seed ^ nanos ^ 0x9e37_79b9_7f4a_7c15) | 1
        });
    }
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        (x >> 11) as f64 / (1_u64 << 53) as f64
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap() {
        let backoff = ReconnectBackoff::new(Duration::from_millis(100), Duration::from_secs(1))
            .with_jitter(0.0);
        let delays: Vec<u128> = (1..=6).map(|n| backoff.delay(n).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(backoff.delay(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_within_its_bounds() {
        let backoff =
            ReconnectBackoff::new(Duration::from_secs(1), Duration::from_secs(1)).with_jitter(0.5);
        for _ in 0..1000 {
            let delay = backoff.delay(1);
            assert!(delay >= Duration::from_millis(500) && delay <= Duration::from_millis(1500));
        }
        assert_eq!(
            ReconnectBackoff::new(Duration::ZERO, Duration::ZERO)
                .with_jitter(f64::NAN)
                .delay(3),
            Duration::ZERO
        );
    }
}
