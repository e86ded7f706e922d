//! The default instrumentation follows the application's global text-map propagator: with a
//! propagator of its own installed (here a small B3-like one with a single `x-trace` field), the
//! traced clients write and read that field through the same carriers (MQTT 5 user properties,
//! the MQTT 3.1.1 envelope) and write no `traceparent`; with W3C installed, or nothing, the
//! built-in strict W3C propagator is used. `GlobalPropagator` hands the global one to
//! `InstrumentationBuilder::propagator` in one line.
//!
//! The global propagator is process-wide: each test of this binary holds a lock while it runs.
//! Messages are published retained before anyone subscribes, so nothing races a subscription.

mod common;

use std::time::Duration;

use common::telemetry::Telemetry;
use common::{Broker, unique_client_id};
use opentelemetry::propagation::text_map_propagator::FieldIter;
use opentelemetry::propagation::{
    Extractor, Injector, TextMapCompositePropagator, TextMapPropagator,
};
use opentelemetry::trace::noop::NoopTextMapPropagator;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{Context, global};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use rumqttc_opentelemetry::propagation::{GlobalPropagator, envelope};
use rumqttc_opentelemetry::{Instrumentation, V4Propagation, v4, v5};
use tokio::time::timeout;

static GLOBAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const DEADLINE: Duration = Duration::from_secs(20);

/// A propagator with one field, `x-trace: {trace id}:{span id}` in hex, always sampled.
#[derive(Debug)]
struct XTrace {
    fields: Vec<String>,
}

impl XTrace {
    fn new() -> Self {
        Self {
            fields: vec!["x-trace".to_owned()],
        }
    }
}

impl TextMapPropagator for XTrace {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        let span = cx.span();
        let sc = span.span_context();
        if sc.is_valid() {
            injector.set("x-trace", format!("{}:{}", sc.trace_id(), sc.span_id()));
        }
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        let Some((trace, span)) = extractor.get("x-trace").and_then(|v| v.split_once(':')) else {
            return cx.clone();
        };
        let (Ok(trace), Ok(span)) = (TraceId::from_hex(trace), SpanId::from_hex(span)) else {
            return cx.clone();
        };
        cx.with_remote_span_context(SpanContext::new(
            trace,
            span,
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        ))
    }

    fn fields(&self) -> FieldIter<'_> {
        FieldIter::new(&self.fields)
    }
}

/// What arrived: the propagation field names on the wire, and the producer's trace id the
/// receiver extracted (if any), next to the trace id of the publish span.
#[derive(Debug)]
struct Arrived {
    names: Vec<String>,
    extracted: Option<TraceId>,
    published: TraceId,
}

/// Publishes one retained MQTT 5 message with `publisher`, then receives it with a traced
/// client of `receiver`.
async fn round_trip_v5(
    telemetry: &Telemetry,
    publisher: Instrumentation,
    receiver: Instrumentation,
) -> Arrived {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::{Event, MqttOptions};
    let broker = Broker::start();
    let options = |prefix| MqttOptions::new(unique_client_id(prefix), broker.host(), broker.port());
    let (client, mut eventloop) =
        v5::TracedClient::with_instrumentation(options("pub"), 10, publisher);
    let driver = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    client
        .publish_confirmed("t/1", QoS::AtLeastOnce, true, "x", None)
        .await
        .expect("published");
    driver.abort();
    let (traced, mut traced_loop) =
        v5::TracedClient::with_instrumentation(options("sub"), 10, receiver);
    traced
        .subscribe("t/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let (publish, delivery) = timeout(DEADLINE, async {
        loop {
            match traced_loop.poll_traced().await {
                Ok((Event::Incoming(Packet::Publish(publish)), Some(delivery))) => {
                    return (publish, delivery);
                }
                Ok(_) => {}
                Err(error) => panic!("subscriber: {error}"),
            }
        }
    })
    .await
    .expect("the retained message arrives");
    let names = publish
        .properties
        .map(|p| {
            p.user_properties
                .into_iter()
                .map(|(name, _)| name)
                .collect()
        })
        .unwrap_or_default();
    Arrived {
        names,
        extracted: delivery
            .creation_context()
            .map(|cx| cx.span().span_context().trace_id()),
        published: telemetry.spans_of(SpanKind::Producer)[0]
            .span_context
            .trace_id(),
    }
}

