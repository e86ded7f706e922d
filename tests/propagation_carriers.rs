//! The current W3C Trace Context rules hold the same through every carrier of the crate: MQTT 5
//! user properties, MQTT 3.1.1 envelope headers and JSON fields. Each test receives a message
//! through the carrier, continues the trace in a child span (as a handler does) and sends it on
//! through the same carrier.
//!
//! Section names are those of the current W3C Trace Context text (`tests/w3c-trace-context`).

mod common;

use common::carriers::{CARRIERS, Carrier, Fields, fields, values_of};
use opentelemetry::Context;
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer, TracerProvider,
};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use rumqttc_opentelemetry::propagation::{
    MAX_PROPAGATION_VALUE_LEN, RANDOM_TRACE_ID_FLAG, TracestateError,
};

const TP: &str = "00-12345678901234567890123456789012-1234567890123456-01";

/// Continues the extracted trace in a child span of a recording SDK tracer, and sends it on.
fn forward(carrier: Carrier, received: &Fields) -> Fields {
    let provider = SdkTracerProvider::builder()
        .with_sampler(Sampler::AlwaysOn)
        .build();
    let tracer = provider.tracer("propagation_carriers");
    let extracted = carrier.extract(received);
    let span = tracer.start_with_context("handler", &extracted.context);
    carrier.inject(&extracted.context.with_span(span))
}

fn tracestate_of(carrier: Carrier, received: &[(&str, &str)]) -> String {
    let extracted = carrier.extract(&fields(received));
    let span = extracted.context.span();
    let remote = span.span_context();
    assert!(remote.is_valid(), "{carrier:?}");
    remote.trace_state().header()
}

/// "tracestate Header Field Values": several fields are one list, combined in order, empty
/// fields allowed.
#[test]
fn several_tracestate_fields_are_one_list_in_every_carrier() {
    for carrier in CARRIERS {
        let received = fields(&[
            ("traceparent", TP),
            ("tracestate", "foo=1,bar=2"),
            ("tracestate", ""),
            ("tracestate", "rojo=1,congo=2"),
            ("tracestate", "baz=3"),
        ]);
        let sent = forward(carrier, &received);
        assert_eq!(
            values_of(&sent, "tracestate"),
            ["foo=1,bar=2,rojo=1,congo=2,baz=3"],
            "{carrier:?}: one field on the way out"
        );
        assert_eq!(values_of(&sent, "traceparent").len(), 1);
    }
}

/// "tracestate Header Field Values": at most 32 members, counted over every field; the 33rd
/// drops the state, not the trace.
#[test]
fn thirty_three_members_across_fields_drop_the_state_in_every_carrier() {
    let members: Vec<String> = (1..=33).map(|i| format!("bar{i:02}={i:02}")).collect();
    let (first, rest) = members.split_at(20);
    for carrier in CARRIERS {
        let (a, b, c) = (first.join(","), rest[..12].join(","), rest.join(","));
        let thirty_two = tracestate_of(
            carrier,
            &[("traceparent", TP), ("tracestate", &a), ("tracestate", &b)],
        );
        assert_eq!(thirty_two.split(',').count(), 32, "{carrier:?}");
        let extracted = carrier.extract(&fields(&[
            ("traceparent", TP),
            ("tracestate", &a),
            ("tracestate", &c),
        ]));
        assert_eq!(
            extracted.tracestate_error,
            Some(TracestateError::TooManyMembers),
            "{carrier:?}"
        );
        let remote = extracted.context.span().span_context().clone();
        assert!(remote.is_valid());
        assert_eq!(*remote.trace_state(), TraceState::NONE);
    }
}

/// "Mutating the tracestate Field": a duplicated key keeps its left-most member and the rest of
/// the state, across fields too.
#[test]
fn a_duplicated_key_keeps_the_state_in_every_carrier() {
    for carrier in CARRIERS {
        assert_eq!(
            tracestate_of(
                carrier,
                &[("traceparent", TP), ("tracestate", "foo=1,foo=2,x=3")]
            ),
            "foo=1,x=3"
        );
        assert_eq!(
            tracestate_of(
                carrier,
                &[
                    ("traceparent", TP),
                    ("tracestate", "foo=1"),
                    ("tracestate", "foo=2")
                ]
            ),
            "foo=1"
        );
    }
}

