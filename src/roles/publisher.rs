//! The version-independent half of `TracedPublisher`: a traced client whose event loop runs in
//! the connection task, with flush, shutdown, and the batch and retry helpers.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;
use opentelemetry::trace::{FutureExt as _, SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};

use super::RetryPolicy;
use super::driver;
use super::shared::{DriverHandle, Shared};
use crate::core::{Client, Core, EventLoop, Protocol, PublishRequest};
use crate::error::Error;
use crate::semconv::{
    ERROR_TYPE, MESSAGING_CLIENT_ID, MESSAGING_DESTINATION_NAME, MESSAGING_SYSTEM,
    MESSAGING_SYSTEM_VALUE, SERVER_ADDRESS, SERVER_PORT,
};

/// `messaging.batch.message_count` (semconv): the number of messages of a batch.
const MESSAGING_BATCH_MESSAGE_COUNT: &str = "messaging.batch.message_count";
/// The span event of one attempt of `publish_with_retry`.
pub(crate) const ATTEMPT_EVENT: &str = "mqtt.publish.attempt";
/// Attribute of [`ATTEMPT_EVENT`]: the attempt's number, from 1.
pub(crate) const ATTEMPT: &str = "mqtt.publish.attempt";
/// Attribute of [`ATTEMPT_EVENT`]: the pause before the next attempt, in seconds.
pub(crate) const BACKOFF: &str = "mqtt.publish.backoff";
/// Attribute of the retry span: the most attempts the policy allows.
pub(crate) const MAX_ATTEMPTS: &str = "mqtt.publish.max_attempts";

/// The `error.type` of an error of this crate, as a span records it.
pub(crate) fn error_type(error: &Error) -> &'static str {
    match error {
        Error::PublishFailed(error_type) => error_type,
        Error::RequestRejected(_) => "request_rejected",
        _ => "_OTHER",
    }
}

/// A traced client whose event loop runs in the connection task.
pub(crate) struct PublisherCore<P: Protocol> {
    pub(crate) client: Client<P>,
    pub(crate) driver: Arc<DriverHandle>,
}

impl<P: Protocol> Clone for PublisherCore<P> {
    fn clone(&self) -> Self {
        Self {
            client: self.client.clone(),
            driver: Arc::clone(&self.driver),
        }
    }
}

impl<P: Protocol> std::fmt::Debug for PublisherCore<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("client", &self.client)
            .field("connected", &self.shared().is_connected())
            .field("open_publishes", &self.open_publishes())
            .finish_non_exhaustive()
    }
}

/// Attributes every helper span carries.
fn helper_attributes(core: &Core) -> Vec<KeyValue> {
    let connection = &core.telemetry.connection;
    vec![
        KeyValue::new(MESSAGING_SYSTEM, MESSAGING_SYSTEM_VALUE),
        KeyValue::new(MESSAGING_CLIENT_ID, connection.client_id().to_owned()),
        KeyValue::new(SERVER_ADDRESS, connection.server().host().to_owned()),
        KeyValue::new(SERVER_PORT, i64::from(connection.server().port())),
    ]
}

