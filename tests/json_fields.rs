//! Tests of the JSON-fields codec (`propagation::json_fields`), with `serde_json` as the
//! reference parser.

use std::collections::BTreeMap;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::{Context, KeyValue, baggage::BaggageExt};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use proptest::prelude::*;
use rumqttc_opentelemetry::propagation::json_fields::{
    JsonFields, JsonFieldsError, JsonFieldsInjector, inject,
};
use serde_json::{Map, Value};

const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const NAMES: [&str; 3] = ["traceparent", "tracestate", "baggage"];

fn inject_str(payload: &str, fields: &[(&str, &str)]) -> Result<String, JsonFieldsError> {
    inject(payload.as_bytes(), fields).map(|out| String::from_utf8(out).expect("UTF-8 output"))
}

fn tp(payload: &str) -> String {
    inject_str(payload, &[("traceparent", TP)]).expect("inject")
}

fn malformed(payload: &[u8]) -> usize {
    match inject(payload, &[("traceparent", TP)]) {
        Err(JsonFieldsError::Malformed { offset }) => {
            assert_eq!(
                JsonFields::parse(payload, &NAMES),
                Err(JsonFieldsError::Malformed { offset }),
                "parse and inject disagree on {:?}",
                String::from_utf8_lossy(payload)
            );
            offset
        }
        other => panic!(
            "expected Malformed for {:?}, got {other:?}",
            String::from_utf8_lossy(payload)
        ),
    }
}

/// serde_json's verdict: `Some(true)` for an object, `Some(false)` for anything else, `None`
/// when serde_json refuses only because of a limit this codec deliberately does not have
/// (number magnitude, nesting depth).
fn serde_is_object(payload: &[u8]) -> Option<bool> {
    match serde_json::from_slice::<Value>(payload) {
        Ok(value) => Some(value.is_object()),
        Err(error) => {
            let message = error.to_string();
            if message.contains("number out of range") || message.contains("recursion limit") {
                None
            } else {
                Some(false)
            }
        }
    }
}

