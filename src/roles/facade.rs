//! The public role types of one MQTT version, generated over the version-independent halves in
//! `publisher` and `subscriber`, so that each version documents concrete types.

/// Defines `TracedPublisher`, `SubscriberBuilder` and `TracedSubscriber` for one protocol
/// version. The invoking module imports `TracedClient`, `TracedEventLoop`, `MqttOptions`, `QoS`,
/// `ClientError`, `Message`, `Instrumentation`, `Error`, `AckPolicy` and `RetryPolicy`, which the
/// documentation links to.
macro_rules! roles_facade {
    (
        protocol = $p:ty,
        publisher_example = $publisher_example:literal,
        subscriber_example = $subscriber_example:literal,
        builder_example = $builder_example:literal,
        dispatch = $dispatch:literal,
    ) => {
        /// A publisher that owns its connection: the traced event loop runs in a task of its
        /// own, so the application only publishes (the role of a sensor).
        ///
        /// - Publishes are traced as [`TracedClient`] traces them: a PRODUCER span per publish,
        ///   ended when the broker has the message (QoS 0 written, QoS 1 acknowledged, QoS 2
        ///   completed).
        /// - [`flush`](Self::flush) waits until every publish made on the connection so far has
        ///   ended, and [`shutdown`](Self::shutdown) flushes, sends DISCONNECT and waits for the
        ///   task to end: a program that publishes and then exits calls one of them last, or
        ///   its QoS 1 and 2 messages may never reach the broker.
        /// - Dropping the last handle of the connection stops its task at once: the socket
        ///   closes without DISCONNECT, so the broker publishes the last will, and publishes
        ///   not yet acknowledged end with `error.type = event_loop_dropped`.
        /// - After a connection error the task reconnects, pausing 100 ms after the first
        ///   failure and twice as long after each further one, up to 5 s. Publishes made
        ///   meanwhile wait in rumqttc's queue.
        /// - Retained messages: publish with `retain = true`; [`clear_retained`](Self::clear_retained)
        ///   removes the broker's retained message of a topic. Last will and persistent
        ///   sessions are set on the `MqttOptions` (`set_last_will`, `set_clean_session` /
        ///   `set_clean_start`), as with rumqttc.
        /// - [`publish_batch`](Self::publish_batch) and
        ///   [`publish_with_retry`](Self::publish_with_retry) publish several messages at once,
        ///   or one until it is acknowledged.
        ///
        /// Clones share the connection. The constructors spawn the task, so they must be called
        /// inside a Tokio runtime (like `tokio::spawn`, they panic elsewhere).
        ///
        #[doc = $publisher_example]
        #[derive(Clone)]
        pub struct TracedPublisher {
            inner: $crate::roles::publisher::PublisherCore<$p>,
        }

        impl ::std::fmt::Debug for TracedPublisher {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                self.inner.fmt(f)
            }
        }

        impl TracedPublisher {
            /// Connects with the default [`Instrumentation`]; `cap` is the capacity of
            /// rumqttc's request queue, as in `AsyncClient::new`.
            pub fn new(options: MqttOptions, cap: usize) -> Self {
                Self::with_instrumentation(options, cap, Instrumentation::default())
            }

            /// Connects with the given instrumentation.
            pub fn with_instrumentation(
                options: MqttOptions,
                cap: usize,
                instrumentation: Instrumentation,
            ) -> Self {
                let (client, eventloop) =
                    TracedClient::with_instrumentation(options, cap, instrumentation);
                Self::from_parts(client, eventloop)
            }

            /// Takes over a traced client and its event loop, and polls the event loop in the
            /// connection task.
            pub fn from_parts(client: TracedClient, eventloop: TracedEventLoop) -> Self {
                Self {
                    inner: $crate::roles::publisher::PublisherCore::start(client, eventloop),
                }
            }

            pub(crate) fn from_core(inner: $crate::roles::publisher::PublisherCore<$p>) -> Self {
                Self { inner }
            }

            /// The traced client of the connection, for everything else rumqttc offers.
            pub fn client(&self) -> &TracedClient {
                &self.inner.client
            }

            /// Publishes without waiting for the acknowledgement (traced like
            /// [`TracedClient::publish_bytes`]).
            pub async fn publish<S, V>(
                &self,
                topic: S,
                qos: QoS,
                retain: bool,
                payload: V,
            ) -> Result<(), ClientError>
            where
                S: Into<String>,
                V: Into<::bytes::Bytes>,
            {
                <$p as $crate::roles::Protocol>::publish(
                    &self.inner.client,
                    topic.into(),
                    qos,
                    retain,
                    payload.into(),
                )
                .await
            }

            /// Publishes and waits until the publish has ended, as its span does (see
            /// [`TracedClient::publish_confirmed`]).
            pub async fn publish_confirmed<S, V>(
                &self,
                topic: S,
                qos: QoS,
                retain: bool,
                payload: V,
            ) -> Result<(), Error>
            where
                S: Into<String>,
                V: Into<::bytes::Bytes>,
            {
                <$p as $crate::roles::Protocol>::publish_confirmed(
                    &self.inner.client,
                    topic.into(),
                    qos,
                    retain,
                    payload.into(),
                )
                .await
            }

            /// Removes the retained message of `topic` from the broker (a retained publish with
            /// an empty payload, MQTT section 3.3.1.3), and waits until it is confirmed.
            ///
            /// # Errors
            ///
            /// As [`publish_confirmed`](Self::publish_confirmed). (An empty retained payload is
            /// never wrapped in an MQTT 3.1.1 envelope, which would store the envelope instead.)
            pub async fn clear_retained<S: Into<String>>(
                &self,
                topic: S,
                qos: QoS,
            ) -> Result<(), Error> {
                self.inner.clear_retained(topic.into(), qos).await
            }

            /// Publishes every `(topic, payload)` at `qos`, all at once and in the given order,
            /// and waits for each outcome; the results are in the same order.
            ///
            /// Records an INTERNAL `publish_batch` span (with `messaging.batch.message_count`)
            /// whose children are the N publish spans; when some publishes fail it ends as an
            /// error with the first failure's `error.type`. The publishes are queued in
            /// rumqttc's request queue, and the number in flight is rumqttc's in-flight limit.
            pub async fn publish_batch<I, S, V>(
                &self,
                qos: QoS,
                retain: bool,
                messages: I,
            ) -> Vec<Result<(), Error>>
            where
                I: IntoIterator<Item = (S, V)>,
                S: Into<String>,
                V: Into<::bytes::Bytes>,
            {
                let messages = messages
                    .into_iter()
                    .map(|(topic, payload)| (topic.into(), payload.into()))
                    .collect();
                self.inner.publish_batch(qos, retain, messages).await
            }

            /// Publishes and waits for the outcome, retrying with exponential backoff until
            /// one attempt succeeds or `policy`'s attempts are spent. Returns the number of
            /// attempts made.
            ///
            /// Records an INTERNAL `publish_with_retry {topic}` span: each attempt is a normal
            /// publish span (its child) and an `mqtt.publish.attempt` event on it, with the
            /// attempt's number (`mqtt.publish.attempt`, from 1), its `error.type` when it failed,
            /// and the pause before the next attempt (`mqtt.publish.backoff`, seconds). Every
            /// failure is retried ([`Error::PublishFailed`]: a reason code of the broker, a lost
            /// session, a missing acknowledgement) except [`Error::RequestRejected`] (rumqttc
            /// refused the request: an invalid topic, or the connection task is gone), which
            /// ends the retries at once.
            ///
            /// # Errors
            ///
            /// [`Error::RetriesExhausted`] with the number of attempts and the last attempt's
            /// error, after the retry span has ended as an error with its `error.type` and the
            /// status message `gave up after N attempt(s): ...`; [`Error::RequestRejected`] when
            /// rumqttc refused the first attempt.
            pub async fn publish_with_retry<S, V>(
                &self,
                topic: S,
                qos: QoS,
                retain: bool,
                payload: V,
                policy: &RetryPolicy,
            ) -> Result<u32, Error>
            where
                S: Into<String>,
                V: Into<::bytes::Bytes>,
            {
                self.inner
                    .publish_with_retry(topic.into(), qos, retain, payload.into(), policy)
                    .await
            }

            /// Waits until every publish made on this connection so far (through any handle,
            /// including the [`client`](Self::client) and a subscriber's handlers) has ended:
            /// written (QoS 0), acknowledged (QoS 1, 2), or failed. A written publish fails
            /// when its acknowledgement has not come within the instrumentation's
            /// `ack_timeout`; one still queued waits for the connection.
            ///
            /// Returns at once when the connection task does not run.
            pub async fn flush(&self) {
                self.inner.flush().await
            }

            /// Flushes, sends DISCONNECT (so the broker discards the last will) and waits for
            /// the connection task to end. This ends the connection for every handle that
            /// shares it. When the connection is down, the task ends at the next failed
            /// attempt instead of reconnecting.
            pub async fn shutdown(self) {
                self.inner.shutdown().await
            }

            /// Whether the connection is established (a CONNACK and no error since).
            pub fn is_connected(&self) -> bool {
                self.inner.shared().is_connected()
            }

            /// Waits until the connection is established; `false` when the connection task
            /// does not run (it has ended, or belongs to a subscriber not started yet).
            pub async fn wait_connected(&self) -> bool {
                self.inner.wait_connected().await
            }

            /// Publish spans not ended yet on this connection (what [`flush`](Self::flush)
            /// waits for).
            pub fn open_publishes(&self) -> usize {
                self.inner.open_publishes()
            }
        }

        /// Registers the routes of a [`TracedSubscriber`] before it starts.
        ///
        /// The connection (not yet connected) exists from
        /// [`TracedSubscriber::builder`] on, so [`client`](Self::client) and
        /// [`publisher`](Self::publisher) can be captured by the handlers (a gateway that
        /// forwards what it receives).
        ///
        #[doc = $builder_example]
        pub struct SubscriberBuilder {
            inner: $crate::roles::subscriber::SubscriberBuilderCore<$p>,
        }

        impl ::std::fmt::Debug for SubscriberBuilder {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                self.inner.fmt(f)
            }
        }

        impl SubscriberBuilder {
            /// The traced client of the connection. Its publishes from inside a handler are
            /// children of the handler's `process` span, and go out on the subscriber's own
            /// connection.
            pub fn client(&self) -> &TracedClient {
                self.inner.client()
            }

            /// A publisher on the subscriber's connection: flush, batch and retry from inside a
            /// handler. It shares the connection: the connection lives while the subscriber or
            /// any such publisher does.
            pub fn publisher(&self) -> TracedPublisher {
                TracedPublisher::from_core(self.inner.publisher())
            }

            /// Adds a route: messages for `filter` (a topic filter, or a shared subscription
            /// `$share/{group}/{filter}`) run `handler`, which is subscribed at `qos`.
            /// Registering a filter again replaces its QoS and handler.
            ///
            /// The handler gets each [`Message`] and returns a future of `Result<(), E>`; an
            /// `Err` marks the `process` span as an error with `error.type` = the name of `E`
            /// (`std::any::type_name`, for example `std::io::error::Error` or
            /// `anyhow::Error`) and the error's `Display` text as the status message.
            ///
            /// # Errors
            ///
            /// [`Error::Topic`] when `filter` is not a valid topic filter.
            pub fn route<F, Fut, E>(self, filter: &str, qos: QoS, handler: F) -> Result<Self, Error>
            where
                F: Fn(Message) -> Fut + Send + Sync + 'static,
                Fut: ::std::future::Future<Output = Result<(), E>> + Send + 'static,
                E: ::std::fmt::Display + 'static,
            {
                let handler: $crate::roles::worker::Handler<$p> =
                    ::std::sync::Arc::new(move |incoming| {
                        let run = handler(Message::from_incoming(incoming));
                        Box::pin(async move {
                            run.await
                                .map_err(|error| $crate::roles::worker::HandlerFailure::new(&error))
                        })
                    });
                Ok(Self {
                    inner: self.inner.route(filter, qos, handler)?,
                })
            }

            /// When messages are acknowledged (default [`AckPolicy::AfterHandler`]).
            pub fn ack_policy(self, policy: AckPolicy) -> Self {
                Self {
                    inner: self.inner.ack_policy(policy),
                }
            }

            /// How many received messages may wait for the worker before QoS 0 messages are
            /// shed (default 1024, at least 1). A shed message runs no handler; it is recorded
            /// as a `process` span with `error.type = queue_full`. QoS 1 and 2 messages are
            /// never shed: the broker's in-flight window bounds them, as they are acknowledged
            /// only after their handlers ran.
            pub fn queue_capacity(self, capacity: usize) -> Self {
                Self {
                    inner: self.inner.queue_capacity(capacity),
                }
            }

            /// The filters of the routes whose filter matches `topic`, in registration order
            /// (a `$share/{group}/` prefix is kept).
            pub fn matching_routes(&self, topic: &str) -> Vec<&str> {
                self.inner.matching_routes(topic)
            }

            /// Starts the subscriber: spawns its worker and its connection task, which
            /// connects and subscribes the routes. Must be called inside a Tokio runtime (like
            /// `tokio::spawn`, it panics elsewhere).
            pub fn start(self) -> TracedSubscriber {
                TracedSubscriber {
                    inner: self.inner.start(),
                }
            }
        }

        /// A subscriber that owns its connection and runs an async handler per route, each
        /// run inside a CONSUMER `process {filter}` span.
        ///
        /// # Processing
        ///
        /// - The connection task polls the event loop all the time (keep-alive, acknowledgements,
        ///   the publishes of handlers) and hands each received message to one worker task,
        ///   which runs the message's handlers one after the other, in arrival order, then
        ///   acknowledges it by the [`AckPolicy`] (MQTT 4.6: messages are processed and
        ///   acknowledged in the order they arrived). A slow handler delays the next messages,
        ///   not the connection.
        /// - Each run has a `process {filter}` span (`filter` without its `$share/{group}/`
        ///   prefix; a shared route adds `messaging.consumer.group.name` = `{group}`). Its parent
        ///   follows the instrumentation's [`ParentMode`](crate::ParentMode): by default the
        ///   producer's span, with a link to the message's `receive` span; with
        ///   `ParentMode::Link`, the `receive` span, with a link to the producer's. A message
        ///   without trace context (MQTT 3.1.1 without propagation, a last will) makes the
        ///   process span a child of the receive span, in a new trace.
        /// - The handler runs with the process span's context current (as
        ///   `opentelemetry::Context::current()`): publishes through [`client`](Self::client)
        ///   are its children, and so are `tracing` spans when the application uses
        ///   `tracing-opentelemetry`.
        /// - `error.type` of a failed run: the handler error's type name
        ///   (`std::any::type_name`), `panic` when the handler panicked (the status message is
        ///   the panic message; the subscriber goes on with the next message), `cancelled` when
        ///   the runtime cancelled the handler's task. A handler runs in a task of its own so
        ///   that its panic is caught; with `panic = "abort"` there is nothing to catch.
        /// - `messaging.process.duration` is recorded per run, with the same `error.type`.
        ///
        /// # Dispatch
        ///
        #[doc = $dispatch]
        ///
        /// # Connection
        ///
        /// The routes are subscribed on the first connection, and again after every reconnect
        /// whose session is not present. A message that arrives for no route (a subscription
        /// made through [`client`](Self::client), or left in a persistent session by an older
        /// program) runs nothing and is acknowledged. [`shutdown`](Self::shutdown) lets the
        /// worker finish the messages already received, flushes publishes and disconnects;
        /// dropping the subscriber aborts the worker (the handler running is cancelled) and,
        /// unless a [`publisher`](Self::publisher) of the connection is still alive, closes
        /// the socket at once.
        ///
        #[doc = $subscriber_example]
        pub struct TracedSubscriber {
            inner: $crate::roles::subscriber::SubscriberCore<$p>,
        }

        impl ::std::fmt::Debug for TracedSubscriber {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                self.inner.fmt(f)
            }
        }

        impl TracedSubscriber {
            /// A builder for a subscriber on a new connection with the default
            /// [`Instrumentation`]; `cap` is the capacity of rumqttc's request queue. Turns
            /// rumqttc's manual acknowledgements on in `options` (see [`AckPolicy`]).
            pub fn builder(options: MqttOptions, cap: usize) -> SubscriberBuilder {
                Self::builder_with_instrumentation(options, cap, Instrumentation::default())
            }

            /// Like [`TracedSubscriber::builder`], with the given instrumentation.
            pub fn builder_with_instrumentation(
                options: MqttOptions,
                cap: usize,
                instrumentation: Instrumentation,
            ) -> SubscriberBuilder {
                SubscriberBuilder {
                    inner: $crate::roles::subscriber::SubscriberBuilderCore::new(
                        options,
                        cap,
                        instrumentation,
                    ),
                }
            }

            /// The traced client of the connection (see [`SubscriberBuilder::client`]).
            pub fn client(&self) -> &TracedClient {
                &self.inner.publisher.client
            }

            /// A publisher on the subscriber's connection (see
            /// [`SubscriberBuilder::publisher`]).
            pub fn publisher(&self) -> TracedPublisher {
                TracedPublisher::from_core(self.inner.publisher.clone())
            }

            /// Waits until the broker has answered the route subscriptions of the current
            /// connection (right away when there are no routes).
            ///
            /// # Errors
            ///
            /// [`Error::SubscriptionRefused`] naming the first filter the broker refused and the
            /// reason, or [`Error::RequestRejected`] saying that the connection ended first.
            pub async fn subscribed(&self) -> Result<(), Error> {
                self.inner.subscribed().await
            }

            /// Whether the connection is established.
            pub fn is_connected(&self) -> bool {
                self.inner.publisher.shared().is_connected()
            }

            /// Waits until the connection is established; `false` when the connection task
            /// has ended.
            pub async fn wait_connected(&self) -> bool {
                self.inner.publisher.wait_connected().await
            }

            /// Messages received and not yet taken by the worker.
            pub fn queued(&self) -> usize {
                self.inner.queued()
            }

            /// Stops taking new messages (those arriving from now on are neither processed nor
            /// acknowledged, so a persistent session gets them again), lets the worker process
            /// the messages already received, flushes the publishes of the connection, sends
            /// DISCONNECT and waits for the connection task to end.
            pub async fn shutdown(self) {
                self.inner.shutdown().await
            }
        }
    };
}
pub(crate) use roles_facade;
