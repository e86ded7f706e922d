//! `tracing` spans opened inside a handler nest under its `process` span when the application
//! uses `tracing-opentelemetry`: the layer takes `opentelemetry::Context::current()` (the
//! process span, while the handler runs) as the parent of a `tracing` span without a `tracing`
//! parent.
//!
//! With `handler_span(true)` the handler itself runs in a `tracing` span, a child of `process`,
//! so that a `tracing` event outside the application's own spans lands in the trace too.
//!
//! Handlers run on the runtime's worker threads, so the `tracing` subscriber is installed as the
//! global default, once for this binary, over one telemetry pipeline; each test has topics of
//! its own.

mod common;

use std::sync::OnceLock;
use std::time::Duration;

use common::telemetry::{Telemetry, destination, string_attribute};
use common::{Broker, unique_client_id};
use opentelemetry::trace::{SpanKind, TracerProvider as _};
use opentelemetry_sdk::trace::SpanData;
use rumqttc::v5::MqttOptions;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc_opentelemetry::v5::{HandlerResult, Message, TracedPublisher, TracedSubscriber};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tracing_subscriber::layer::SubscriberExt as _;

const DEADLINE: Duration = Duration::from_secs(30);

/// The binary's one telemetry pipeline, under the global `tracing` subscriber.
fn telemetry() -> &'static Telemetry {
    static TELEMETRY: OnceLock<Telemetry> = OnceLock::new();
    TELEMETRY.get_or_init(|| {
        let telemetry = Telemetry::new();
        let subscriber = tracing_subscriber::registry().with(
            tracing_opentelemetry::layer().with_tracer(telemetry.provider.tracer("application")),
        );
        tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber");
        telemetry
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn tracing_spans_in_a_handler_are_children_of_its_process_span() {
    let (readings, mut read) = mpsc::unbounded_channel();
    let handler = move |message: Message, done: mpsc::UnboundedSender<()>| {
        let readings = readings.clone();
        async move {
            let celsius = tracing::info_span!("parse_reading").in_scope(|| {
                String::from_utf8_lossy(message.payload())
                    .parse::<f64>()
                    .unwrap_or(f64::NAN)
            });
            // An await in between: the context is attached again at every poll.
            tokio::task::yield_now().await;
            tracing::info_span!("store_reading", celsius).in_scope(|| {
                let _ = readings.send(celsius);
            });
            let _ = done.send(());
            Ok(())
        }
    };
    handle_one("home/kitchen/temperature", "21.5", false, handler).await;
    assert_eq!(read.recv().await, Some(21.5));

    for name in ["parse_reading", "store_reading"] {
        let (process, inner) = process_and("home/kitchen/temperature", name).await;
        assert_eq!(inner.len(), 1, "{name}: {inner:#?}");
        assert_eq!(
            inner[0].parent_span_id,
            process.span_context.span_id(),
            "{name} nests under the process span"
        );
    }
}

/// Waits until the process span of the message on `topic` and every span named `name` of its
/// trace are exported.
async fn process_and(topic: &str, name: &str) -> (SpanData, Vec<SpanData>) {
    let telemetry = telemetry();
    timeout(DEADLINE, async {
        loop {
            let spans = telemetry.spans();
            if let Some(process) = spans.iter().find(|span| {
                span.span_kind == SpanKind::Consumer && destination(span).as_deref() == Some(topic)
            }) {
                let trace = process.span_context.trace_id();
                let named: Vec<SpanData> = spans
                    .iter()
                    .filter(|span| span.name == name && span.span_context.trace_id() == trace)
                    .cloned()
                    .collect();
                // The handler's span ends before the process span, so it is exported first.
                return (process.clone(), named);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the process span exported")
}

/// Runs a subscriber on `topic` with `handler` and `handler_span` set to `on`, publishes one
/// message (`payload`) to it and waits until the handler says it is done.
async fn handle_one<F, Fut>(topic: &'static str, payload: &'static str, on: bool, handler: F)
where
    F: Fn(Message, mpsc::UnboundedSender<()>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    let broker = Broker::start();
    let telemetry = telemetry();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let roles = TracedSubscriber::builder_with_instrumentation(
        MqttOptions::new(unique_client_id("sub"), broker.host(), broker.port()),
        10,
        telemetry.instrumentation(),
    )
    .handler_span(on)
    .route(topic, QoS::AtLeastOnce, move |message: Message| {
        handler(message, tx.clone())
    })
    .expect("valid filter")
    .start();
    roles.subscribed().await.expect("subscribed");
    let publisher = TracedPublisher::with_instrumentation(
        MqttOptions::new(unique_client_id("pub"), broker.host(), broker.port()),
        10,
        telemetry.instrumentation(),
    );
    publisher
        .publish_confirmed(topic, QoS::AtLeastOnce, false, payload)
        .await
        .expect("publish");
    timeout(DEADLINE, rx.recv()).await.expect("handled in time");
    roles.shutdown().await;
    publisher.shutdown().await;
}

/// A handler that logs `stored` outside any span of its own.
async fn log_stored(message: Message, done: mpsc::UnboundedSender<()>) -> HandlerResult {
    tokio::task::yield_now().await;
    tracing::info!(bytes = message.payload().len(), "stored");
    let _ = done.send(());
    Ok(())
}

/// Issue "handler logs in the trace": with `handler_span(true)`, a `tracing::info!` in a
/// handler is an event of the `handler` span, a child of the `process` span of its message.
#[tokio::test(flavor = "multi_thread")]
async fn with_handler_span_events_in_a_handler_land_in_the_trace() {
    handle_one("office/handler_span", "x", true, log_stored).await;
    let (process, handlers) = process_and("office/handler_span", "handler").await;
    assert_eq!(handlers.len(), 1, "{handlers:#?}");
    let handler = &handlers[0];
    assert_eq!(handler.parent_span_id, process.span_context.span_id());
    assert_eq!(
        string_attribute(handler, "route").as_deref(),
        Some("office/handler_span")
    );
    let events: Vec<&str> = handler
        .events
        .iter()
        .map(|event| event.name.as_ref())
        .collect();
    assert_eq!(events, ["stored"]);
}

/// Off by default: no `handler` span, and the process span does not take the event either
/// (tracing-opentelemetry records events on `tracing` spans only).
#[tokio::test(flavor = "multi_thread")]
async fn without_handler_span_no_span_is_added() {
    handle_one("office/plain", "x", false, log_stored).await;
    let (process, handlers) = process_and("office/plain", "handler").await;
    assert!(handlers.is_empty(), "{handlers:#?}");
    assert!(
        process.events.iter().all(|event| event.name != "stored"),
        "{process:#?}"
    );
}
