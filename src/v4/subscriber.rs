//! [`TracedSubscriber`] and its [`SubscriberBuilder`]: a MQTT 3.1.1 subscriber that runs an async
//! handler per route, each run inside a `process` span.

use rumqttc::{MqttOptions, QoS};

use super::client::TracedClient;
use super::message::Message;
use super::protocol::V4;
use super::publisher::TracedPublisher;
use super::{AckPolicy, HandlerOutput};
use crate::error::Error;
use crate::instrumentation::Instrumentation;
use crate::roles::subscriber::{SubscriberBuilderCore, SubscriberCore};

#[doc = include_str!("../roles/docs/builder.md")]
/// # Example
///
/// ```
/// use rumqttc::{MqttOptions, QoS};
/// use rumqttc_opentelemetry::v4::{Message, TracedSubscriber};
///
/// // A handler that cannot fail returns nothing.
/// async fn log(message: Message) {
///     println!("{} via {}", message.topic(), message.route());
/// }
///
/// let builder = TracedSubscriber::builder(MqttOptions::new("gw-1", "localhost", 1883), 10)
///     .route("home/+/temperature", QoS::AtLeastOnce, log)?
///     .route("home/#", QoS::AtMostOnce, log)?
///     .route("$share/loggers/home/#", QoS::AtLeastOnce, log)?;
///
/// // With MQTT 3.1.1, a message runs every route whose filter matches its topic.
/// assert_eq!(
///     builder.matching_routes("home/kitchen/temperature"),
///     ["home/+/temperature", "home/#", "$share/loggers/home/#"]
/// );
/// assert_eq!(builder.matching_routes("home"), ["home/#", "$share/loggers/home/#"]);
/// assert!(builder.matching_routes("office/printer").is_empty());
/// assert!(builder.route("home/#/x", QoS::AtMostOnce, log).is_err());
/// # Ok::<(), rumqttc_opentelemetry::Error>(())
/// ```
pub struct SubscriberBuilder {
    client: TracedClient,
    inner: SubscriberBuilderCore<V4>,
}

impl std::fmt::Debug for SubscriberBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

impl SubscriberBuilder {
    /// The traced client of the connection. Its publishes from inside a handler are
    /// children of the handler's `process` span, and go out on the subscriber's own
    /// connection.
    pub fn client(&self) -> &TracedClient {
        &self.client
    }

    /// A publisher on the subscriber's connection: flush, batch and retry from inside a
    /// handler. It shares the connection: the connection lives while the subscriber or
    /// any such publisher does.
    pub fn publisher(&self) -> TracedPublisher {
        TracedPublisher::from_core(self.inner.publisher())
    }

