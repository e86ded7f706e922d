//! W3C Trace Context over MQTT 5 user properties: strict traceparent/tracestate validation, the
//! carrier rules, and agreement with the SDK's propagator on valid input.
//!
//! Rule references: W3C Trace Context Level 1, section 3.2 (traceparent) and 3.3 (tracestate);
//! W3C "Trace Context: MQTT" draft (user property names); DESIGN.md "Propagation".

use opentelemetry::baggage::BaggageExt;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use rumqttc_opentelemetry::propagation::{
    MAX_PROPAGATION_VALUE_LEN, TraceparentError, TracestateError, UserPropertiesExtractor,
    UserPropertiesInjector, W3CPropagator, extract_span_context, parse_traceparent,
};

const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACE_ID: u128 = 0x4bf92f3577b34da6a3ce929d0e0e4736;
const SPAN_ID: u64 = 0x00f067aa0ba902b7;

fn props(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn extract(pairs: &[(&str, &str)]) -> Result<SpanContext, TraceparentError> {
    let properties = props(pairs);
    extract_span_context(&UserPropertiesExtractor::new(&properties)).map(|(sc, _)| sc)
}

#[test]
fn valid_traceparent_is_extracted_as_remote() {
    let context = extract(&[("traceparent", VALID)]).unwrap();
    assert_eq!(context.trace_id(), TraceId::from(TRACE_ID));
    assert_eq!(context.span_id(), SpanId::from(SPAN_ID));
    assert!(context.is_sampled());
    assert!(context.is_remote());
}

/// Each case names the W3C Trace Context rule it breaks; every one must start a new trace.
#[test]
fn malformed_traceparents_are_rejected() {
    let long = "0".repeat(600);
    let cases: Vec<(String, TraceparentError, &str)> = vec![
        (
            String::new(),
            TraceparentError::Length(0),
            "empty value (3.2.2)",
        ),
        (
            VALID[..54].into(),
            TraceparentError::Length(54),
            "one byte short (3.2.2: 55 bytes)",
        ),
        (
            format!("{VALID}0"),
            TraceparentError::Length(56),
            "one byte long for version 00 (3.2.2)",
        ),
        (
            format!("{VALID}-extra"),
            TraceparentError::Length(61),
            "version 00 with an extra field (3.2.4 applies to later versions only)",
        ),
        (
            VALID.replace("4bf92f", "4BF92F"),
            TraceparentError::TraceIdHex,
            "uppercase trace-id (3.2.2.3: lowercase hex)",
        ),
        (
            VALID.replace("00f067aa", "00F067AA"),
            TraceparentError::SpanIdHex,
            "uppercase parent-id (3.2.2.4)",
        ),
        (
            VALID.replacen("-01", "-0A", 1),
            TraceparentError::FlagsHex,
            "uppercase flags (3.2.2.5)",
        ),
        (
            format!("0A{}", &VALID[2..]),
            TraceparentError::Version,
            "uppercase version (3.2.2.1)",
        ),
        (
            format!("ff{}", &VALID[2..]),
            TraceparentError::ForbiddenVersion,
            "version ff (3.2.2.1)",
        ),
        (
            format!("zz{}", &VALID[2..]),
            TraceparentError::Version,
            "non-hex version (3.2.2.1)",
        ),
        (
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01".into(),
            TraceparentError::ZeroTraceId,
            "all-zero trace-id (3.2.2.3)",
        ),
        (
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01".into(),
            TraceparentError::ZeroSpanId,
            "all-zero parent-id (3.2.2.4)",
        ),
        (
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01".into(),
            TraceparentError::TraceIdHex,
            "non-hex trace-id (3.2.2.3)",
        ),
        (
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bx-01".into(),
            TraceparentError::SpanIdHex,
            "non-hex parent-id (3.2.2.4)",
        ),
        (
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x".into(),
            TraceparentError::FlagsHex,
            "non-hex flags (3.2.2.5)",
        ),
        (
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
            TraceparentError::Delimiter(2),
            "wrong first delimiter (3.2.2)",
        ),
        (
            "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01".into(),
            TraceparentError::Delimiter(35),
            "wrong second delimiter (3.2.2)",
        ),
        (
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7_01".into(),
            TraceparentError::Delimiter(52),
            "wrong third delimiter (3.2.2)",
        ),
        (
            "00-4bf92f3577b34da6a3ce929d0e0e47-3600f067aa0ba902b7-01".into(),
            TraceparentError::Delimiter(35),
            "delimiter moved (3.2.2)",
        ),
        (
            format!(" {}", &VALID[..54]),
            TraceparentError::Version,
            "leading space: no trimming in MQTT properties",
        ),
        (
            format!("{} ", &VALID[..54]),
            TraceparentError::FlagsHex,
            "trailing space inside 55 bytes",
        ),
        (
            format!("01{}x", &VALID[2..]),
            TraceparentError::Delimiter(55),
            "future version, extra data without '-' (3.2.4)",
        ),
        (
            format!("01{}", &VALID[2..54]),
            TraceparentError::Length(54),
            "future version shorter than 55 (3.2.4)",
        ),
        (
            long.clone(),
            TraceparentError::Oversized(600),
            "oversized value is dropped",
        ),
        ("0".into(), TraceparentError::Length(1), "single byte"),
        (
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".replace('-', ""),
            TraceparentError::Length(52),
            "no delimiters",
        ),
    ];
    assert!(cases.len() >= 20);
    for (value, expected, rule) in &cases {
        assert_eq!(
            parse_traceparent(value).map(|_| ()),
            Err(*expected),
            "{rule}: {value:?}"
        );
        // Through the carrier, the same value starts a new trace: no context, the error kept.
        let properties = props(&[("traceparent", value)]);
        let extracted = W3CPropagator::new()
            .extract_checked(&Context::new(), &UserPropertiesExtractor::new(&properties));
        assert!(
            !extracted.context.span().span_context().is_valid(),
            "{rule}"
        );
        assert!(extracted.traceparent_error.is_some(), "{rule}");
    }
}

#[test]
fn a_future_version_with_extra_fields_is_accepted() {
    // W3C 3.2.4: a parser of version 00 reading a higher version parses the first 55 bytes and
    // ignores fields after a '-'.
    let value = format!("cc{}-what-the-future-holds", &VALID[2..]);
    let parsed = parse_traceparent(&value).unwrap();
    assert_eq!(parsed.trace_id, TraceId::from(TRACE_ID));
    let exact_55 = format!("01{}", &VALID[2..]);
    assert!(parse_traceparent(&exact_55).is_ok());
}

#[test]
fn two_traceparents_start_a_new_trace() {
    assert_eq!(
        extract(&[("traceparent", VALID), ("traceparent", VALID)]),
        Err(TraceparentError::Duplicate(2))
    );
    let hundred: Vec<(&str, &str)> = (0..100).map(|_| ("traceparent", VALID)).collect();
    assert_eq!(extract(&hundred), Err(TraceparentError::Duplicate(100)));
}

#[test]
fn missing_traceparent_is_not_a_problem() {
    assert_eq!(
        extract(&[("unit", "celsius")]),
        Err(TraceparentError::Missing)
    );
    let properties = props(&[("tracestate", "rojo=1")]);
    let extracted = W3CPropagator::new()
        .extract_checked(&Context::new(), &UserPropertiesExtractor::new(&properties));
    assert!(extracted.traceparent_error.is_none());
    assert!(
        extracted.tracestate_error.is_none(),
        "tracestate without traceparent is ignored (3.3)"
    );
    assert!(!extracted.context.has_active_span());
}

#[test]
fn names_are_case_sensitive() {
    // MQTT strings compare byte for byte; the MQTT binding of W3C names the property `traceparent`.
    assert_eq!(
        extract(&[("Traceparent", VALID)]),
        Err(TraceparentError::Missing)
    );
}

#[test]
fn oversized_values_are_dropped() {
    let huge = "a".repeat(64 * 1024);
    assert!(matches!(
        extract(&[("traceparent", &huge)]),
        Err(TraceparentError::Oversized(_))
    ));
    let properties = props(&[
        ("traceparent", VALID),
        ("tracestate", &huge),
        ("baggage", &huge),
    ]);
    let extractor = UserPropertiesExtractor::new(&properties);
    assert_eq!(extractor.get("tracestate"), None);
    let extracted = W3CPropagator::new().extract_checked(&Context::new(), &extractor);
    assert!(extracted.context.span().span_context().is_valid());
    assert!(
        extracted
            .context
            .span()
            .span_context()
            .trace_state()
            .header()
            .is_empty()
    );
    assert_eq!(extracted.context.baggage().len(), 0);
}

#[test]
fn tracestate_rules() {
    let ok = |state: &str| {
        extract_span_context(&UserPropertiesExtractor::new(&props(&[
            ("traceparent", VALID),
            ("tracestate", state),
        ])))
        .unwrap()
    };
    let (context, error) = ok("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE");
    assert_eq!(error, None);
    assert_eq!(context.trace_state().get("congo"), Some("t61rcWkgMzE"));
    // 3.3.1.1: empty members and optional white space are allowed.
    let (context, error) = ok(" rojo=1 ,, \tcongo=2");
    assert_eq!(error, None);
    assert_eq!(context.trace_state().get("rojo"), Some("1"));

    let thirty_two: Vec<String> = (0..32).map(|i| format!("k{i}=v")).collect();
    assert_eq!(
        ok(&thirty_two.join(",")).1,
        None,
        "32 members are allowed (3.3.1.1)"
    );
    let thirty_three: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
    let (context, error) = ok(&thirty_three.join(","));
    assert_eq!(
        error,
        Some(TracestateError::TooManyMembers),
        "33 members (3.3.1.1)"
    );
    assert!(context.is_valid(), "the trace survives a bad tracestate");
    assert_eq!(context.trace_state().header(), "");

    for (bad, rule) in [
        ("Rojo=1", "uppercase key (3.3.1.3.1)"),
        ("rojo", "no '=' (3.3.1.3)"),
        ("rojo=", "empty value (3.3.1.3.2)"),
        ("rojo=a\tb", "tab inside a value (3.3.1.3.2)"),
        ("rojo=1=2", "'=' in value (3.3.1.3.2)"),
        ("rojo=é", "non-ASCII value (3.3.1.3.2)"),
        (
            "@rojo=1",
            "key starting with '@' (current spec, section \"Key\")",
        ),
    ] {
        let (context, error) = ok(bad);
        assert!(matches!(error, Some(TracestateError::Member(_))), "{rule}");
        assert!(context.is_valid(), "{rule}");
    }
    // Changed with the current spec (section "Key": `key = ( lcalpha / DIGIT ) 0*255 ( keychar )`):
    // this test asserted that a key starting with a digit is malformed, by Level 1's
    // `simple-key` rule. The current grammar allows it.
    let (context, error) = ok("9rojo=1");
    assert_eq!(error, None);
    assert_eq!(context.trace_state().get("9rojo"), Some("1"));
    // Changed with the spec's section "Mutating the tracestate Field" (a receiver MUST send the
    // tracestate on and MAY discard duplicate keys): this test asserted that a duplicated key
    // drops the whole state. The left-most member is kept, and the rest of the state.
    let (context, error) = ok("rojo=1,congo=3,rojo=2");
    assert_eq!(error, None);
    assert_eq!(context.trace_state().header(), "rojo=1,congo=3");
    // Changed with the spec's section "tracestate Header Field Values" (several tracestate
    // fields MUST be combined into one list, in order): this test asserted that two tracestate
    // properties drop the state, "as ambiguous as two traceparents". They are one list.
    let properties = props(&[
        ("traceparent", VALID),
        ("tracestate", "a=1"),
        ("x", "y"),
        ("tracestate", "b=2"),
    ]);
    let (context, error) =
        extract_span_context(&UserPropertiesExtractor::new(&properties)).unwrap();
    assert_eq!(error, None);
    assert_eq!(context.trace_state().header(), "a=1,b=2");
}

fn sampled_context() -> Context {
    Context::new().with_remote_span_context(SpanContext::new(
        TraceId::from(TRACE_ID),
        SpanId::from(SPAN_ID),
        TraceFlags::SAMPLED,
        false,
        TraceState::from_key_value([("rojo", "00f067aa0ba902b7")]).unwrap(),
    ))
}

#[test]
fn injection_keeps_existing_properties_in_order() {
    let mut properties = props(&[("a", "1"), ("b", "2")]);
    W3CPropagator::new().inject_context(
        &sampled_context().with_baggage([KeyValue::new("tenant", "acme")]),
        &mut UserPropertiesInjector::new(&mut properties),
    );
    assert_eq!(
        properties,
        props(&[
            ("a", "1"),
            ("b", "2"),
            ("traceparent", VALID),
            ("tracestate", "rojo=00f067aa0ba902b7"),
            ("baggage", "tenant=acme"),
        ])
    );
}

#[test]
fn injection_replaces_a_stale_traceparent() {
    let stale = "00-11111111111111111111111111111111-2222222222222222-01";
    let mut properties = props(&[("traceparent", stale), ("x", "y")]);
    W3CPropagator::without_baggage().inject_context(
        &sampled_context(),
        &mut UserPropertiesInjector::new(&mut properties),
    );
    assert_eq!(
        properties,
        props(&[
            ("x", "y"),
            ("traceparent", VALID),
            ("tracestate", "rojo=00f067aa0ba902b7")
        ])
    );
}

#[test]
fn injector_skips_empty_and_oversized_values() {
    // The SDK's TraceContextPropagator writes an empty tracestate; it must not reach the wire.
    let mut properties = Vec::new();
    TraceContextPropagator::new().inject_context(
        &sampled_context_without_state(),
        &mut UserPropertiesInjector::new(&mut properties),
    );
    assert_eq!(properties, props(&[("traceparent", VALID)]));
    let mut injector = UserPropertiesInjector::new(&mut properties);
    injector.set("baggage", "x".repeat(MAX_PROPAGATION_VALUE_LEN + 1));
    assert_eq!(properties.len(), 1);
}

fn sampled_context_without_state() -> Context {
    Context::new().with_remote_span_context(SpanContext::new(
        TraceId::from(TRACE_ID),
        SpanId::from(SPAN_ID),
        TraceFlags::SAMPLED,
        false,
        TraceState::NONE,
    ))
}

#[test]
fn nothing_is_injected_without_a_valid_span() {
    let mut properties = Vec::new();
    W3CPropagator::new().inject_context(
        &Context::new(),
        &mut UserPropertiesInjector::new(&mut properties),
    );
    assert!(properties.is_empty());
}

#[test]
fn agrees_with_the_sdk_propagator_on_valid_input() {
    let sdk = TraceContextPropagator::new();
    let ours = W3CPropagator::without_baggage();
    for flags in ["00", "01"] {
        let value = format!("{}-{flags}", &VALID[..52]);
        let properties = props(&[("traceparent", &value), ("tracestate", "a=1,b=2")]);
        let extractor = UserPropertiesExtractor::new(&properties);
        let theirs = sdk.extract(&extractor);
        let mine = ours.extract(&extractor);
        assert_eq!(mine.span().span_context(), theirs.span().span_context());

        let (mut a, mut b) = (Vec::new(), Vec::new());
        sdk.inject_context(&mine, &mut UserPropertiesInjector::new(&mut a));
        ours.inject_context(&mine, &mut UserPropertiesInjector::new(&mut b));
        assert_eq!(a, b);
    }
    assert_eq!(
        ours.fields().collect::<Vec<_>>(),
        sdk.fields().collect::<Vec<_>>()
    );
    assert_eq!(
        W3CPropagator::new().fields().collect::<Vec<_>>(),
        ["traceparent", "tracestate", "baggage"]
    );
}

#[test]
fn baggage_round_trips_independently_of_the_trace() {
    let mut properties = Vec::new();
    let cx = Context::new().with_baggage([KeyValue::new("device", "kitchen sensor")]);
    W3CPropagator::new().inject_context(&cx, &mut UserPropertiesInjector::new(&mut properties));
    assert_eq!(properties, props(&[("baggage", "device=kitchen%20sensor")]));
    let extracted = W3CPropagator::new().extract(&UserPropertiesExtractor::new(&properties));
    assert_eq!(
        extracted.baggage().get("device").unwrap().as_str(),
        "kitchen sensor"
    );
    let ignored =
        W3CPropagator::without_baggage().extract(&UserPropertiesExtractor::new(&properties));
    assert_eq!(ignored.baggage().len(), 0);
}

#[test]
fn ten_thousand_user_properties_do_not_break_extraction() {
    let mut properties: Vec<(String, String)> = (0..10_000)
        .map(|i| (format!("k{i}"), format!("v{i}")))
        .collect();
    properties.push(("traceparent".into(), VALID.into()));
    let extractor = UserPropertiesExtractor::new(&properties);
    assert_eq!(extractor.keys().len(), 10_001);
    assert!(extract_span_context(&extractor).is_ok());
}
