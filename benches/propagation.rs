//! Propagation hot paths: inject and extract over MQTT 5 user properties (ours vs the SDK's
//! `TraceContextPropagator`), `traceparent` format and parse, the MQTT 3.1.1 envelope at 64 B and
//! 4 KiB, and span attribute building.
//!
//! Run: `cargo bench --bench propagation`. Compare ratios within one run, not absolute times
//! across runs.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use opentelemetry::Context;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use rumqttc_opentelemetry::propagation::{
    UserPropertiesExtractor, UserPropertiesInjector, W3CPropagator, envelope, format_traceparent,
    parse_traceparent, parse_tracestate,
};
use rumqttc_opentelemetry::semconv::{
    ConnectionAttributes, MessageFacts, MqttQoS, Operation, ProtocolVersion,
};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn span_context() -> SpanContext {
    SpanContext::new(
        TraceId::from(0x4bf92f3577b34da6a3ce929d0e0e4736),
        SpanId::from(0x00f067aa0ba902b7),
        TraceFlags::SAMPLED,
        false,
        TraceState::NONE,
    )
}

fn inject(c: &mut Criterion) {
    let cx = Context::new().with_remote_span_context(span_context());
    let sdk = TraceContextPropagator::new();
    let ours = W3CPropagator::without_baggage();
    let ours_with_baggage = W3CPropagator::new();
    let mut group = c.benchmark_group("inject");
    group.bench_function("sdk TraceContextPropagator", |b| {
        b.iter(|| {
            let mut properties = Vec::new();
            sdk.inject_context(
                black_box(&cx),
                &mut UserPropertiesInjector::new(&mut properties),
            );
            properties
        })
    });
    group.bench_function("ours W3CPropagator (trace context)", |b| {
        b.iter(|| {
            let mut properties = Vec::new();
            ours.inject_context(
                black_box(&cx),
                &mut UserPropertiesInjector::new(&mut properties),
            );
            properties
        })
    });
    group.bench_function("ours W3CPropagator (trace context + baggage)", |b| {
        b.iter(|| {
            let mut properties = Vec::new();
            ours_with_baggage.inject_context(
                black_box(&cx),
                &mut UserPropertiesInjector::new(&mut properties),
            );
            properties
        })
    });
    group.bench_function("format_traceparent", |b| {
        let context = span_context();
        b.iter(|| format_traceparent(black_box(&context)))
    });
    group.finish();
}

fn extract(c: &mut Criterion) {
    let properties = vec![
        ("unit".to_owned(), "celsius".to_owned()),
        ("traceparent".to_owned(), TRACEPARENT.to_owned()),
    ];
    let with_state = vec![
        ("traceparent".to_owned(), TRACEPARENT.to_owned()),
        (
            "tracestate".to_owned(),
            "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE".to_owned(),
        ),
    ];
    let sdk = TraceContextPropagator::new();
    let ours = W3CPropagator::without_baggage();
    let ours_with_baggage = W3CPropagator::new();
    let mut group = c.benchmark_group("extract");
    group.bench_function("sdk TraceContextPropagator", |b| {
        b.iter(|| sdk.extract(&UserPropertiesExtractor::new(black_box(&properties))))
    });
    group.bench_function("ours W3CPropagator strict (trace context)", |b| {
        b.iter(|| ours.extract(&UserPropertiesExtractor::new(black_box(&properties))))
    });
    group.bench_function("ours W3CPropagator strict (trace context + baggage)", |b| {
        b.iter(|| ours_with_baggage.extract(&UserPropertiesExtractor::new(black_box(&properties))))
    });
    group.bench_function("sdk with tracestate", |b| {
        b.iter(|| sdk.extract(&UserPropertiesExtractor::new(black_box(&with_state))))
    });
    group.bench_function("ours with tracestate", |b| {
        b.iter(|| ours.extract(&UserPropertiesExtractor::new(black_box(&with_state))))
    });
    group.bench_function("parse_traceparent", |b| {
        b.iter(|| parse_traceparent(black_box(TRACEPARENT)))
    });
    group.bench_function("parse_tracestate (2 members)", |b| {
        b.iter(|| parse_tracestate(black_box("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE")))
    });
    group.bench_function("sdk TraceState::from_str (2 members)", |b| {
        b.iter(|| black_box("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE").parse::<TraceState>())
    });
    group.finish();
}

fn envelope_codec(c: &mut Criterion) {
    let headers = [("traceparent", TRACEPARENT)];
    let mut group = c.benchmark_group("envelope");
    for size in [64_usize, 4096] {
        let payload = vec![0x5a_u8; size];
        let wire = Bytes::from(envelope::encode(&headers, &payload).expect("fits"));
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(format!("encode {size} B"), |b| {
            b.iter(|| envelope::encode(black_box(&headers), black_box(&payload)))
        });
        group.bench_function(format!("decode {size} B"), |b| {
            b.iter(|| envelope::decode(black_box(&wire)))
        });
    }
    group.finish();
}

fn attributes(c: &mut Criterion) {
    let connection =
        ConnectionAttributes::new("sensor-1", "broker.local", 1883, ProtocolVersion::V5);
    let facts = MessageFacts::new("home/kitchen/temperature", MqttQoS::AtLeastOnce)
        .with_template(Some("home/+/temperature"))
        .with_packet_id(Some(7));
    let mut group = c.benchmark_group("attributes");
    group.bench_function("span attributes (publish)", |b| {
        b.iter(|| connection.span_attributes(Operation::Publish, black_box(&facts)))
    });
    group.bench_function("metric attributes (publish)", |b| {
        b.iter(|| connection.metric_attributes(Operation::Publish, black_box(&facts), false))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = inject, extract, envelope_codec, attributes
}
criterion_main!(benches);
