//! The crate's own `tracing` events (target `rumqttc_opentelemetry`), against mosquitto: nothing
//! on the happy path, `debug` for a rejected trace context (rate-limited), `warn` for a failed
//! publish and a panicking handler. The events are captured by a subscriber installed for the
//! whole test binary and told apart by the `client_id` field of each test's own clients.

mod common;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::broker::mosquitto_tool;
use common::telemetry::Telemetry;
use common::traced::wait_until;
use common::{Broker, unique_client_id};
use rumqttc::v5::MqttOptions;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc_opentelemetry::v5::{Message, TracedPublisher, TracedSubscriber};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context as LayerContext, Layer, SubscriberExt as _};

const TARGET: &str = "rumqttc_opentelemetry";
/// `src/core/logs.rs`: events per kind and window, and the window.
const BURST: usize = 10;
const WINDOW: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
struct Captured {
    level: Level,
    message: String,
    fields: BTreeMap<String, String>,
}

#[derive(Default)]
struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

/// Keeps every event of the crate's target.
struct Capture(Arc<Mutex<Vec<Captured>>>);

impl<S: Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &Event<'_>, _: LayerContext<'_, S>) {
        if event.metadata().target() != TARGET {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut fields = fields.0;
        let message = fields.remove("message").unwrap_or_default();
        self.0.lock().unwrap().push(Captured {
            level: *event.metadata().level(),
            message,
            fields,
        });
    }
}

/// The events of the client `client_id`, captured by the binary's one subscriber.
fn events_of(client_id: &str) -> Vec<Captured> {
    captured()
        .lock()
        .unwrap()
        .iter()
        .filter(|event| event.fields.get("client_id").map(String::as_str) == Some(client_id))
        .cloned()
        .collect()
}

fn captured() -> &'static Arc<Mutex<Vec<Captured>>> {
    static CAPTURED: OnceLock<Arc<Mutex<Vec<Captured>>>> = OnceLock::new();
    CAPTURED.get_or_init(|| {
        let events = Arc::new(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry().with(Capture(Arc::clone(&events)));
        tracing::subscriber::set_global_default(subscriber).expect("the binary's only subscriber");
        events
    })
}

/// A subscriber on `logs/#` whose handler counts messages and panics on `logs/panic`.
async fn subscriber(
    broker: &Broker,
    telemetry: &Telemetry,
) -> (TracedSubscriber, String, Arc<AtomicUsize>) {
    let client_id = unique_client_id("logs-sub");
    let handled = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&handled);
    let handler = move |message: Message| {
        let count = Arc::clone(&count);
        async move {
            count.fetch_add(1, Ordering::SeqCst);
            assert_ne!(message.topic(), "logs/panic", "the handler gives up");
            Ok(())
        }
    };
    let subscriber = TracedSubscriber::builder_with_instrumentation(
        MqttOptions::new(client_id.clone(), broker.host(), broker.port()),
        10,
        telemetry.instrumentation(),
    )
    .route("logs/#", QoS::AtLeastOnce, handler)
    .expect("valid filter")
    .start();
    subscriber.subscribed().await.expect("subscribed");
    (subscriber, client_id, handled)
}

/// A publisher with a unique client id, which it returns too.
fn publisher(broker: &Broker, telemetry: &Telemetry) -> (TracedPublisher, String) {
    let client_id = unique_client_id("logs-pub");
    let publisher = TracedPublisher::with_instrumentation(
        MqttOptions::new(client_id.clone(), broker.host(), broker.port()),
        10,
        telemetry.instrumentation(),
    );
    (publisher, client_id)
}

/// The one event of `client_id`, once logged.
async fn only_event_of(client_id: &str) -> Captured {
    wait_until("an event logged", || !events_of(client_id).is_empty()).await;
    let events = events_of(client_id);
    assert_eq!(events.len(), 1, "{events:?}");
    events.into_iter().next().expect("one event")
}

/// A well-formed exchange logs nothing at any level: publishes acknowledged, messages received
/// with a valid context and handled.
#[tokio::test(flavor = "multi_thread")]
async fn the_happy_path_logs_nothing() {
    captured();
    let broker = Broker::start();
    let telemetry = Telemetry::new();
    let (_subscriber, sub_id, handled) = subscriber(&broker, &telemetry).await;
    let (publisher, pub_id) = publisher(&broker, &telemetry);
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        publisher
            .publish_confirmed("logs/ok", qos, false, "x")
            .await
            .expect("published");
    }
    wait_until("every message handled", || {
        handled.load(Ordering::SeqCst) == 3
    })
    .await;
    assert!(events_of(&pub_id).is_empty(), "{:?}", events_of(&pub_id));
    assert!(events_of(&sub_id).is_empty(), "{:?}", events_of(&sub_id));
}

