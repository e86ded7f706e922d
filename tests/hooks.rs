//! Hooks at span start and end (`InstrumentationBuilder::on_start`, `on_end`,
//! `span_attributes`) and untraced topics (`InstrumentationBuilder::untraced`), on publish,
//! receive and process spans, against mosquitto. Every exported span is checked for repeated
//! attribute keys (OTLP: attribute keys are unique within a span).

mod common;
#[path = "common/metric_reader.rs"]
mod metric_reader;

use common::telemetry::{Telemetry, assert_unique_attribute_keys, attribute};
use common::traced::wait_until;
use common::{Broker, unique_client_id};
use metric_reader::MetricReader;
use opentelemetry::trace::{Span as _, SpanKind, TraceContextExt, Tracer, TracerProvider as _};
use opentelemetry::{Context, KeyValue, Value};
use rumqttc::v5::MqttOptions;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc_opentelemetry::hooks::{EndContext, StartContext, topic_level};
use rumqttc_opentelemetry::semconv::metric::{
    MESSAGING_CLIENT_CONSUMED_MESSAGES, MESSAGING_CLIENT_SENT_MESSAGES,
};
use rumqttc_opentelemetry::semconv::{MESSAGING_CLIENT_ID, Operation};
use rumqttc_opentelemetry::v5::{Message, TracedPublisher, TracedSubscriber};
use rumqttc_opentelemetry::{Instrumentation, InstrumentationBuilder};
use std::sync::{Arc, Mutex};

/// Starts a subscriber on `home/#` and `heartbeat/#` with `instrumentation`; every handler run
/// is counted, and the one for `home/fail` fails.
/// What a handler saw of a message: its topic and the span id of the context it was created in.
type Handled = Arc<Mutex<Vec<(String, Option<opentelemetry::trace::SpanId>)>>>;

async fn subscriber(
    broker: &Broker,
    instrumentation: Instrumentation,
) -> (TracedSubscriber, Handled) {
    let handled = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&handled);
    let handler = move |message: Message| {
        let log = Arc::clone(&log);
        async move {
            let creation = message
                .delivery()
                .creation_context()
                .map(|cx| cx.span().span_context().span_id());
            log.lock()
                .unwrap()
                .push((message.topic().to_owned(), creation));
            if message.topic() == "home/fail" {
                return Err(std::io::Error::other("refused").into());
            }
            Ok(())
        }
    };
    let subscriber = TracedSubscriber::builder_with_instrumentation(
        MqttOptions::new(unique_client_id("hooks-sub"), broker.host(), broker.port()),
        10,
        instrumentation,
    )
    .route("home/#", QoS::AtLeastOnce, handler.clone())
    .expect("valid filter")
    .route("heartbeat/#", QoS::AtLeastOnce, handler)
    .expect("valid filter")
    .start();
    subscriber.subscribed().await.expect("subscribed");
    (subscriber, handled)
}

fn publisher(broker: &Broker, instrumentation: Instrumentation) -> TracedPublisher {
    TracedPublisher::with_instrumentation(
        MqttOptions::new(unique_client_id("hooks-pub"), broker.host(), broker.port()),
        10,
        instrumentation,
    )
}

fn hooked(builder: InstrumentationBuilder) -> Instrumentation {
    builder
        .on_start(|start: &mut StartContext<'_>| {
            if let Some(device) = topic_level(start.facts().topic, 1) {
                start.add_attribute(KeyValue::new("device.id", device.to_owned()));
            }
            // Replaces the crate's own attribute of that key.
            start.add_attribute(KeyValue::new(MESSAGING_CLIENT_ID, "hooked"));
            if start.operation() == Operation::Receive {
                start.set_name(format!("got {}", start.facts().destination()));
            }
        })
        .span_attributes(|operation, _facts, attributes| {
            attributes.push(KeyValue::new("hook.operation", operation.name()));
        })
        .on_end(|end: &mut EndContext<'_>| {
            let outcome = match end.outcome() {
                Ok(()) => "ok",
                Err(error_type) => error_type,
            };
            end.add_event("hook.end", vec![KeyValue::new("outcome", outcome)]);
        })
        .build()
}

fn events(span: &opentelemetry_sdk::trace::SpanData, name: &str) -> Vec<String> {
    span.events
        .iter()
        .filter(|event| event.name == name)
        .flat_map(|event| event.attributes.iter().map(|kv| kv.value.to_string()))
        .collect()
}