fn object(payload: &[u8]) -> Map<String, Value> {
    match serde_json::from_slice(payload) {
        Ok(Value::Object(map)) => map,
        other => panic!(
            "not an object: {:?} ({other:?})",
            String::from_utf8_lossy(payload)
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// inject: examples
// ---------------------------------------------------------------------------------------------

#[test]
fn injects_into_empty_object() {
    assert_eq!(tp("{}"), format!(r#"{{"traceparent":"{TP}"}}"#));
}

#[test]
fn injects_before_existing_members() {
    assert_eq!(
        tp(r#"{"a":1}"#),
        format!(r#"{{"traceparent":"{TP}","a":1}}"#)
    );
    assert_eq!(
        tp(r#"{"a":1,"b":[true,false,null],"c":{"d":"e"}}"#),
        format!(r#"{{"traceparent":"{TP}","a":1,"b":[true,false,null],"c":{{"d":"e"}}}}"#)
    );
}

#[test]
fn injects_several_fields_in_order() {
    let out = inject_str(
        r#"{"a":1}"#,
        &[
            ("traceparent", TP),
            ("tracestate", "k=v"),
            ("baggage", "user=1"),
        ],
    )
    .unwrap();
    assert_eq!(
        out,
        format!(r#"{{"traceparent":"{TP}","tracestate":"k=v","baggage":"user=1","a":1}}"#)
    );
}

#[test]
fn replaces_existing_member() {
    assert_eq!(
        tp(r#"{"traceparent":"old","a":1}"#),
        format!(r#"{{"traceparent":"{TP}","a":1}}"#)
    );
    assert_eq!(
        tp(r#"{"a":1,"traceparent":"old"}"#),
        format!(r#"{{"traceparent":"{TP}","a":1}}"#)
    );
    assert_eq!(
        tp(r#"{"a":1,"traceparent":"old","b":2}"#),
        format!(r#"{{"traceparent":"{TP}","a":1,"b":2}}"#)
    );
}

#[test]
fn removes_all_duplicates_and_non_string_values() {
    assert_eq!(
        tp(
            r#"{"traceparent":"x","a":1,"traceparent":"y","traceparent":{"n":[1]},"traceparent":5}"#
        ),
        format!(r#"{{"traceparent":"{TP}","a":1}}"#)
    );
    assert_eq!(
        tp(r#"{"traceparent":"x","traceparent":"y"}"#),
        format!(r#"{{"traceparent":"{TP}"}}"#)
    );
}

#[test]
fn removes_escaped_key_forms() {
    for key in [
        r"trace\u0070arent",
        r"\u0074raceparent",
        r"traceparen\u0074",
        r"\u0074\u0072\u0061\u0063\u0065\u0070\u0061\u0072\u0065\u006E\u0074",
    ] {
        let payload = format!(r#"{{"{key}":"old","a":1}}"#);
        assert_eq!(
            tp(&payload),
            format!(r#"{{"traceparent":"{TP}","a":1}}"#),
            "{key}"
        );
    }
    // Not the same key: kept.
    for key in [
        r"Traceparent",
        r"traceparent\u0000",
        r"trace\\u0070arent",
        "traceparent ",
    ] {
        let payload = format!(r#"{{"{key}":"old"}}"#);
        assert_eq!(
            tp(&payload),
            format!(r#"{{"traceparent":"{TP}","{key}":"old"}}"#)
        );
    }
}

#[test]
fn preserves_whitespace_escapes_and_number_spelling() {
    let payload = " \r\n\t{ \"a\" : 1.50E+3 ,\n  \"b\\u0041\":\"x\\/y\\n\" ,\"c\":[ ] }\n ";
    assert_eq!(
        tp(payload),
        format!(
            " \r\n\t{{\"traceparent\":\"{TP}\", \"a\" : 1.50E+3 ,\n  \"b\\u0041\":\"x\\/y\\n\" ,\"c\":[ ] }}\n "
        )
    );
}

#[test]
fn preserves_pretty_printed_layout() {
    let payload = "{\n  \"a\": 1,\n  \"b\": 2\n}\n";
    assert_eq!(
        tp(payload),
        format!("{{\"traceparent\":\"{TP}\",\n  \"a\": 1,\n  \"b\": 2\n}}\n")
    );
    // Removing the last member keeps the whitespace before the closing brace.
    let payload = "{\n  \"a\": 1,\n  \"traceparent\": \"old\"\n}";
    assert_eq!(
        tp(payload),
        format!("{{\"traceparent\":\"{TP}\",\n  \"a\": 1\n}}")
    );
    // Whitespace inside an empty object is kept.
    assert_eq!(tp("{ \n }"), format!("{{\"traceparent\":\"{TP}\" \n }}"));
}

#[test]
fn empty_values_are_not_written_but_still_remove() {
    assert_eq!(
        inject_str(r#"{"a":1}"#, &[("traceparent", TP), ("tracestate", "")]).unwrap(),
        format!(r#"{{"traceparent":"{TP}","a":1}}"#)
    );
    assert_eq!(
        inject_str(
            r#"{"tracestate":"stale","a":1}"#,
            &[("traceparent", TP), ("tracestate", "")]
        )
        .unwrap(),
        format!(r#"{{"traceparent":"{TP}","a":1}}"#)
    );
    assert_eq!(
        inject_str(r#"{ "tracestate" : "stale" }"#, &[("tracestate", "")]).unwrap(),
        "{ }"
    );
    assert_eq!(inject_str(r#"{"a":1}"#, &[]).unwrap(), r#"{"a":1}"#);
    assert_eq!(inject_str(" {} ", &[("baggage", "")]).unwrap(), " {} ");
}

#[test]
fn last_duplicate_field_wins() {
    assert_eq!(
        inject_str(
            "{}",
            &[
                ("traceparent", "a"),
                ("tracestate", "s"),
                ("traceparent", "b")
            ]
        )
        .unwrap(),
        r#"{"tracestate":"s","traceparent":"b"}"#
    );
    assert_eq!(
        inject_str("{}", &[("traceparent", "a"), ("traceparent", "")]).unwrap(),
        "{}"
    );
}

#[test]
fn escapes_names_and_values() {
    let out = inject_str("{}", &[("na\"me", "q\"b\\s/c\u{1}\n\té😀")]).unwrap();
    assert_eq!(out, "{\"na\\\"me\":\"q\\\"b\\\\s/c\\u0001\\n\\té😀\"}");
    let map = object(out.as_bytes());
    assert_eq!(map["na\"me"], "q\"b\\s/c\u{1}\n\té😀");
}

#[test]
fn strings_with_structural_characters_are_skipped_correctly() {
    let payload =
        r#"{"{}":"}{","a\"b":"[\"]\\","c":",:","traceparent":"x}","d":"\"traceparent\":"}"#;
    let out = tp(payload);
    assert_eq!(
        out,
        format!(
            r#"{{"traceparent":"{TP}","{{}}":"}}{{","a\"b":"[\"]\\","c":",:","d":"\"traceparent\":"}}"#
        )
    );
    let map = object(out.as_bytes());
    assert_eq!(map.len(), 5);
    assert_eq!(map["traceparent"], TP);
}

// ---------------------------------------------------------------------------------------------
// inject: errors
// ---------------------------------------------------------------------------------------------

#[test]
fn non_objects_are_rejected() {
    for payload in [
        "",
        " ",
        "\n\t\r ",
        "[]",
        "[{\"a\":1}]",
        "\"s\"",
        "1",
        "-1",
        "true",
        "false",
        "null",
        "x",
        "}",
        "]{}",
        "'{}'",
    ] {
        assert_eq!(
            inject(payload.as_bytes(), &[("traceparent", TP)]),
            Err(JsonFieldsError::NotAnObject),
            "{payload:?}"
        );
        assert_eq!(
            JsonFields::parse(payload.as_bytes(), &NAMES),
            Err(JsonFieldsError::NotAnObject),
            "{payload:?}"
        );
    }
    assert_eq!(
        inject(&[0xFF, b'{', b'}'], &[]),
        Err(JsonFieldsError::NotAnObject)
    );
    assert_eq!(inject(b"\0{}", &[]), Err(JsonFieldsError::NotAnObject));
}

#[test]
fn byte_order_mark_is_malformed() {
    assert_eq!(malformed(b"\xEF\xBB\xBF{}"), 0);
    assert_eq!(malformed(b"  \xEF\xBB\xBF{\"a\":1}"), 2);
}

#[test]
fn malformed_payloads_report_the_offset() {
    let cases: &[(&[u8], usize)] = &[
        (b"{", 1),
        (b"{ ", 2),
        (b"{\"a\"", 4),
        (b"{\"a\":", 5),
        (b"{\"a\":1", 6),
        (b"{\"a\":1,}", 7),
        (b"{,}", 1),
        (b"{\"a\":1,,\"b\":2}", 7),
        (b"{\"a\" 1}", 5),
        (b"{\"a\"::1}", 5),
        (b"{\"a\":}", 5),
        (b"{a:1}", 1),
        (b"{'a':1}", 1),
        (b"{\"a\":1 \"b\":2}", 7),
        (b"{\"a\":01}", 6),
        (b"{\"a\":-}", 6),
        (b"{\"a\":-a}", 6),
        (b"{\"a\":+1}", 5),
        (b"{\"a\":1.}", 7),
        (b"{\"a\":.5}", 5),
        (b"{\"a\":1e}", 7),
        (b"{\"a\":1e+}", 8),
        (b"{\"a\":1.5e-x}", 10),
        (b"{\"a\":0x1}", 6),
        (b"{\"a\":NaN}", 5),
        (b"{\"a\":Infinity}", 5),
        (b"{\"a\":tru}", 8),
        (b"{\"a\":trUe}", 7),
        (b"{\"a\":nul}", 8),
        (b"{\"a\":falsey}", 10),
        (b"{\"a\":[1,]}", 8),
        (b"{\"a\":[1 2]}", 8),
        (b"{\"a\":[1}", 7),
        (b"{\"a\":{\"b\"}}", 9),
        (b"{\"a\":{\"b\":1,}}", 12),
        (b"{\"a\":{1:2}}", 6),
        (b"{\"a\":\"x}", 8),
        (b"{\"a\":\"\\x\"}", 7),
        (b"{\"a\":\"\\u12G4\"}", 10),
        (b"{\"a\":\"\\u12\"}", 10),
        (b"{\"a\":\"\tb\"}", 6),
        (b"{\"a\":\"\nb\"}", 6),
        (b"{\"a\":\"\x00\"}", 6),
        (b"{\"a\x1f\":1}", 3),
        (b"{\"a\":\"\xFF\"}", 6),
        (b"{\"a\":\"\xC3\"}", 6),
        (b"{\"\xC3\xA9\xED\xA0\x80\":1}", 4),
        (b"{\"a\":\"\\udc00\"}", 6),
        (b"{\"a\":\"\\ud800\"}", 12),
        (b"{\"a\":\"\\ud800x\"}", 12),
        (b"{\"a\":\"\\ud800\\n\"}", 13),
        (b"{\"a\":\"\\ud800\\u0041\"}", 12),
        (b"{\"a\":\"\\ud800\\ud800\"}", 12),
        (b"{\"a\":1}x", 7),
        (b"{\"a\":1} {}", 8),
        (b"{}}", 2),
        (b"{} \x00", 3),
        (b"{}\xEF\xBB\xBF", 2),
        (b"{\"a\":1}\n,", 8),
    ];
    for &(payload, offset) in cases {
        assert_eq!(
            malformed(payload),
            offset,
            "offset for {:?}",
            String::from_utf8_lossy(payload)
        );
        assert_eq!(
            serde_is_object(payload),
            Some(false),
            "{:?}",
            String::from_utf8_lossy(payload)
        );
    }
}

#[test]
fn well_formed_edge_cases_are_accepted() {
    for payload in [
        r#"{"a":-0}"#,
        r#"{"a":0.0e0}"#,
        r#"{"a":-12.5E-3}"#,
        r#"{"a":1E+2}"#,
        r#"{"a":123456789012345678901234567890}"#,
        r#"{"":""}"#,
        r#"{"a":"\ud83d\ude00 \u00e9 \uFFFF \u0000 \/"}"#,
        r#"{"a":{"b":{"c":[[],{},[{}]]}}}"#,
        "{\"a\":\"\u{7f}é中😀\"}",
        " {\"a\" :\t[ 1 , 2 ] } \r\n",
    ] {
        let out = tp(payload);
        assert_eq!(serde_is_object(payload.as_bytes()), Some(true), "{payload}");
        let mut expected = object(payload.as_bytes());
        expected.insert("traceparent".into(), TP.into());
        assert_eq!(object(out.as_bytes()), expected, "{payload}");
    }
    // Numbers too large for an f64 are still well-formed JSON, and kept as they are.
    assert_eq!(
        tp(r#"{"a":1e400}"#),
        format!(r#"{{"traceparent":"{TP}","a":1e400}}"#)
    );
}

#[test]
fn deep_nesting_does_not_overflow_the_stack() {
    const MB: usize = 1 << 20;
    // An unterminated megabyte of brackets inside a member.
    let mut payload = b"{\"a\":".to_vec();
    payload.resize(MB, b'[');
    assert_eq!(malformed(&payload), MB);
    let mut payload = b"{\"a\":".to_vec();
    while payload.len() < MB {
        payload.extend_from_slice(b"{\"a\":");
    }
    assert_eq!(malformed(&payload), payload.len());
    // A megabyte of brackets alone is not an object.
    assert_eq!(
        inject(&vec![b'['; MB], &[]),
        Err(JsonFieldsError::NotAnObject)
    );

    // Well-formed, 200,000 levels deep, arrays and objects mixed: accepted and kept.
    let depth = 200_000;
    let mut payload = String::from(r#"{"deep":"#);
    for level in 0..depth {
        payload.push_str(if level % 2 == 0 { "[" } else { "{\"k\":" });
    }
    payload.push_str("\"traceparent\"");
    for level in (0..depth).rev() {
        payload.push_str(if level % 2 == 0 { "]" } else { "}" });
    }
    payload.push_str(r#","traceparent":"old"}"#);
    let out = tp(&payload);
    let expected_tail = &payload[..payload.len() - r#","traceparent":"old"}"#.len()];
    assert_eq!(
        out,
        format!(r#"{{"traceparent":"{TP}",{}}}"#, &expected_tail[1..])
    );
    let fields = JsonFields::parse(out.as_bytes(), &NAMES).unwrap();
    assert_eq!(fields.get("traceparent"), Some(TP));
    assert_eq!(fields.len(), 1);

    // Mismatched closing bracket deep down.
    let mut payload = String::from(r#"{"a":"#);
    payload.push_str(&"[".repeat(1000));
    payload.push_str(&"]".repeat(999));
    payload.push('}');
    assert_eq!(malformed(payload.as_bytes()), payload.len() - 1);
}

// ---------------------------------------------------------------------------------------------
// JsonFields
// ---------------------------------------------------------------------------------------------

#[test]
fn parse_extracts_wanted_string_members() {
    let payload = format!(
        r#"{{"a":{{"traceparent":"nested"}},"traceparent":"{TP}","tracestate":"k=v,x=y","other":"z","baggage":5}}"#
    );
    let fields = JsonFields::parse(payload.as_bytes(), &NAMES).unwrap();
    assert_eq!(fields.get("traceparent"), Some(TP));
    assert_eq!(fields.get("tracestate"), Some("k=v,x=y"));
    assert_eq!(fields.get("baggage"), None);
    assert_eq!(fields.get("other"), None);
    assert_eq!(fields.get("a"), None);
    assert_eq!(fields.len(), 2);
    assert!(!fields.is_empty());
    assert_eq!(
        fields.iter().collect::<Vec<_>>(),
        vec![("traceparent", TP), ("tracestate", "k=v,x=y")]
    );
    assert_eq!(Extractor::keys(&fields), vec!["traceparent", "tracestate"]);
    assert_eq!(Extractor::get(&fields, "traceparent"), Some(TP));
    assert_eq!(
        Extractor::get_all(&fields, "tracestate"),
        Some(vec!["k=v,x=y"])
    );
    assert_eq!(Extractor::get_all(&fields, "baggage"), None);
}

#[test]
fn parse_of_object_without_wanted_members_is_empty() {
    for payload in [
        "{}",
        r#" { "a" : [ "traceparent" ] } "#,
        r#"{"TRACEPARENT":"x"}"#,
    ] {
        let fields = JsonFields::parse(payload.as_bytes(), &NAMES).unwrap();
        assert!(fields.is_empty(), "{payload}");
        assert_eq!(fields.len(), 0);
        assert_eq!(fields.get("traceparent"), None);
        assert!(Extractor::keys(&fields).is_empty());
    }
    let fields = JsonFields::parse(br#"{"traceparent":"x"}"#, &[]).unwrap();
    assert!(fields.is_empty());
}

#[test]
fn duplicated_names_are_ambiguous_for_get() {
    let payload = br#"{"traceparent":"a","x":1,"traceparent":"b","tracestate":"s"}"#;
    let fields = JsonFields::parse(payload, &NAMES).unwrap();
    assert_eq!(fields.get("traceparent"), None);
    assert_eq!(Extractor::get(&fields, "traceparent"), None);
    assert_eq!(fields.get_all("traceparent"), vec!["a", "b"]);
    assert_eq!(
        Extractor::get_all(&fields, "traceparent"),
        Some(vec!["a", "b"])
    );
    assert_eq!(fields.get("tracestate"), Some("s"));
    assert_eq!(fields.len(), 3);
    assert_eq!(Extractor::keys(&fields), vec!["traceparent", "tracestate"]);

    // A duplicate with a non-string value also makes the name ambiguous.
    let fields = JsonFields::parse(br#"{"traceparent":"a","traceparent":null}"#, &NAMES).unwrap();
    assert_eq!(fields.get("traceparent"), None);
    assert_eq!(fields.get_all("traceparent"), vec!["a"]);
    // Escaped and plain spellings are the same name.
    let fields =
        JsonFields::parse(br#"{"traceparent":"a","trace\u0070arent":"b"}"#, &NAMES).unwrap();
    assert_eq!(fields.get("traceparent"), None);
    assert_eq!(fields.get_all("traceparent"), vec!["a", "b"]);
}

#[test]
fn non_string_values_are_ignored() {
    let payload = br#"{"traceparent":1,"tracestate":{"a":"b"},"baggage":["x"],"x":null}"#;
    let fields = JsonFields::parse(payload, &NAMES).unwrap();
    assert!(fields.is_empty());
    for name in NAMES {
        assert_eq!(fields.get(name), None);
        assert!(fields.get_all(name).is_empty());
    }
}

#[test]
fn parse_unescapes_names_and_values() {
    let payload =
        br#"{"trace\u0070arent":"00-\u0034bf","tracestate":"a\"b\\c\/d\n\u00e9\ud83d\ude00"}"#;
    let fields = JsonFields::parse(payload, &NAMES).unwrap();
    assert_eq!(fields.get("traceparent"), Some("00-4bf"));
    assert_eq!(fields.get("tracestate"), Some("a\"b\\c/d\né😀"));
    assert_eq!(Extractor::keys(&fields), vec!["traceparent", "tracestate"]);
}

#[test]
fn parse_borrows_from_the_payload() {
    let payload = format!(r#"{{"traceparent":"{TP}"}}"#).into_bytes();
    let value: &str = {
        let fields = JsonFields::parse(&payload, &NAMES).unwrap();
        let value = fields.get("traceparent").unwrap();
        // The returned slice points into the payload.
        let range = payload.as_ptr_range();
        assert!(range.contains(&value.as_ptr()));
        value.to_owned().leak()
    };
    assert_eq!(value, TP);
}

#[test]
fn errors_have_clear_messages() {
    assert_eq!(
        JsonFieldsError::NotAnObject.to_string(),
        "payload is not a JSON object"
    );
    assert_eq!(
        JsonFieldsError::Malformed { offset: 7 }.to_string(),
        "payload is not well-formed JSON: error at byte offset 7"
    );
    assert!(JsonFieldsError::TooLarge.to_string().contains("too large"));
    let error: Box<dyn std::error::Error + Send + Sync> = Box::new(JsonFieldsError::NotAnObject);
    assert!(error.source().is_none());
}

// ---------------------------------------------------------------------------------------------
// With OpenTelemetry propagators
// ---------------------------------------------------------------------------------------------

fn span_context() -> SpanContext {
    SpanContext::new(
        TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
        SpanId::from_hex("00f067aa0ba902b7").unwrap(),
        TraceFlags::SAMPLED,
        true,
        TraceState::from_key_value([("vendor", "value")]).unwrap(),
    )
}

#[test]
fn round_trip_through_propagators() {
    let cx = Context::new()
        .with_remote_span_context(span_context())
        .with_baggage([KeyValue::new("user", "alice")]);
    let mut injector = JsonFieldsInjector::new();
    TraceContextPropagator::new().inject_context(&cx, &mut injector);
    BaggagePropagator::new().inject_context(&cx, &mut injector);
    assert!(!injector.is_empty());

    let payload = br#"{"traceparent":"00-stale","temp":21.5}"#;
    let out = injector.apply(payload).unwrap();
    let map = object(&out);
    assert_eq!(map["temp"], 21.5);
    assert_eq!(map["traceparent"], TP);
    assert_eq!(map["tracestate"], "vendor=value");
    assert_eq!(map["baggage"], "user=alice");

    let fields = JsonFields::parse(&out, &NAMES).unwrap();
    let extracted = TraceContextPropagator::new().extract(&fields);
    let extracted = BaggagePropagator::new().extract_with_context(&extracted, &fields);
    let remote = extracted.span().span_context().clone();
    assert!(remote.is_valid() && remote.is_remote());
    assert_eq!(remote.trace_id(), span_context().trace_id());
    assert_eq!(remote.span_id(), span_context().span_id());
    assert_eq!(remote.trace_state().header(), "vendor=value");
    assert_eq!(
        extracted
            .baggage()
            .get("user")
            .map(|value| value.as_str().to_owned()),
        Some("alice".to_owned())
    );
}

#[test]
fn duplicated_traceparent_starts_a_new_trace() {
    let payload = format!(r#"{{"traceparent":"{TP}","traceparent":"{TP}"}}"#);
    let fields = JsonFields::parse(payload.as_bytes(), &NAMES).unwrap();
    let extracted = TraceContextPropagator::new().extract(&fields);
    assert!(!extracted.span().span_context().is_valid());
}

#[test]
fn injector_replaces_and_clears() {
    let mut injector = JsonFieldsInjector::new();
    injector.set("traceparent", "a".into());
    injector.set("tracestate", String::new());
    injector.set("traceparent", "b".into());
    assert_eq!(
        injector.fields().collect::<Vec<_>>(),
        vec![("traceparent", "b"), ("tracestate", "")]
    );
    assert_eq!(
        injector.apply(br#"{"tracestate":"stale"}"#).unwrap(),
        br#"{"traceparent":"b"}"#
    );
    assert_eq!(injector.apply(b"[1]"), Err(JsonFieldsError::NotAnObject));
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z]{0,6}",
        1 => Just("traceparent".to_owned()),
        1 => Just("tracestate".to_owned()),
        1 => Just("baggage".to_owned()),
        1 => any::<String>(),
    ]
}

/// Strings with the characters that need care: quotes, backslashes, control characters,
/// non-ASCII (including characters outside the BMP).
fn tricky_string() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just('"'),
            Just('\\'),
            Just('/'),
            (0u8..0x20).prop_map(char::from),
            Just('\u{7f}'),
            Just('é'),
            Just('\u{2028}'),
            Just('😀'),
            any::<char>(),
            "[a-z{}\\[\\],:]".prop_map(|s| s.chars().next().unwrap()),
        ],
        0..24,
    )
    .prop_map(String::from_iter)
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        tricky_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

fn json_object() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map(key(), json_value(), 0..8).prop_map(|map| map.into_iter().collect())
}

fn serialize(map: &Map<String, Value>, pretty: bool) -> Vec<u8> {
    if pretty {
        serde_json::to_vec_pretty(map).unwrap()
    } else {
        serde_json::to_vec(map).unwrap()
    }
}

/// JSON-ish tokens, so that random sequences are often close to well-formed.
fn token_soup() -> impl Strategy<Value = Vec<u8>> {
    const TOKENS: &[&str] = &[
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "\"",
        "\"a\"",
        "\"traceparent\"",
        "\"x\\\"y\"",
        "\"\\u00e9\"",
        "\"\\ud83d\\ude00\"",
        "\"\\ud83d\"",
        "\\",
        "\\u",
        "0",
        "1",
        "-",
        ".",
        "e",
        "E",
        "+",
        "12",
        "0.5",
        "-3e7",
        "true",
        "false",
        "null",
        "tru",
        " ",
        "\n",
        "\t",
        "\u{0}",
        "\u{1}",
        "é",
        "\u{FEFF}",
        "\r",
    ];
    prop::collection::vec(prop::sample::select(TOKENS), 0..40)
        .prop_map(|tokens| tokens.concat().into_bytes())
}

/// JSON whitespace, sometimes none.
fn ws() -> impl Strategy<Value = &'static str> {
    prop::sample::select(&["", "", " ", "\n", "\t", "\r\n", "  "][..])
}

/// The text of a JSON string, each character written plainly or escaped in one of its forms.
fn json_string_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => any::<char>()
            .prop_filter("plain", |c| *c >= ' ' && *c != '"' && *c != '\\')
            .prop_map(String::from),
        1 => prop::sample::select(
            &["\\\"", "\\\\", "\\/", "\\b", "\\f", "\\n", "\\r", "\\t"][..]
        )
        .prop_map(str::to_owned),
        1 => (any::<char>(), any::<bool>()).prop_map(|(c, upper)| {
            let mut units = [0u16; 2];
            c.encode_utf16(&mut units)
                .iter()
                .map(|unit| {
                    if upper {
                        format!("\\u{unit:04X}")
                    } else {
                        format!("\\u{unit:04x}")
                    }
                })
                .collect()
        }),
    ];
    prop::collection::vec(piece, 0..8).prop_map(|pieces| format!("\"{}\"", pieces.concat()))
}

/// Well-formed JSON texts with varied spelling: whitespace everywhere, escapes, number forms.
fn json_text_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        prop::sample::select(&["true", "false", "null"][..]).prop_map(str::to_owned),
        "-?(0|[1-9][0-9]{0,3})(\\.[0-9]{1,3})?([eE][+-]?[0-9]{1,2})?",
        json_string_text(),
    ];
    leaf.prop_recursive(5, 64, 5, |inner| {
        prop_oneof![
            (
                ws(),
                prop::collection::vec((ws(), inner.clone(), ws()), 0..5)
            )
                .prop_map(|(empty, items)| {
                    let items: Vec<String> = items
                        .into_iter()
                        .map(|(a, v, b)| format!("{a}{v}{b}"))
                        .collect();
                    if items.is_empty() {
                        format!("[{empty}]")
                    } else {
                        format!("[{}]", items.join(","))
                    }
                }),
            json_text_members(inner).prop_map(|members| format!("{{{members}}}")),
        ]
    })
}

fn json_text_members(value: impl Strategy<Value = String>) -> impl Strategy<Value = String> {
    (
        ws(),
        prop::collection::vec((ws(), json_string_text(), ws(), ws(), value, ws()), 0..5),
    )
        .prop_map(|(empty, members)| {
            if members.is_empty() {
                return empty.to_owned();
            }
            members
                .into_iter()
                .map(|(a, key, b, c, value, d)| format!("{a}{key}{b}:{c}{value}{d}"))
                .collect::<Vec<_>>()
                .join(",")
        })
}

fn json_text_object() -> impl Strategy<Value = Vec<u8>> {
    (ws(), json_text_members(json_text_value()), ws())
        .prop_map(|(before, members, after)| format!("{before}{{{members}}}{after}").into_bytes())
}

fn check_verdict(payload: &[u8]) -> Result<(), TestCaseError> {
    let injected = inject(payload, &[("traceparent", TP), ("tracestate", "k=v")]);
    let parsed = JsonFields::parse(payload, &NAMES);
    prop_assert_eq!(injected.is_ok(), parsed.is_ok());
    if let (Err(a), Err(b)) = (&injected, &parsed) {
        prop_assert_eq!(a, b);
    }
    if let Err(JsonFieldsError::Malformed { offset }) = injected {
        prop_assert!(offset <= payload.len());
    }
    // `None`: serde_json stopped at a number too large for an f64 (or at its depth limit) and
    // tells nothing about the rest of the payload, so there is no reference verdict.
    if let Some(is_object) = serde_is_object(payload) {
        prop_assert_eq!(
            injected.is_ok(),
            is_object,
            "payload {:?}",
            String::from_utf8_lossy(payload)
        );
    }
    if let Ok(out) = injected {
        if serde_is_object(payload) == Some(true) {
            let mut expected = object(payload);
            expected.insert("traceparent".into(), TP.into());
            expected.insert("tracestate".into(), "k=v".into());
            prop_assert_eq!(object(&out), expected);
        }
        let fields = JsonFields::parse(&out, &NAMES).unwrap();
        prop_assert_eq!(fields.get("traceparent"), Some(TP));
        prop_assert_eq!(fields.get("tracestate"), Some("k=v"));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// inject then serde_json gives the original object plus the fields; parse reads them back.
    #[test]
    fn inject_round_trips_serde_objects(
        map in json_object(),
        pretty in any::<bool>(),
        traceparent in tricky_string(),
        tracestate in tricky_string(),
        baggage in tricky_string(),
    ) {
        let payload = serialize(&map, pretty);
        let fields = [
            ("traceparent", traceparent.as_str()),
            ("tracestate", tracestate.as_str()),
            ("baggage", baggage.as_str()),
        ];
        let out = inject(&payload, &fields).unwrap();

        // Compare with what serde_json reads from the original text (floats may not round
        // trip through text exactly, but the same text always parses the same).
        let mut expected = object(&payload);
        for (name, value) in fields {
            expected.remove(name);
            if !value.is_empty() {
                expected.insert(name.to_owned(), value.into());
            }
        }
        prop_assert_eq!(object(&out), expected);

        let parsed = JsonFields::parse(&out, &NAMES).unwrap();
        for (name, value) in fields {
            let expected = (!value.is_empty()).then_some(value);
            prop_assert_eq!(parsed.get(name), expected);
        }
        prop_assert_eq!(parsed.len(), fields.iter().filter(|(_, v)| !v.is_empty()).count());

        // Parsing the original gives what serde_json sees for those names.
        let original = JsonFields::parse(&payload, &NAMES).unwrap();
        let reference = object(&payload);
        for name in NAMES {
            prop_assert_eq!(original.get(name), reference.get(name).and_then(Value::as_str));
        }

        // Members are inserted first: the output starts with them, then the rest.
        if !traceparent.is_empty() {
            let starts = out.starts_with(b"{\"traceparent\":\"");
            prop_assert!(starts, "inserted members come first");
        }
    }

    /// Without injected names in the payload, every original byte is kept, in order.
    #[test]
    fn inject_keeps_the_original_bytes(map in json_object(), pretty in any::<bool>()) {
        let map: Map<String, Value> =
            map.into_iter().filter(|(k, _)| k != "traceparent").collect();
        let payload = serialize(&map, pretty);
        let out = inject(&payload, &[("traceparent", TP)]).unwrap();
        let inserted = format!("\"traceparent\":\"{TP}\"");
        let mut expected = b"{".to_vec();
        expected.extend_from_slice(inserted.as_bytes());
        if !map.is_empty() {
            expected.push(b',');
        }
        expected.extend_from_slice(&payload[1..]);
        prop_assert_eq!(out, expected);
    }

    /// Arbitrary bytes never panic, and the verdict agrees with serde_json.
    #[test]
    fn arbitrary_bytes_agree_with_serde(payload in prop::collection::vec(any::<u8>(), 0..64)) {
        check_verdict(&payload)?;
    }

    /// Arbitrary bytes after `{`.
    #[test]
    fn arbitrary_object_prefix_agrees_with_serde(payload in prop::collection::vec(any::<u8>(), 0..32)) {
        let mut bytes = b"{".to_vec();
        bytes.extend_from_slice(&payload);
        check_verdict(&bytes)?;
    }

    /// Near-JSON token sequences agree with serde_json.
    #[test]
    fn token_soup_agrees_with_serde(payload in token_soup()) {
        check_verdict(&payload)?;
        let mut wrapped = b"{\"a\":".to_vec();
        wrapped.extend_from_slice(&payload);
        wrapped.push(b'}');
        check_verdict(&wrapped)?;
    }

    /// Hand-spelled well-formed objects are accepted (and agree with serde_json), and so do
    /// their one-byte mutations.
    #[test]
    fn spelled_objects_agree_with_serde(
        payload in json_text_object(),
        position in any::<prop::sample::Index>(),
        byte in prop::sample::select(b"{}[]\",:\\ 0-.eE+tfnu\x00\x1f\x80\xff".to_vec()),
        operation in 0..3u8,
    ) {
        prop_assert!(
            JsonFields::parse(&payload, &NAMES).is_ok(),
            "rejected {:?}",
            String::from_utf8_lossy(&payload)
        );
        check_verdict(&payload)?;
        let mut payload = payload;
        let at = position.index(payload.len() + 1);
        match operation {
            0 if at < payload.len() => payload[at] = byte,
            1 if at < payload.len() => { payload.remove(at); }
            _ => payload.insert(at, byte),
        }
        check_verdict(&payload)?;
    }

    /// One-byte mutations of well-formed objects agree with serde_json.
    #[test]
    fn mutated_objects_agree_with_serde(
        map in json_object(),
        pretty in any::<bool>(),
        position in any::<prop::sample::Index>(),
        byte in prop_oneof![
            prop::sample::select(b"{}[]\",:\\ 0-.eE+tfnu\x00\x1f\x80\xff".to_vec()),
            any::<u8>(),
        ],
        operation in 0..3u8,
    ) {
        let mut payload = serialize(&map, pretty);
        let at = position.index(payload.len() + 1);
        match operation {
            0 if at < payload.len() => payload[at] = byte,
            1 if at < payload.len() => { payload.remove(at); }
            _ => payload.insert(at, byte),
        }
        check_verdict(&payload)?;
    }

    /// Values with quotes, backslashes, control characters and non-ASCII round trip,
    /// and so do keys written with arbitrary escapes.
    #[test]
    fn tricky_values_round_trip(
        traceparent in tricky_string().prop_filter("non-empty", |s| !s.is_empty()),
        tracestate in tricky_string().prop_filter("non-empty", |s| !s.is_empty()),
        escapes in prop::collection::vec(0..3u8, 11),
        existing in tricky_string(),
    ) {
        // The existing traceparent key, each character written plainly, as \u00XX or \u00XX
        // in upper case.
        let key: String = "traceparent"
            .chars()
            .zip(&escapes)
            .map(|(c, how)| match how {
                0 => c.to_string(),
                1 => format!("\\u{:04x}", u32::from(c)),
                _ => format!("\\u{:04X}", u32::from(c)),
            })
            .collect();
        let existing = serde_json::to_string(&existing).unwrap();
        let payload = format!(r#"{{"a":1,"{key}":{existing},"b":[{existing}]}}"#);

        let before = JsonFields::parse(payload.as_bytes(), &NAMES).unwrap();
        prop_assert_eq!(
            before.get("traceparent").map(str::to_owned),
            serde_json::from_str::<String>(&existing).ok()
        );

        let fields = [("traceparent", traceparent.as_str()), ("tracestate", tracestate.as_str())];
        let out = inject(payload.as_bytes(), &fields).unwrap();
        let map = object(&out);
        prop_assert_eq!(map.len(), 4);
        prop_assert_eq!(map["traceparent"].as_str(), Some(traceparent.as_str()));
        prop_assert_eq!(map["tracestate"].as_str(), Some(tracestate.as_str()));
        let parsed = JsonFields::parse(&out, &NAMES).unwrap();
        prop_assert_eq!(parsed.get("traceparent"), Some(traceparent.as_str()));
        prop_assert_eq!(parsed.get("tracestate"), Some(tracestate.as_str()));
        prop_assert_eq!(parsed.len(), 2);
        // Same as serde_json's own escaping, up to the choice of escapes.
        let reference: BTreeMap<String, String> =
            serde_json::from_slice(&out[..]).map(|m: Map<String, Value>| {
                m.into_iter()
                    .filter_map(|(k, v)| Some((k, v.as_str()?.to_owned())))
                    .collect()
            }).unwrap();
        prop_assert_eq!(reference.get("traceparent"), Some(&traceparent));
    }
}