    #[doc = include_str!("../roles/docs/route.md")]
    ///
    /// # Example
    ///
    /// Every shape of handler:
    ///
    /// ```
    /// use rumqttc::{MqttOptions, QoS};
    /// use rumqttc_opentelemetry::v4::{HandlerResult, Message, TracedSubscriber};
    ///
    /// type BoxError = Box<dyn std::error::Error + Send + Sync>;
    ///
    /// async fn named(message: Message) -> HandlerResult {
    ///     let text = std::str::from_utf8(message.payload())?; // error.type: core::str::error::Utf8Error
    ///     println!("{text}");
    ///     Ok(())
    /// }
    ///
    /// async fn typed(_message: Message) -> Result<(), std::io::Error> {
    ///     Ok(())
    /// }
    ///
    /// async fn boxed(_message: Message) -> Result<(), BoxError> {
    ///     Err("not today".into())
    /// }
    ///
    /// let builder = TracedSubscriber::builder(MqttOptions::new("gw-1", "localhost", 1883), 10)
    ///     // `Ok(())` with no error type named.
    ///     .route("a/#", QoS::AtLeastOnce, |_message| async move { Ok(()) })?
    ///     // A handler that cannot fail.
    ///     .route("b/#", QoS::AtLeastOnce, |message: Message| async move {
    ///         println!("{}", message.topic());
    ///     })?
    ///     // `?` on any error type.
    ///     .route("c/#", QoS::AtLeastOnce, |message| async move {
    ///         std::fs::write("/dev/null", message.payload())?; // std::io::error::Error
    ///         Ok(())
    ///     })?
    ///     .route("d/#", QoS::AtLeastOnce, named)?
    ///     // Functions with an error type of their own, through a closure.
    ///     .route("e/#", QoS::AtLeastOnce, |m| async move { Ok(typed(m).await?) })?
    ///     .route("f/#", QoS::AtLeastOnce, |m| async move { Ok(boxed(m).await?) })?;
    /// assert_eq!(builder.matching_routes("d/1"), ["d/#"]);
    /// # Ok::<(), rumqttc_opentelemetry::Error>(())
    /// ```
    ///
    /// A function that returns its own error type is no handler by itself:
    ///
    /// ```compile_fail
    /// use rumqttc::{MqttOptions, QoS};
    /// use rumqttc_opentelemetry::v4::{Message, TracedSubscriber};
    ///
    /// async fn typed(_message: Message) -> Result<(), std::io::Error> {
    ///     Ok(())
    /// }
    ///
    /// let builder = TracedSubscriber::builder(MqttOptions::new("gw-1", "localhost", 1883), 10)
    ///     .route("e/#", QoS::AtLeastOnce, typed);
    /// ```
    pub fn route<F, Fut, R>(self, filter: &str, qos: QoS, handler: F) -> Result<Self, Error>
    where
        F: Fn(Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: HandlerOutput,
    {
        Ok(Self {
            inner: self
                .inner
                .route(filter, qos, Message::from_incoming, handler)?,
            client: self.client,
        })
    }

    /// When messages are acknowledged (default [`AckPolicy::AfterHandler`]).
    pub fn ack_policy(self, policy: AckPolicy) -> Self {
        Self {
            inner: self.inner.ack_policy(policy),
            client: self.client,
        }
    }

    /// How many received messages may wait for a handler (default 1024, at least 1).
    ///
    /// QoS 0 messages beyond that are shed: a shed message runs no handler; it is
    /// recorded as a `process` span with `error.type = queue_full`. QoS 1 and 2 messages
    /// are never shed: the broker's in-flight window bounds them, as they are
    /// acknowledged only after their handlers ran (see "Flow control" on
    /// [`TracedSubscriber`]).
    ///
    /// MQTT 3.1.1 has no way to announce that bound: the broker's own in-flight limit
    /// decides how many QoS 1 and 2 messages wait here (mosquitto `max_inflight_messages`,
    /// 20 by default; `0` lifts it, and then nothing bounds what the subscriber holds).
    ///
    /// [`TracedSubscriber::shutdown`] processes what waits, so this also bounds how long
    /// a shutdown takes.
    pub fn queue_capacity(self, capacity: usize) -> Self {
        Self {
            inner: self.inner.queue_capacity(capacity),
            client: self.client,
        }
    }

    #[doc = include_str!("../roles/docs/concurrency.md")]
    ///
    /// # Example
    ///
    /// ```no_run
    /// use rumqttc::{MqttOptions, QoS};
    /// use rumqttc_opentelemetry::v4::{HandlerResult, Message, TracedSubscriber};
    ///
    /// async fn store(message: Message) -> HandlerResult {
    ///     // An insert that waits a few milliseconds on the database.
    ///     # let _ = message;
    ///     Ok(())
    /// }
    ///
    /// # async fn run() -> Result<(), rumqttc_opentelemetry::Error> {
    /// let subscriber = TracedSubscriber::builder(MqttOptions::new("collector", "localhost", 1883), 64)
    ///     .concurrency(16)
    ///     .route("sensors/+/reading", QoS::AtLeastOnce, store)?
    ///     .start();
    /// subscriber.subscribed().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn concurrency(self, n: usize) -> Self {
        Self {
            inner: self.inner.concurrency(n),
            client: self.client,
        }
    }

    #[doc = include_str!("../roles/docs/unordered.md")]
    pub fn unordered(self) -> Self {
        Self {
            inner: self.inner.unordered(),
            client: self.client,
        }
    }

    #[doc = include_str!("../roles/docs/handler_span.md")]
    ///
    /// ```no_run
    /// use rumqttc::MqttOptions;
    /// use rumqttc::QoS;
    /// use rumqttc_opentelemetry::v4::{Message, TracedSubscriber};
    ///
    /// # async fn run() -> Result<(), rumqttc_opentelemetry::Error> {
    /// let options = MqttOptions::new("collector", "localhost", 1883);
    /// let subscriber = TracedSubscriber::builder(options, 10)
    ///     .handler_span(true)
    ///     .route("sensors/#", QoS::AtLeastOnce, |message: Message| async move {
    ///         // An event of the `handler` span, so of the message's trace.
    ///         tracing::info!(bytes = message.payload().len(), "stored");
    ///         Ok(())
    ///     })?
    ///     .start();
    /// subscriber.subscribed().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn handler_span(self, on: bool) -> Self {
        Self {
            inner: self.inner.handler_span(on),
            client: self.client,
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
            client: self.client,
        }
    }
}

