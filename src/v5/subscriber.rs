//! [`TracedSubscriber`] and its [`SubscriberBuilder`]: a MQTT 5 subscriber that runs an async
//! handler per route, each run inside a `process` span.

use rumqttc::v5::MqttOptions;
use rumqttc::v5::mqttbytes::QoS;

use super::client::TracedClient;
use super::message::Message;
use super::protocol::V5;
use super::publisher::TracedPublisher;
use super::{AckPolicy, HandlerOutput};
use crate::error::Error;
use crate::instrumentation::Instrumentation;
use crate::roles::subscriber::{SubscriberBuilderCore, SubscriberCore};

#[doc = include_str!("../roles/docs/builder.md")]
/// # Example
///
/// ```
/// use rumqttc::v5::MqttOptions;
/// use rumqttc::v5::mqttbytes::QoS;
/// use rumqttc_opentelemetry::v5::{AckPolicy, Message, TracedSubscriber};
///
/// // A handler that cannot fail returns nothing.
/// async fn log(message: Message) {
///     println!("{} via {}", message.topic(), message.route());
/// }
///
/// let builder = TracedSubscriber::builder(MqttOptions::new("gw-1", "localhost", 1883), 10)
///     .ack_policy(AckPolicy::AfterSuccess)
///     .route("home/+/temperature", QoS::AtLeastOnce, log)?
///     .route("$share/loggers/home/#", QoS::AtLeastOnce, log)?;
/// assert_eq!(
///     builder.matching_routes("home/kitchen/temperature"),
///     ["home/+/temperature", "$share/loggers/home/#"]
/// );
/// assert_eq!(builder.matching_routes("home"), ["$share/loggers/home/#"]);
/// # Ok::<(), rumqttc_opentelemetry::Error>(())
/// ```
pub struct SubscriberBuilder {
    client: TracedClient,
    inner: SubscriberBuilderCore<V5>,
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
    /// use rumqttc::v5::{MqttOptions, mqttbytes::QoS};
    /// use rumqttc_opentelemetry::v5::{HandlerResult, Message, TracedSubscriber};
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
    /// use rumqttc::v5::{MqttOptions, mqttbytes::QoS};
    /// use rumqttc_opentelemetry::v5::{Message, TracedSubscriber};
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
    /// MQTT 5 announces that bound: the subscriber's CONNECT carries a Receive Maximum of
    /// `concurrency + queue_capacity` (at most 65,535) unless the options already set one
    /// (`MqttOptions::set_receive_maximum`), so the broker never has more QoS 1 and 2
    /// messages unacknowledged at this client (MQTT 5 section 3.3.4, [MQTT-3.3.4-9]).
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
    /// use rumqttc::v5::MqttOptions;
    /// use rumqttc::v5::mqttbytes::QoS;
    /// use rumqttc_opentelemetry::v5::{HandlerResult, Message, TracedSubscriber};
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
    /// use rumqttc::v5::MqttOptions;
    /// use rumqttc::v5::mqttbytes::QoS;
    /// use rumqttc_opentelemetry::v5::{Message, TracedSubscriber};
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
    ///
    /// Unless the options set a Receive Maximum, the CONNECT announces one of
    /// `concurrency + queue_capacity` (at most 65,535; see "Flow control" on
    /// [`TracedSubscriber`]).
    pub fn start(mut self) -> TracedSubscriber {
        let window = self.inner.receive_window();
        let options = &mut self.inner.eventloop_mut().options;
        if options.receive_maximum().is_none() {
            options.set_receive_maximum(Some(window));
        }
        TracedSubscriber {
            inner: self.inner.start(),
            client: self.client,
        }
    }
}

#[doc = include_str!("../roles/docs/processing.md")]
/// # Dispatch
///
/// Every route is subscribed with a subscription identifier of its own (MQTT 5 section
/// 3.8.2.1.2), and each copy of a message runs exactly the routes whose identifiers it carries
/// (and whose filter matches its topic), in registration order; it is acknowledged once, after
/// all of them. Where subscriptions overlap,
/// a broker either sends one copy per matching subscription, each with its identifier (mosquitto
/// 2.0 does, shared subscriptions included), or one copy with all their identifiers: either way
/// each route runs once for each message it matches, and a shared route
/// (`$share/{group}/{filter}`) runs only on the copies the broker gives this client as a member of
/// the group. A copy that carries none of the routes' identifiers (it came from a subscription
/// made through the client directly) runs no handler. Messages a persistent session kept from
/// before the routes changed carry the identifiers of the old subscriptions: they run the route
/// that now has the identifier only if its filter matches the topic.
///
/// When the broker's CONNACK says it has no subscription identifiers, the routes are subscribed
/// without them and each message runs every route whose filter matches its topic, as with
/// MQTT 3.1.1 (see `v4::TracedSubscriber`).
///
#[doc = include_str!("../roles/docs/ordering.md")]
///
/// With MQTT 5 the subscriber announces its window as the Receive Maximum of its CONNECT
/// (`concurrency + queue_capacity`, at most 65,535, unless the options set one; MQTT 5
/// section 3.1.2.11.3), which the broker must respect [MQTT-3.3.4-9]. So it holds at most
/// that many QoS 1 and 2 messages, and a window set lower than `concurrency` leaves runs
/// idle.
///
#[doc = include_str!("../roles/docs/connection.md")]
/// # Example
///
/// A gateway: one connection (one client id) receives the readings and forwards each to the
/// cloud topic. The forwarding publish is a child of the handler's `process` span, so the trace
/// goes sensor -> gateway -> cloud consumer.
///
/// ```no_run
/// use rumqttc::v5::MqttOptions;
/// use rumqttc::v5::mqttbytes::QoS;
/// use rumqttc_opentelemetry::v5::TracedSubscriber;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let builder = TracedSubscriber::builder(MqttOptions::new("gateway-1", "localhost", 1883), 10);
/// let upstream = builder.client().clone();
/// let subscriber = builder
///     .route("home/+/temperature", QoS::AtLeastOnce, move |message| {
///         let upstream = upstream.clone();
///         async move {
///             let topic = format!("cloud/{}", message.topic());
///             upstream
///                 .publish(topic, QoS::AtLeastOnce, false, message.payload().clone())
///                 .await?;
///             Ok(())
///         }
///     })?
///     .start();
/// subscriber.subscribed().await?;
/// tokio::signal::ctrl_c().await?;
/// subscriber.shutdown().await;
/// # Ok(())
/// # }
/// ```
pub struct TracedSubscriber {
    client: TracedClient,
    inner: SubscriberCore<V5>,
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
