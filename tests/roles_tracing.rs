//! `tracing` spans opened inside a handler nest under its `process` span when the application
//! uses `tracing-opentelemetry`: the layer takes `opentelemetry::Context::current()` (the
//! process span, while the handler runs) as the parent of a `tracing` span without a `tracing`
//! parent.
//!
//! Handlers run on the runtime's worker threads, so the `tracing` subscriber is installed as the
//! global default. This binary holds this one test only, so nothing else sees it.

mod common;

use std::time::Duration;

use common::telemetry::{Telemetry, destination};
use common::{Broker, unique_client_id};
use opentelemetry::trace::{SpanKind, TracerProvider as _};
use rumqttc::v5::MqttOptions;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc_opentelemetry::v5::{Message, TracedPublisher, TracedSubscriber};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tracing_subscriber::layer::SubscriberExt as _;

const DEADLINE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread")]
async fn tracing_spans_in_a_handler_are_children_of_its_process_span() {
    let broker = Broker::start();
    let telemetry = Telemetry::new();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(telemetry.provider.tracer("application")));
    tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber");

    let (tx, mut rx) = mpsc::unbounded_channel();
    let roles = TracedSubscriber::builder_with_instrumentation(
        MqttOptions::new(unique_client_id("sub"), broker.host(), broker.port()),
        10,
        telemetry.instrumentation(),
    )
    .route(
        "home/+/temperature",
        QoS::AtLeastOnce,
        move |message: Message| {
            let tx = tx.clone();
            async move {
                let celsius = tracing::info_span!("parse_reading").in_scope(|| {
                    String::from_utf8_lossy(message.payload())
                        .parse::<f64>()
                        .unwrap_or(f64::NAN)
                });
                // An await in between: the context is attached again at every poll.
                tokio::task::yield_now().await;
                tracing::info_span!("store_reading", celsius).in_scope(|| {
                    let _ = tx.send(celsius);
                });
                Ok(())
            }
        },
    )
    .expect("valid filter")
    .start();
    roles.subscribed().await.expect("subscribed");

    let publisher = TracedPublisher::with_instrumentation(
        MqttOptions::new(unique_client_id("pub"), broker.host(), broker.port()),
        10,
        telemetry.instrumentation(),
    );
    publisher
        .publish_confirmed("home/kitchen/temperature", QoS::AtLeastOnce, false, "21.5")
        .await
        .expect("publish");
    let celsius = timeout(DEADLINE, rx.recv()).await.expect("in time");
    assert_eq!(celsius, Some(21.5));

    let waited = timeout(DEADLINE, async {
        loop {
            let spans = telemetry.spans();
            let process = spans.iter().find(|span| {
                span.span_kind == SpanKind::Consumer
                    && destination(span).as_deref() == Some("home/kitchen/temperature")
            });
            let inner: Vec<_> = spans
                .iter()
                .filter(|span| span.name == "parse_reading" || span.name == "store_reading")
                .collect();
            if let Some(process) = process
                && inner.len() == 2
            {
                return (
                    process.clone(),
                    inner.into_iter().cloned().collect::<Vec<_>>(),
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let (process, inner) = waited.expect("process and handler spans exported");
    for span in inner {
        assert_eq!(
            span.parent_span_id,
            process.span_context.span_id(),
            "{} nests under the process span",
            span.name
        );
        assert_eq!(
            span.span_context.trace_id(),
            process.span_context.trace_id()
        );
    }
    roles.shutdown().await;
    publisher.shutdown().await;
}