/// W3C Trace Context section 4.3 (a `traceparent` that cannot be parsed is ignored and a new
/// trace starts): each such message gets one `debug` event naming the topic and the reason, at
/// most `BURST` per window, so a flood of them cannot flood the logs.
#[tokio::test(flavor = "multi_thread")]
async fn a_rejected_trace_context_is_logged_at_debug_and_rate_limited() {
    captured();
    let broker = Broker::start();
    let telemetry = Telemetry::new();
    let (_subscriber, sub_id, handled) = subscriber(&broker, &telemetry).await;
    const MESSAGES: usize = 30;
    let started = Instant::now();
    // One mosquitto_pub sending a line per message, each with a malformed traceparent.
    let mut child = Command::new(mosquitto_tool("mosquitto_pub"))
        .args(["-h", broker.host(), "-p", &broker.port().to_string()])
        .args(["-V", "5", "-q", "1", "-t", "logs/flood", "-l"])
        .args(["-D", "publish", "user-property", "traceparent", "00-zz-bad"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub runs");
    let mut stdin = child.stdin.take().expect("stdin");
    for n in 0..MESSAGES {
        writeln!(stdin, "reading {n}").expect("written");
    }
    drop(stdin);
    assert!(child.wait().expect("mosquitto_pub ends").success());
    wait_until("every message handled", || {
        handled.load(Ordering::SeqCst) == MESSAGES
    })
    .await;
    let elapsed = started.elapsed();
    let events = events_of(&sub_id);
    assert!(!events.is_empty(), "a rejected context is logged");
    for event in &events {
        assert_eq!(event.level, Level::DEBUG, "{event:?}");
        assert!(
            event.message.contains("rejected the trace context"),
            "{event:?}"
        );
        assert_eq!(
            event.fields.get("topic").map(String::as_str),
            Some("logs/flood")
        );
        assert!(event.fields.contains_key("reason"), "{event:?}");
    }
    // Every window admits `BURST`; the run normally fits in one.
    let windows = (elapsed.as_secs_f64() / WINDOW.as_secs_f64())
        .ceil()
        .max(1.0) as usize;
    assert!(
        events.len() >= BURST.min(MESSAGES) && events.len() <= BURST * windows,
        "{} events in {elapsed:?}",
        events.len()
    );
}

/// A handler that panics is logged at `warn` with its route and the panic's message (the
/// process span records it as `error.type` = `panic`).
#[tokio::test(flavor = "multi_thread")]
async fn a_panicking_handler_is_logged_at_warn() {
    captured();
    let broker = Broker::start();
    let telemetry = Telemetry::new();
    let (_subscriber, sub_id, handled) = subscriber(&broker, &telemetry).await;
    let (publisher, _) = publisher(&broker, &telemetry);
    publisher
        .publish_confirmed("logs/panic", QoS::AtLeastOnce, false, "x")
        .await
        .expect("published");
    let event = only_event_of(&sub_id).await;
    assert_eq!(handled.load(Ordering::SeqCst), 1);
    assert_eq!(event.level, Level::WARN);
    assert_eq!(event.message, "a message handler panicked");
    assert_eq!(
        event.fields.get("route").map(String::as_str),
        Some("logs/#")
    );
    assert!(
        event.fields["panic"].contains("the handler gives up"),
        "{event:?}"
    );
}

/// MQTT 5 section 3.4.2.1: a PUBACK with reason 0x87 (Not authorized) fails the publish; it is
/// logged at `warn` with the `error.type` its span records and its packet id.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_publish_is_logged_at_warn() {
    captured();
    let broker = Broker::builder().acl(&["denied/#"]).start();
    let telemetry = Telemetry::new();
    let (publisher, pub_id) = publisher(&broker, &telemetry);
    let outcome = publisher
        .publish_confirmed("denied/x", QoS::AtLeastOnce, false, "x")
        .await;
    assert!(outcome.is_err(), "{outcome:?}");
    let event = only_event_of(&pub_id).await;
    assert_eq!(event.level, Level::WARN);
    assert_eq!(event.message, "a publish failed");
    let field = |name: &str| event.fields.get(name).map(String::as_str);
    assert_eq!(field("error.type"), Some("not_authorized"));
    assert_eq!(field("packet_id"), Some("1"));
}