/// "Key" (current grammar) and opentelemetry 0.33's off-by-one: keys the SDK's `TraceState`
/// refuses (14 characters after `@`, two `@`, 15 characters after `@`) arrive and are sent on,
/// in order, with the members the SDK accepts.
#[test]
fn keys_the_sdk_refuses_are_forwarded_in_every_carrier() {
    let both_grammars = format!("{}@{}", "t".repeat(241), "v".repeat(14));
    let lists = [
        (
            vec!["foo=1".to_owned(), format!("{both_grammars}=1")],
            format!("foo=1,{both_grammars}=1"),
        ),
        (
            vec!["foo@@bar=1,bar=2".to_owned()],
            "foo@@bar=1,bar=2".to_owned(),
        ),
        (
            vec!["foo@bar@baz=1,bar=2".to_owned()],
            "foo@bar@baz=1,bar=2".to_owned(),
        ),
        (
            vec!["foo=1".to_owned(), format!("t@{}=1", "v".repeat(15))],
            format!("foo=1,t@{}=1", "v".repeat(15)),
        ),
    ];
    for carrier in CARRIERS {
        for (tracestates, expected) in &lists {
            let mut received = fields(&[("traceparent", TP)]);
            received.extend(
                tracestates
                    .iter()
                    .map(|field| ("tracestate".to_owned(), field.clone())),
            );
            let extracted = carrier.extract(&received);
            assert_eq!(
                extracted.tracestate_error, None,
                "{carrier:?} {tracestates:?}"
            );
            let sent = forward(carrier, &received);
            assert_eq!(
                values_of(&sent, "tracestate"),
                [expected.as_str()],
                "{carrier:?}"
            );
        }
    }
}

/// "Random Trace ID Flag" (Level 2): a continued trace keeps the flag, sampled or not, and the
/// reserved bits are cleared ("Other Flags").
#[test]
fn the_random_flag_is_continued_in_every_carrier() {
    for carrier in CARRIERS {
        for (flags, expected) in [("02", "03"), ("03", "03"), ("01", "01"), ("ff", "03")] {
            let traceparent = format!("{}-{flags}", &TP[..52]);
            let received = fields(&[("traceparent", &traceparent)]);
            let remote = carrier
                .extract(&received)
                .context
                .span()
                .span_context()
                .clone();
            assert_eq!(
                remote.trace_flags() & RANDOM_TRACE_ID_FLAG == RANDOM_TRACE_ID_FLAG,
                flags != "01",
                "{carrier:?} {flags}"
            );
            // The recording child is sampled: 02 goes on as 03 (sampled is the one flag a
            // vendor may change, with a new parent-id).
            let sent = forward(carrier, &received);
            let written = values_of(&sent, "traceparent")[0];
            assert_eq!(&written[..35], &TP[..35], "{carrier:?}: same trace");
            assert_ne!(&written[36..52], &TP[36..52], "{carrier:?}: new parent-id");
            assert!(
                written.ends_with(&format!("-{expected}")),
                "{carrier:?}: {written}"
            );
        }
    }
}

/// "tracestate Limits": an application's own `TraceState` too long for the carrier is truncated
/// by whole entries, from the end, instead of being dropped whole by the injector.
#[test]
fn a_trace_state_too_long_to_send_is_truncated_in_every_carrier() {
    let entries: Vec<(String, String)> = (0..32)
        .map(|i| (format!("k{i:02}{}", "x".repeat(200)), "v".repeat(250)))
        .collect();
    let state = TraceState::from_key_value(entries.clone()).unwrap();
    assert!(state.header().len() > MAX_PROPAGATION_VALUE_LEN);
    let cx = Context::new().with_remote_span_context(SpanContext::new(
        TraceId::from(1),
        SpanId::from(1),
        TraceFlags::SAMPLED,
        false,
        state,
    ));
    for carrier in CARRIERS {
        let sent = carrier.inject(&cx);
        let written = values_of(&sent, "tracestate");
        assert_eq!(written.len(), 1, "{carrier:?}");
        assert!(written[0].len() <= MAX_PROPAGATION_VALUE_LEN);
        let kept: Vec<&str> = written[0].split(',').map(|m| &m[..3]).collect();
        let expected: Vec<String> = (0..kept.len()).map(|i| format!("k{i:02}")).collect();
        assert_eq!(
            kept, expected,
            "{carrier:?}: the first entries stay, in order"
        );
        assert!(kept.len() >= 16);
    }
}