/// Runs `futures` concurrently and returns their outputs in order. Each is first polled in
/// order, so publishes queue up in the order given (the traced client's send lock is fair).
async fn join_in_order<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    enum Slot<F: Future> {
        Running(Pin<Box<F>>),
        Done(F::Output),
    }
    let mut slots: Vec<Slot<F>> = futures
        .into_iter()
        .map(|future| Slot::Running(Box::pin(future)))
        .collect();
    poll_fn(|cx| {
        let mut all_done = true;
        for slot in &mut slots {
            if let Slot::Running(future) = slot {
                match future.as_mut().poll(cx) {
                    Poll::Ready(output) => *slot = Slot::Done(output),
                    Poll::Pending => all_done = false,
                }
            }
        }
        if all_done {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    slots
        .into_iter()
        .filter_map(|slot| match slot {
            Slot::Done(output) => Some(output),
            Slot::Running(_) => None,
        })
        .collect()
}

impl<P: Protocol> PublisherCore<P> {
    /// Spawns the connection task for `eventloop` (no routes).
    pub(crate) fn start(client: Client<P>, eventloop: EventLoop<P>) -> Self {
        let shared = Shared::new();
        driver::spawn::<P>(client.clone(), eventloop, Arc::clone(&shared), None);
        Self {
            client,
            driver: Arc::new(DriverHandle { shared }),
        }
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.driver.shared
    }

    pub(crate) fn core(&self) -> &Core {
        self.client.core()
    }

    /// Publish spans not ended yet on this connection.
    pub(crate) fn open_publishes(&self) -> usize {
        self.core().publishes.open()
    }

    /// Waits until every publish made on this connection so far has ended (or the connection
    /// task is not running).
    pub(crate) async fn flush(&self) {
        let mut state = self.shared().watch();
        loop {
            let running = state.borrow_and_update().running();
            if !running || self.open_publishes() == 0 {
                return;
            }
            if state.changed().await.is_err() {
                return;
            }
        }
    }

    /// Waits until connected; `false` when the connection task has ended (or never started).
    pub(crate) async fn wait_connected(&self) -> bool {
        let mut state = self.shared().watch();
        state
            .wait_for(|state| state.connected || !state.running())
            .await
            .map(|state| state.connected)
            .unwrap_or(false)
    }

    /// Flushes, sends DISCONNECT and waits for the connection task to end.
    pub(crate) async fn shutdown(&self) {
        self.flush().await;
        let shared = self.shared();
        shared.begin_closing();
        if P::disconnect(self.client.inner()).await.is_err() {
            shared.stop();
        }
        let mut state = shared.watch();
        let _ = state.wait_for(|state| !state.running()).await.map(|_| ());
    }

    /// Clears the retained message of `topic`: a retained publish with an empty payload.
    pub(crate) async fn clear_retained(&self, topic: String, qos: P::QoS) -> Result<(), Error> {
        // The traced clients never wrap an empty retained payload, so this clears the message.
        let request = PublishRequest::new(topic, qos, true, Bytes::new());
        self.client.publish_confirmed(request).await
    }

    /// Publishes every message (in order, concurrently) and waits for each outcome, inside an
    /// INTERNAL `publish_batch` span.
    pub(crate) async fn publish_batch(
        &self,
        qos: P::QoS,
        retain: bool,
        messages: Vec<(String, Bytes)>,
    ) -> Vec<Result<(), Error>> {
        let core = self.core();
        let tracer = &core.telemetry.settings.tracer;
        let mut attributes = helper_attributes(core);
        attributes.push(KeyValue::new(
            MESSAGING_BATCH_MESSAGE_COUNT,
            i64::try_from(messages.len()).unwrap_or(i64::MAX),
        ));
        let span = tracer
            .span_builder("publish_batch")
            .with_kind(SpanKind::Internal)
            .with_attributes(attributes)
            .start(tracer);
        let cx = Context::current_with_span(span);
        let count = messages.len();
        let futures: Vec<_> = messages
            .into_iter()
            .map(|(topic, payload)| {
                self.client
                    .publish_confirmed(PublishRequest::new(topic, qos, retain, payload))
                    .with_context(cx.clone())
            })
            .collect();
        let results = join_in_order(futures).await;
        let failed: Vec<&Error> = results.iter().filter_map(|r| r.as_ref().err()).collect();
        let span = cx.span();
        if let Some(first) = failed.first() {
            span.set_attribute(KeyValue::new(ERROR_TYPE, error_type(first)));
            span.set_status(Status::error(format!(
                "{} of {count} publishes failed; the first: {first}",
                failed.len()
            )));
        }
        span.end();
        results
    }

    /// Publishes until one attempt is confirmed or the policy's attempts are spent, inside an
    /// INTERNAL `publish_with_retry {topic}` span whose events are the attempts. Returns the
    /// number of attempts made.
    pub(crate) async fn publish_with_retry(
        &self,
        topic: String,
        qos: P::QoS,
        retain: bool,
        payload: Bytes,
        policy: &RetryPolicy,
    ) -> Result<u32, Error> {
        let core = self.core();
        let tracer = &core.telemetry.settings.tracer;
        let mut attributes = helper_attributes(core);
        attributes.push(KeyValue::new(MESSAGING_DESTINATION_NAME, topic.clone()));
        attributes.push(KeyValue::new(MAX_ATTEMPTS, i64::from(policy.attempts())));
        let span = tracer
            .span_builder(format!("publish_with_retry {topic}"))
            .with_kind(SpanKind::Internal)
            .with_attributes(attributes)
            .start(tracer);
        let cx = Context::current_with_span(span);
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let request = PublishRequest::new(topic.clone(), qos, retain, payload.clone());
            let outcome = self
                .client
                .publish_confirmed(request)
                .with_context(cx.clone())
                .await;
            let span = cx.span();
            let error = match outcome {
                Ok(()) => {
                    span.add_event(
                        ATTEMPT_EVENT,
                        vec![KeyValue::new(ATTEMPT, i64::from(attempt))],
                    );
                    span.end();
                    return Ok(attempt);
                }
                Err(error) => error,
            };
            let error_type = error_type(&error);
            // A request rumqttc refused (an invalid topic, a closed event loop) fails again.
            let retry = attempt < policy.attempts() && !matches!(error, Error::RequestRejected(_));
            let mut attributes = vec![
                KeyValue::new(ATTEMPT, i64::from(attempt)),
                KeyValue::new(ERROR_TYPE, error_type),
            ];
            let pause = policy.backoff(attempt);
            if retry {
                attributes.push(KeyValue::new(BACKOFF, pause.as_secs_f64()));
            }
            span.add_event(ATTEMPT_EVENT, attributes);
            if !retry {
                span.set_attribute(KeyValue::new(ERROR_TYPE, error_type));
                span.set_status(Status::error(format!(
                    "gave up after {attempt} attempt(s): {error}"
                )));
                span.end();
                return Err(match error {
                    // Refused before any attempt reached the broker: not a retry outcome.
                    Error::RequestRejected(_) if attempt == 1 => error,
                    last => Error::RetriesExhausted {
                        attempts: attempt,
                        last: Box::new(last),
                    },
                });
            }
            tokio::time::sleep(pause).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn join_in_order_keeps_the_order_of_the_futures() {
        let (first_tx, first_rx) = tokio::sync::oneshot::channel::<u8>();
        let (second_tx, second_rx) = tokio::sync::oneshot::channel::<u8>();
        let futures: Vec<Pin<Box<dyn Future<Output = u8> + Send>>> = vec![
            Box::pin(async move { first_rx.await.unwrap_or(0) }),
            Box::pin(async move { second_rx.await.unwrap_or(0) }),
            Box::pin(async { 3 }),
        ];
        let joined = tokio::spawn(join_in_order(futures));
        // The second completes before the first.
        let _ = second_tx.send(2);
        let _ = first_tx.send(1);
        assert_eq!(joined.await.ok(), Some(vec![1, 2, 3]));
        assert!(
            join_in_order(Vec::<std::future::Ready<u8>>::new())
                .await
                .is_empty()
        );
    }

    #[test]
    fn error_types_of_crate_errors() {
        assert_eq!(
            error_type(&Error::PublishFailed("not_authorized")),
            "not_authorized"
        );
        assert_eq!(
            error_type(&Error::RequestRejected("closed".to_owned())),
            "request_rejected"
        );
    }
}