/// A propagator of the application's own (no W3C fields): the default instrumentation writes
/// and reads its field, and no `traceparent`.
#[tokio::test]
async fn an_application_propagator_is_followed_by_default() {
    let _global = GLOBAL.lock().await;
    global::set_text_map_propagator(XTrace::new());
    let telemetry = Telemetry::new();
    let arrived = round_trip_v5(
        &telemetry,
        telemetry.instrumentation(),
        telemetry.instrumentation(),
    )
    .await;
    assert_eq!(arrived.names, ["x-trace"]);
    assert_eq!(arrived.extracted, Some(arrived.published));
}

/// W3C installed globally (trace context and baggage), or no propagator at all: the built-in
/// strict W3C propagator writes `traceparent` (and the receiver continues the trace).
#[tokio::test]
async fn w3c_or_nothing_keeps_the_built_in_propagator() {
    let _global = GLOBAL.lock().await;
    for composite in [true, false] {
        if composite {
            global::set_text_map_propagator(TextMapCompositePropagator::new(vec![
                Box::new(TraceContextPropagator::new()),
                Box::new(BaggagePropagator::new()),
            ]));
        } else {
            global::set_text_map_propagator(NoopTextMapPropagator::new());
        }
        let telemetry = Telemetry::new();
        let arrived = round_trip_v5(
            &telemetry,
            telemetry.instrumentation(),
            telemetry.instrumentation(),
        )
        .await;
        assert_eq!(arrived.names, ["traceparent"], "composite: {composite}");
        assert_eq!(arrived.extracted, Some(arrived.published));
    }
}

/// `GlobalPropagator` is the global propagator in one line, looked up at every use.
#[tokio::test]
async fn the_global_propagator_in_one_line() {
    let _global = GLOBAL.lock().await;
    global::set_text_map_propagator(NoopTextMapPropagator::new());
    let telemetry = Telemetry::new();
    let explicit = || {
        telemetry
            .builder()
            .propagator(GlobalPropagator::new())
            .build()
    };
    let (publisher, receiver) = (explicit(), explicit());
    // Installed after the instrumentations were built: still used.
    global::set_text_map_propagator(XTrace::new());
    let arrived = round_trip_v5(&telemetry, publisher, receiver).await;
    assert_eq!(arrived.names, ["x-trace"]);
    assert_eq!(arrived.extracted, Some(arrived.published));
}

/// MQTT 3.1.1 with the envelope: the application's propagator's field is an envelope header.
#[tokio::test]
async fn the_envelope_carries_an_application_propagator_too() {
    use rumqttc::{Event, MqttOptions, Packet, QoS};
    let _global = GLOBAL.lock().await;
    global::set_text_map_propagator(XTrace::new());
    let telemetry = Telemetry::new();
    let broker = Broker::start();
    let options = |prefix| MqttOptions::new(unique_client_id(prefix), broker.host(), broker.port());
    let enveloped = || {
        telemetry
            .builder()
            .v4_propagation(V4Propagation::Envelope)
            .build()
    };
    let (client, mut eventloop) =
        v4::TracedClient::with_instrumentation(options("pub"), 10, enveloped());
    let driver = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    client
        .publish_confirmed("t/1", QoS::AtLeastOnce, true, "x")
        .await
        .expect("published");
    driver.abort();
    // The raw bytes, as a plain MQTT 3.1.1 client receives them.
    let (plain, mut plain_loop) = rumqttc::AsyncClient::new(options("plain"), 10);
    plain
        .subscribe("t/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let payload = timeout(DEADLINE, async {
        loop {
            match plain_loop.poll().await {
                Ok(Event::Incoming(Packet::Publish(publish))) => return publish.payload,
                Ok(_) => {}
                Err(error) => panic!("plain subscriber: {error}"),
            }
        }
    })
    .await
    .expect("the retained message arrives");
    let decoded = envelope::decode(&payload)
        .expect("a valid envelope")
        .expect("an envelope");
    let names: Vec<&str> = decoded.headers().map(|(name, _)| name).collect();
    assert_eq!(names, ["x-trace"]);
    assert_eq!(decoded.payload().as_ref(), b"x");
    // And a traced receiver continues the trace from it.
    let (traced, mut traced_loop) =
        v4::TracedClient::with_instrumentation(options("sub"), 10, enveloped());
    traced
        .subscribe("t/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let delivery = timeout(DEADLINE, async {
        loop {
            match traced_loop.poll_traced().await {
                Ok((_, Some(delivery))) => return delivery,
                Ok(_) => {}
                Err(error) => panic!("traced subscriber: {error}"),
            }
        }
    })
    .await
    .expect("the retained message arrives");
    let published = telemetry.spans_of(SpanKind::Producer)[0]
        .span_context
        .trace_id();
    assert_eq!(
        delivery
            .creation_context()
            .map(|cx| cx.span().span_context().trace_id()),
        Some(published)
    );
}