/// A start hook's attributes are on the span once, replacing the crate's of the same key, and
/// its name replaces the default; an end hook sees each operation's outcome.
#[tokio::test(flavor = "multi_thread")]
async fn hooks_add_attributes_rename_spans_and_see_outcomes() {
    let broker = Broker::start();
    let telemetry = Telemetry::new();
    let (_subscriber, handled) = subscriber(&broker, hooked(telemetry.builder())).await;
    let publisher = publisher(&broker, hooked(telemetry.builder()));
    for topic in ["home/kitchen", "home/fail"] {
        publisher
            .publish_confirmed(topic, QoS::AtLeastOnce, false, "x")
            .await
            .expect("published");
    }
    wait_until("both handled", || handled.lock().unwrap().len() == 2).await;
    wait_until("every span ended", || telemetry.spans().len() == 6).await;
    let spans = telemetry.spans();
    assert_unique_attribute_keys(&spans);
    for span in &spans {
        assert_eq!(attribute(span, MESSAGING_CLIENT_ID), Some(&"hooked".into()));
        assert_eq!(
            attribute(span, "device.id"),
            Some(&Value::from(
                if attribute(span, "messaging.destination.name") == Some(&"home/fail".into()) {
                    "fail"
                } else {
                    "kitchen"
                }
            ))
        );
    }
    let receives = telemetry.spans_of(SpanKind::Client);
    assert_eq!(receives.len(), 2);
    assert!(receives.iter().all(|span| span.name == "got home/#"));
    assert!(
        receives
            .iter()
            .all(|span| attribute(span, "hook.operation") == Some(&"receive".into()))
    );
    let processes = telemetry.spans_of(SpanKind::Consumer);
    let outcomes: Vec<Vec<String>> = processes
        .iter()
        .map(|span| events(span, "hook.end"))
        .collect();
    assert!(outcomes.contains(&vec!["ok".to_owned()]), "{outcomes:?}");
    assert!(
        outcomes.contains(&vec!["std::io::error::Error".to_owned()]),
        "the failed run's outcome is its error.type: {outcomes:?}"
    );
    for publish in telemetry.spans_of(SpanKind::Producer) {
        assert_eq!(events(&publish, "hook.end"), ["ok"]);
    }
}

/// Untraced topics record no span, carry the context current where they were published
/// unchanged, and are still counted in the messaging metrics.
#[tokio::test(flavor = "multi_thread")]
async fn untraced_topics_record_no_span_but_count_and_keep_the_context() {
    let broker = Broker::start();
    let telemetry = Telemetry::new();
    let reader = MetricReader::new();
    let build = || {
        telemetry
            .builder()
            .meter_provider(&reader.provider)
            .untraced("heartbeat/#")
            .expect("valid filter")
            .untraced("$SYS/#")
            .expect("valid filter")
            .build()
    };
    let (_subscriber, handled) = subscriber(&broker, build()).await;
    let publisher = publisher(&broker, build());
    let application = telemetry.provider.tracer("application");
    let parent = application.start("tick");
    let parent_context = parent.span_context().clone();
    let cx = Context::current_with_span(parent);
    {
        let _attached = cx.clone().attach();
        publisher
            .publish_confirmed("heartbeat/1", QoS::AtLeastOnce, false, "beat")
            .await
            .expect("published");
        publisher
            .publish_confirmed("home/hall", QoS::AtLeastOnce, false, "21")
            .await
            .expect("published");
    }
    cx.span().end();
    wait_until("both handled", || handled.lock().unwrap().len() == 2).await;
    // tick + (publish, receive, process) of home/hall only.
    wait_until("every span ended", || telemetry.spans().len() == 4).await;
    let spans = telemetry.spans();
    assert_unique_attribute_keys(&spans);
    assert!(
        spans.iter().all(|span| !span.name.contains("heartbeat")),
        "{:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    // The heartbeat carried the context current where it was published: the `tick` span.
    let heartbeat = handled
        .lock()
        .unwrap()
        .iter()
        .find(|(topic, _)| topic == "heartbeat/1")
        .and_then(|(_, creation)| *creation);
    assert_eq!(heartbeat, Some(parent_context.span_id()));
    let processes = telemetry.spans_of(SpanKind::Consumer);
    assert_eq!(processes.len(), 1);
    assert_eq!(
        processes[0].span_context.trace_id(),
        parent_context.trace_id()
    );
    wait_until("metrics exported", || {
        reader.total(MESSAGING_CLIENT_CONSUMED_MESSAGES) >= 2.0
    })
    .await;
    assert_eq!(reader.total(MESSAGING_CLIENT_SENT_MESSAGES), 2.0);
    assert_eq!(reader.total(MESSAGING_CLIENT_CONSUMED_MESSAGES), 2.0);
}