#[doc = include_str!("../roles/docs/processing.md")]
/// # Dispatch
///
/// MQTT 3.1.1 messages carry no subscription identity, so a message runs the handler of every
/// route whose filter matches its topic (MQTT section 4.7, `$share/{group}/{filter}` matched as
/// `{filter}`), in registration order, and is acknowledged once, after all of them.
///
/// This gives each route exactly the messages MQTT says it matches when the broker sends one copy
/// of a message to a client however many of its subscriptions match, as mosquitto 2.0 does for
/// MQTT 3.1.1 clients (checked with mosquitto 2.0.11: a client subscribed to `home/#`,
/// `home/+/temperature` and `$share/g/home/#` gets one copy each of `home/kitchen/temperature`,
/// `home/kitchen/humidity` and `home`). Limits that MQTT 3.1.1 cannot lift:
///
/// - a broker that sends one copy per matching subscription (which MQTT 3.1.1 allows) makes each
///   matching handler run once per copy;
/// - a shared route also runs on a message that reached this client through an overlapping
///   non-shared route, even when the broker gave the group's copy to another member of the group.
///   Where that matters, do not overlap shared and non-shared routes on one MQTT 3.1.1
///   connection, or use MQTT 5, whose subscription identifiers say which subscription each copy
///   is for.
///
#[doc = include_str!("../roles/docs/ordering.md")]
///
/// With MQTT 3.1.1 the client cannot announce its window: the broker's in-flight limit
/// applies (mosquitto `max_inflight_messages`, 20 by default). More concurrency than that
/// window leaves runs idle; raise the broker's limit with it.
///
#[doc = include_str!("../roles/docs/connection.md")]
/// # Example
///
/// At-least-once processing: a reading is acknowledged only once stored, and a persistent session
/// makes the broker deliver it again after a failure.
///
/// ```no_run
/// use rumqttc::{MqttOptions, QoS};
/// use rumqttc_opentelemetry::v4::{AckPolicy, HandlerResult, Message, TracedSubscriber};
///
/// async fn store(message: Message) -> HandlerResult {
///     // A payload that is no number fails the `process` span with
///     // `error.type = core::num::dec2flt::ParseFloatError`.
///     let celsius: f64 = std::str::from_utf8(message.payload())?.parse()?;
///     println!("{}: {celsius}", message.topic());
///     Ok(())
/// }
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let mut options = MqttOptions::new("collector-1", "localhost", 1883);
/// options.set_clean_session(false);
/// let subscriber = TracedSubscriber::builder(options, 10)
///     .ack_policy(AckPolicy::AfterSuccess)
///     .route("home/+/temperature", QoS::AtLeastOnce, store)?
///     .start();
/// subscriber.subscribed().await?;
/// tokio::signal::ctrl_c().await?;
/// subscriber.shutdown().await;
/// # Ok(())
/// # }
/// ```
pub struct TracedSubscriber {
    client: TracedClient,
    inner: SubscriberCore<V4>,
}

impl std::fmt::Debug for TracedSubscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
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
        let inner = SubscriberBuilderCore::new(options, cap, instrumentation);
        SubscriberBuilder {
            client: TracedClient::from_generic(inner.client().clone()),
            inner,
        }
    }

    /// The traced client of the connection (see [`SubscriberBuilder::client`]).
    pub fn client(&self) -> &TracedClient {
        &self.client
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

    /// Messages received whose handlers have not started yet (they wait for a free run,
    /// or for an earlier message of their topic).
    pub fn queued(&self) -> usize {
        self.inner.queued()
    }

    /// Drains and disconnects: stops taking new messages, runs those already received,
    /// waits for every run and sends the acknowledgements in arrival order, flushes the
    /// publishes of the connection, sends DISCONNECT and waits for the connection task to
    /// end. A message arriving meanwhile runs nothing and is not acknowledged (a
    /// persistent session gets it again); it is recorded as a `process` span with
    /// `error.type = shutting_down` (see "Shutdown" above).
    pub async fn shutdown(self) {
        self.inner.shutdown().await
    }
}
