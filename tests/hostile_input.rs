//! Hostile input against the codecs: oversized and duplicated propagation fields, lying or
//! truncated MQTT 3.1.1 envelopes, topics at and past the length limit, and abusive JSON.
//!
//! Every test names the rule it checks. The common expectation: no panic, a typed error or the
//! documented fallback (a new trace, the payload delivered unchanged), and nothing the
//! application sent is lost. The two broker tests run the real traced clients against mosquitto
//! (see `tests/common/broker.rs`).

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::Broker;
use common::telemetry::Telemetry;
use opentelemetry::baggage::BaggageExt;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::SpanData;
use rumqttc_opentelemetry::propagation::envelope::{self, EnvelopeError};
use rumqttc_opentelemetry::propagation::json_fields::{self, JsonFields, JsonFieldsError};
use rumqttc_opentelemetry::propagation::{
    BAGGAGE, Extracted, MAX_PROPAGATION_VALUE_LEN, TRACEPARENT, TRACESTATE, TraceparentError,
    UserPropertiesExtractor, UserPropertiesInjector, W3CPropagator, extract_span_context,
};
use rumqttc_opentelemetry::topic::{
    MAX_TOPIC_LEN, TopicError, TopicFilterSet, matches, validate_topic_filter, validate_topic_name,
};
use tokio::time::timeout;

const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACE_ID: u128 = 0x4bf92f3577b34da6a3ce929d0e0e4736;
const SPAN_ID: u64 = 0x00f067aa0ba902b7;
/// 64 KiB: the size of an abusive propagation value.
const HUGE: usize = 64 * 1024;
const DEADLINE: Duration = Duration::from_secs(20);

fn props(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn extract(properties: &[(String, String)]) -> Extracted {
    W3CPropagator::new().extract_checked(&Context::new(), &UserPropertiesExtractor::new(properties))
}

fn remote(extracted: &Extracted) -> SpanContext {
    extracted.context.span().span_context().clone()
}

/// A value of exactly `len` bytes for `name`. The traceparent is well-formed apart from its size
/// (a later version may append fields, W3C 3.2.4), so that only the size limit can reject it.
fn value_of_len(name: &str, len: usize) -> String {
    let (prefix, filler) = match name {
        TRACEPARENT => (format!("01{}-", &TP[2..]), 'a'),
        TRACESTATE => ("rojo=".to_owned(), 'x'),
        _ => ("k=".to_owned(), 'v'),
    };
    let value = format!("{prefix}{}", filler.to_string().repeat(len - prefix.len()));
    assert_eq!(value.len(), len);
    value
}

/// A 64 KiB value for `name`.
fn huge_value(name: &str) -> String {
    value_of_len(name, HUGE)
}

/// The longest value an MQTT string can carry on the wire (a u16 length, MQTT 5 1.5.4).
fn wire_max_value(name: &str) -> String {
    value_of_len(name, usize::from(u16::MAX))
}

/// The property names of `properties` that are propagation fields, with their value sizes.
fn propagation_sizes(properties: &[(String, String)]) -> Vec<(&str, usize)> {
    properties
        .iter()
        .filter(|(k, _)| [TRACEPARENT, TRACESTATE, BAGGAGE].contains(&k.as_str()))
        .map(|(k, v)| (k.as_str(), v.len()))
        .collect()
}

fn sampled_context(trace_state: TraceState) -> Context {
    Context::new().with_remote_span_context(SpanContext::new(
        TraceId::from(TRACE_ID),
        SpanId::from(SPAN_ID),
        TraceFlags::SAMPLED,
        true,
        trace_state,
    ))
}

// ---------------------------------------------------------------------------------------------
// MQTT 5 user properties
// ---------------------------------------------------------------------------------------------

/// DESIGN.md "Propagation": oversized values are dropped, never forwarded; W3C 3.2.4 allows a
/// later-version traceparent to append fields, but the crate caps it (`MAX_TRACEPARENT_LEN`):
/// a 64 KiB traceparent is rejected as `Oversized` and the message starts a new trace.
#[test]
fn a_64_kib_traceparent_is_rejected_and_starts_a_new_trace() {
    let value = huge_value(TRACEPARENT);
    let properties = props(&[(TRACEPARENT, &value), (TRACESTATE, "rojo=1")]);
    let extracted = extract(&properties);
    assert!(!remote(&extracted).is_valid());
    assert_eq!(
        extracted.traceparent_error,
        Some(TraceparentError::Oversized(value.len()))
    );
    // W3C 3.3: no tracestate without a valid traceparent.
    assert_eq!(extracted.tracestate_error, None);
    assert_eq!(
        extract_span_context(&UserPropertiesExtractor::new(&properties)).unwrap_err(),
        TraceparentError::Oversized(value.len())
    );
    // The extractor itself reads it as absent (`get`), but keeps it for `get_all`.
    let extractor = UserPropertiesExtractor::new(&properties);
    assert_eq!(extractor.get(TRACEPARENT), None);
    assert_eq!(
        extractor.get_all(TRACEPARENT).unwrap()[0].len(),
        value.len()
    );
}

/// DESIGN.md "Propagation" + W3C 3.3.1.1 (a receiver may drop an invalid tracestate and keep
/// the trace): a 64 KiB tracestate is dropped, the trace is kept.
#[test]
fn a_64_kib_tracestate_is_dropped_and_the_trace_kept() {
    let properties = props(&[(TRACEPARENT, TP), (TRACESTATE, &huge_value(TRACESTATE))]);
    let extracted = extract(&properties);
    let context = remote(&extracted);
    assert_eq!(context.trace_id(), TraceId::from(TRACE_ID));
    assert_eq!(context.span_id(), SpanId::from(SPAN_ID));
    assert_eq!(*context.trace_state(), TraceState::NONE);
    assert_eq!(extracted.traceparent_error, None);
}

/// DESIGN.md "Propagation"; W3C Baggage 3.3 (at most 8,192 bytes): a 64 KiB baggage is dropped
/// whole, the trace is kept.
#[test]
fn a_64_kib_baggage_is_dropped_and_the_trace_kept() {
    let properties = props(&[(TRACEPARENT, TP), (BAGGAGE, &huge_value(BAGGAGE))]);
    let extracted = extract(&properties);
    assert!(remote(&extracted).is_valid());
    assert_eq!(extracted.context.baggage().len(), 0);
    // Just under the limit is still read.
    let fits = format!("k={}", "v".repeat(MAX_PROPAGATION_VALUE_LEN - 2));
    let extracted = extract(&props(&[(TRACEPARENT, TP), (BAGGAGE, &fits)]));
    assert_eq!(extracted.context.baggage().len(), 1);
}

/// DESIGN.md "Propagation": dropped values are never forwarded. A context extracted from a
/// message carrying three 64 KiB fields, injected into the next hop's (fresh) properties,
/// carries only the traceparent.
#[test]
fn oversized_values_are_not_forwarded_from_an_extracted_context() {
    let properties = props(&[
        (TRACEPARENT, TP),
        (TRACESTATE, &huge_value(TRACESTATE)),
        (BAGGAGE, &huge_value(BAGGAGE)),
    ]);
    let extracted = extract(&properties);
    let mut next_hop = Vec::new();
    W3CPropagator::new().inject_context(
        &extracted.context,
        &mut UserPropertiesInjector::new(&mut next_hop),
    );
    assert_eq!(propagation_sizes(&next_hop), [(TRACEPARENT, 55)]);
    assert_eq!(next_hop[0].1, TP);
}

/// DESIGN.md "Propagation": the injector never writes a value longer than
/// `MAX_PROPAGATION_VALUE_LEN`, whichever propagator calls it.
#[test]
fn the_injector_refuses_64_kib_values() {
    let mut properties = props(&[("unit", "celsius")]);
    let mut injector = UserPropertiesInjector::new(&mut properties);
    for name in [TRACEPARENT, TRACESTATE, BAGGAGE] {
        injector.set(name, huge_value(name));
    }
    injector.set(TRACESTATE, "x".repeat(MAX_PROPAGATION_VALUE_LEN + 1));
    assert_eq!(properties, props(&[("unit", "celsius")]));
}

/// DESIGN.md "Propagation" (oversized values are dropped, never forwarded; existing properties
/// are kept): a gateway that republishes a received message with its user properties and the
/// new context must not pass the upstream's 64 KiB tracestate and baggage on, next to a
/// traceparent they do not belong to.
///
/// Regression: found by this suite (the injector returned before removing a stale property, and
/// `inject_parts` never set an empty `tracestate`/`baggage`); fixed in d7c1dab.
#[test]
fn forwarded_properties_do_not_carry_oversized_values() {
    let mut properties = props(&[
        ("unit", "celsius"),
        (TRACEPARENT, TP),
        (TRACESTATE, &huge_value(TRACESTATE)),
        (BAGGAGE, &huge_value(BAGGAGE)),
    ]);
    let extracted = extract(&properties);
    // The new hop's span: a child in the same trace, trace state inherited (none was kept).
    let child = SpanContext::new(
        TraceId::from(TRACE_ID),
        SpanId::from(0x1111_2222_3333_4444),
        TraceFlags::SAMPLED,
        false,
        remote(&extracted).trace_state().clone(),
    );
    W3CPropagator::new().inject_context(
        &Context::new().with_remote_span_context(child),
        &mut UserPropertiesInjector::new(&mut properties),
    );
    assert_eq!(properties[0], ("unit".to_owned(), "celsius".to_owned()));
    for (name, size) in propagation_sizes(&properties) {
        assert!(
            size <= MAX_PROPAGATION_VALUE_LEN,
            "a {size}-byte {name} was forwarded"
        );
    }
}

/// Same rule, at its smallest: a tracestate whose traceparent is replaced must not survive the
/// replacement (W3C 3.3: tracestate belongs to the traceparent it came with). Regression, as
/// above.
#[test]
fn a_stale_tracestate_does_not_survive_a_new_traceparent() {
    let mut properties = props(&[(TRACEPARENT, TP), (TRACESTATE, "upstream=1")]);
    let fresh = SpanContext::new(
        TraceId::from(0x1234),
        SpanId::from(0x5678),
        TraceFlags::SAMPLED,
        false,
        TraceState::NONE,
    );
    W3CPropagator::new().inject_context(
        &Context::new().with_remote_span_context(fresh),
        &mut UserPropertiesInjector::new(&mut properties),
    );
    assert_eq!(
        propagation_sizes(&properties),
        [(TRACEPARENT, 55)],
        "{properties:?}"
    );
}

/// DESIGN.md "Propagation": every oversized field at once, among 10,000 other properties, is
/// handled in one pass per name (no quadratic blowup: this completes; no time is asserted).
#[test]
fn three_64_kib_fields_among_10_000_properties() {
    let mut properties: Vec<(String, String)> = (0..10_000)
        .map(|i| (format!("p{i}"), format!("v{i}")))
        .collect();
    for name in [TRACEPARENT, TRACESTATE, BAGGAGE] {
        properties.insert(5_000, (name.to_owned(), huge_value(name)));
    }
    let extracted = extract(&properties);
    assert!(!remote(&extracted).is_valid());
    assert!(matches!(
        extracted.traceparent_error,
        Some(TraceparentError::Oversized(_))
    ));
    assert_eq!(extracted.context.baggage().len(), 0);
    assert_eq!(
        UserPropertiesExtractor::new(&properties).keys().len(),
        10_003
    );
}

/// MQTT 5 3.3.2.3.7 (user properties may repeat, any number) + W3C 3.2: 10,000 properties
/// without a traceparent start a new trace with no error; with one valid traceparent among them
/// (first, middle, last) it is found.
#[test]
fn ten_thousand_user_properties() {
    let filler: Vec<(String, String)> = (0..10_000)
        .map(|i| (format!("key-{i}"), "x".repeat(i % 100)))
        .collect();
    let extracted = extract(&filler);
    assert!(!remote(&extracted).is_valid());
    assert_eq!(extracted.traceparent_error, None, "missing is not an error");
    assert_eq!(
        extract_span_context(&UserPropertiesExtractor::new(&filler)).unwrap_err(),
        TraceparentError::Missing
    );

    for at in [0, 5_000, 10_000] {
        let mut properties = filler.clone();
        properties.insert(at, (TRACEPARENT.to_owned(), TP.to_owned()));
        let extracted = extract(&properties);
        assert_eq!(
            remote(&extracted).trace_id(),
            TraceId::from(TRACE_ID),
            "{at}"
        );
        assert_eq!(extracted.traceparent_error, None);
    }

    // 10,000 properties that all look like propagation fields but differ in case: MQTT strings
    // are case sensitive, so none of them is the traceparent.
    let lookalikes: Vec<(String, String)> = (0..10_000)
        .map(|i| {
            let name = if i % 2 == 0 {
                "Traceparent"
            } else {
                "TRACEPARENT"
            };
            (name.to_owned(), TP.to_owned())
        })
        .collect();
    assert_eq!(extract(&lookalikes).traceparent_error, None);
    assert!(!remote(&extract(&lookalikes)).is_valid());
}

/// DESIGN.md "Propagation" ("Two traceparent properties: treat as invalid and start a new
/// trace"), W3C 3.2: 100 duplicate traceparents, identical or not, give
/// `TraceparentError::Duplicate(100)` and a new trace.
#[test]
fn one_hundred_duplicate_traceparents_start_a_new_trace() {
    let identical: Vec<(String, String)> = (0..100)
        .map(|_| (TRACEPARENT.to_owned(), TP.to_owned()))
        .collect();
    let distinct: Vec<(String, String)> = (1..=100_u64)
        .map(|i| {
            let value = format!("00-{TRACE_ID:032x}-{i:016x}-01");
            (TRACEPARENT.to_owned(), value)
        })
        .collect();
    let mut mixed = distinct.clone();
    mixed.extend((0..10_000).map(|i| (format!("k{i}"), String::new())));
    mixed.push((TRACESTATE.to_owned(), "rojo=1".to_owned()));

    for properties in [&identical, &distinct, &mixed] {
        let extracted = extract(properties);
        assert!(!remote(&extracted).is_valid());
        assert_eq!(
            extracted.traceparent_error,
            Some(TraceparentError::Duplicate(100))
        );
        assert_eq!(extracted.tracestate_error, None);
        assert_eq!(
            extract_span_context(&UserPropertiesExtractor::new(properties)).unwrap_err(),
            TraceparentError::Duplicate(100)
        );
    }
}

/// W3C 3.3.1 + DESIGN.md ("tracestate: at most 32 members"; several tracestates are one list): a
/// thousand tracestate properties (one list of 1,000 members), or one of 10,000 members, lose the
/// trace state, not the trace.
#[test]
fn floods_of_tracestate_keep_the_trace() {
    let mut properties = props(&[(TRACEPARENT, TP)]);
    properties.extend((0..1_000).map(|i| (TRACESTATE.to_owned(), format!("k{i}=v"))));
    let extracted = extract(&properties);
    assert!(remote(&extracted).is_valid());
    assert_eq!(*remote(&extracted).trace_state(), TraceState::NONE);

    // 10,000 empty list-members are skipped (W3C 3.3.1.1), so this one is valid.
    let commas = format!("{}a=1", ",".repeat(MAX_PROPAGATION_VALUE_LEN - 3));
    let extracted = extract(&props(&[(TRACEPARENT, TP), (TRACESTATE, &commas)]));
    assert_eq!(remote(&extracted).trace_state().get("a"), Some("1"));

    let many: String = (0..2_000).map(|i| format!("k{i}=v,")).collect();
    let extracted = extract(&props(&[(TRACEPARENT, TP), (TRACESTATE, &many[..8_000])]));
    assert!(remote(&extracted).is_valid());
    assert_eq!(*remote(&extracted).trace_state(), TraceState::NONE);
    assert!(extracted.tracestate_error.is_some());
}

/// W3C Baggage 3.3: at most 64 list-members are read from one value, however many it has.
#[test]
fn a_baggage_of_1_000_members_yields_at_most_64() {
    let members: Vec<String> = (0..1_000).map(|i| format!("k{i}=1")).collect();
    let value = members.join(",");
    assert!(value.len() <= MAX_PROPAGATION_VALUE_LEN);
    let extracted = extract(&props(&[(TRACEPARENT, TP), (BAGGAGE, &value)]));
    assert_eq!(extracted.context.baggage().len(), 64);
}

/// W3C Baggage 3.2.1 (list-members are separated by `,`; a property is `key[=value]` of
/// baggage-octets and OWS, where `,` has no place): baggage metadata that contains a `,` must not
/// turn into extra list-members at the receiver.
#[test]
fn baggage_metadata_cannot_inject_entries() {
    use opentelemetry::baggage::KeyValueMetadata;

    let context = sampled_context(TraceState::NONE).with_baggage(vec![KeyValueMetadata::new(
        "k",
        "v",
        "p=1,evil=2",
    )]);
    let mut properties = Vec::new();
    W3CPropagator::new()
        .inject_context(&context, &mut UserPropertiesInjector::new(&mut properties));
    let extracted = extract(&properties);
    let baggage = extracted.context.baggage();
    assert_eq!(baggage.get("evil"), None, "{properties:?}");
    assert_eq!(baggage.len(), 1);
}

// ---------------------------------------------------------------------------------------------
// MQTT 3.1.1 envelope
// ---------------------------------------------------------------------------------------------

fn decode(wire: &[u8]) -> Result<Option<envelope::Envelope>, EnvelopeError> {
    envelope::decode(&Bytes::copy_from_slice(wire))
}

/// The wire bytes of an envelope with a raw header block and a given header length.
fn raw_envelope(version: u8, header_len: u16, block: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut wire = envelope::MAGIC.to_vec();
    wire.push(version);
    wire.extend_from_slice(&header_len.to_be_bytes());
    wire.extend_from_slice(block);
    wire.extend_from_slice(payload);
    wire
}

fn block_len(block: &[u8]) -> u16 {
    u16::try_from(block.len()).unwrap()
}

/// DESIGN.md "Envelope format" (magic, version, u16 header length, pairs that fill it):
/// a valid envelope truncated at every possible length is either not an envelope (shorter
/// than the magic), a typed error (prefix or header cut), or a valid envelope whose payload is
/// the part that arrived. Never a panic, never a header taken from the payload.
#[test]
fn an_envelope_truncated_at_every_length() {
    let headers = [(TRACEPARENT, TP), (TRACESTATE, "rojo=00f067aa0ba902b7")];
    let payload = b"{\"temp\":21.5}";
    let wire = envelope::encode(&headers, payload).unwrap();
    let header_end = wire.len() - payload.len();
    for cut in 0..=wire.len() {
        let result = decode(&wire[..cut]);
        match cut {
            0..4 => assert_eq!(result, Ok(None), "cut {cut}"),
            4..7 => assert_eq!(
                result,
                Err(EnvelopeError::TruncatedPrefix { len: cut }),
                "cut {cut}"
            ),
            _ if cut < header_end => assert_eq!(
                result,
                Err(EnvelopeError::HeaderPastEnd {
                    header_len: header_end - envelope::PREFIX_LEN,
                    available: cut - envelope::PREFIX_LEN,
                }),
                "cut {cut}"
            ),
            _ => {
                let envelope = result.unwrap().unwrap();
                assert_eq!(envelope.headers().collect::<Vec<_>>(), headers);
                assert_eq!(&envelope.payload()[..], &payload[..cut - header_end]);
            }
        }
    }
}

/// Same rule, with the header length telling the truth about a cut header block: a block cut
/// inside a field is `FieldPastEnd`; cut between two fields of a pair it is `FieldPastEnd` (a key
/// without its value); cut between pairs it is a valid envelope with fewer headers.
#[test]
fn a_header_block_truncated_at_every_length() {
    let headers = [(TRACEPARENT, TP), ("k", ""), ("", "v")];
    let full = envelope::encode(&headers, b"").unwrap();
    let block = &full[envelope::PREFIX_LEN..];
    // Offsets (in the block) where a pair ends.
    let mut pair_ends = vec![0];
    for (key, value) in headers {
        pair_ends.push(pair_ends.last().unwrap() + 4 + key.len() + value.len());
    }
    for cut in 0..=block.len() {
        let wire = raw_envelope(1, block_len(&block[..cut]), &block[..cut], b"payload");
        let result = decode(&wire);
        if let Some(pairs) = pair_ends.iter().position(|&end| end == cut) {
            let envelope = result.unwrap().unwrap();
            assert_eq!(envelope.headers().collect::<Vec<_>>(), headers[..pairs]);
            assert_eq!(&envelope.payload()[..], b"payload");
        } else {
            assert!(
                matches!(result, Err(EnvelopeError::FieldPastEnd { offset }) if offset >= envelope::PREFIX_LEN && offset <= envelope::PREFIX_LEN + cut),
                "cut {cut}: {result:?}"
            );
        }
    }
}

/// DESIGN.md "Envelope format": a header length larger than what follows is `HeaderPastEnd`,
/// up to the largest the u16 can claim.
#[test]
fn a_header_length_that_lies_is_a_typed_error() {
    let block = [0, 1, b'k', 0, 1, b'v'];
    for (header_len, payload_len) in [
        (7_u16, 0_usize),
        (100, 50),
        (u16::MAX, 0),
        (u16::MAX, 65_528),
    ] {
        let payload = vec![b'p'; payload_len];
        let wire = raw_envelope(1, header_len, &block, &payload);
        assert_eq!(
            decode(&wire),
            Err(EnvelopeError::HeaderPastEnd {
                header_len: usize::from(header_len),
                available: block.len() + payload_len,
            })
        );
    }
    // Exactly enough bytes: the payload is then taken as header and must be well-formed.
    let wire = raw_envelope(1, u16::MAX, &vec![0; usize::from(u16::MAX)], b"");
    assert!(matches!(
        decode(&wire),
        Ok(Some(_)) | Err(EnvelopeError::FieldPastEnd { .. })
    ));
}

/// DESIGN.md "Envelope format": a key or value length past the end of the header block is
/// `FieldPastEnd`, even when the payload after the block has the bytes (the block is a hard
/// boundary: no header is read from the payload).
#[test]
fn a_field_length_that_lies_is_a_typed_error() {
    let cases: [&[u8]; 5] = [
        &[0, 9, b'k'],                   // key length past the block
        &[0xFF, 0xFF, b'k', b'e', b'y'], // the largest key length
        &[0, 1, b'k', 0, 5, b'v'],       // value length past the block
        &[0, 1, b'k', 0xFF, 0xFF],       // the largest value length
        &[0, 1, b'k', 0],                // a value length cut in half
    ];
    for block in cases {
        let wire = raw_envelope(1, block_len(block), block, &[b'x'; 70_000]);
        assert!(
            matches!(decode(&wire), Err(EnvelopeError::FieldPastEnd { .. })),
            "{block:?}: {:?}",
            decode(&wire)
        );
    }
}

/// DESIGN.md "Envelope format" (header = pairs of key and value): an odd number of fields
/// leaves a key without its value: `FieldPastEnd` at the end of the block.
#[test]
fn an_odd_field_count_is_a_typed_error() {
    for fields in [1, 3, 5, 99] {
        let mut block = Vec::new();
        for i in 0..fields {
            let text = format!("f{i}");
            block.extend_from_slice(&u16::try_from(text.len()).unwrap().to_be_bytes());
            block.extend_from_slice(text.as_bytes());
        }
        let wire = raw_envelope(1, block_len(&block), &block, b"payload");
        assert_eq!(
            decode(&wire),
            Err(EnvelopeError::FieldPastEnd {
                offset: envelope::PREFIX_LEN + block.len()
            }),
            "{fields} fields"
        );
    }
}

/// DESIGN.md "Envelope format" (UTF-8 keys and values): invalid UTF-8 in a key or value is
/// `InvalidUtf8` at the field's offset, whatever the kind of invalidity.
#[test]
fn invalid_utf8_in_keys_and_values_is_a_typed_error() {
    let invalid: [&[u8]; 7] = [
        b"\xff",             // never valid
        b"\x80",             // a lone continuation byte
        b"\xc3",             // a sequence cut at the end of the field
        b"\xc0\xaf",         // an overlong encoding of '/'
        b"\xed\xa0\x80",     // a UTF-16 surrogate encoded in UTF-8
        b"\xf4\x90\x80\x80", // past U+10FFFF
        b"ok\xe2\x82",       // valid, then cut
    ];
    for bad in invalid {
        let len = u16::try_from(bad.len()).unwrap().to_be_bytes();
        // As the key.
        let mut block = len.to_vec();
        block.extend_from_slice(bad);
        block.extend_from_slice(&[0, 1, b'v']);
        let wire = raw_envelope(1, block_len(&block), &block, b"p");
        assert_eq!(
            decode(&wire),
            Err(EnvelopeError::InvalidUtf8 {
                offset: envelope::PREFIX_LEN + 2
            }),
            "key {bad:?}"
        );
        // As the value.
        let mut block = vec![0, 1, b'k'];
        block.extend_from_slice(&len);
        block.extend_from_slice(bad);
        let wire = raw_envelope(1, block_len(&block), &block, b"p");
        assert_eq!(
            decode(&wire),
            Err(EnvelopeError::InvalidUtf8 {
                offset: envelope::PREFIX_LEN + 5
            }),
            "value {bad:?}"
        );
    }
    // Invalid UTF-8 in the payload is the application's business: not an envelope error.
    let wire = envelope::encode(&[("k", "v")], b"\xff\xfe").unwrap();
    assert_eq!(&decode(&wire).unwrap().unwrap().payload()[..], b"\xff\xfe");
}

/// DESIGN.md "Envelope format" (version byte 0x01): every other version is
/// `UnsupportedVersion`, before anything else is read.
#[test]
fn unknown_versions_are_a_typed_error() {
    for version in (0..=u8::MAX).filter(|&v| v != envelope::VERSION) {
        let wire = raw_envelope(version, 0xFFFF, b"", b"");
        assert_eq!(
            decode(&wire),
            Err(EnvelopeError::UnsupportedVersion(version))
        );
    }
}

/// DESIGN.md "Envelope format" (u16 header length): encoding refuses a header block over
/// 65,535 bytes with `HeaderTooLarge`; exactly 65,535 is written and read back.
#[test]
fn header_blocks_at_and_past_the_u16_limit() {
    let at_limit = "v".repeat(envelope::MAX_HEADER_LEN - 4 - 1);
    let wire = envelope::encode(&[("k", at_limit.as_str())], b"p").unwrap();
    let decoded = decode(&wire).unwrap().unwrap();
    assert_eq!(decoded.header_len(), envelope::MAX_HEADER_LEN);
    assert_eq!(decoded.headers().next(), Some(("k", at_limit.as_str())));
    // Longer than the propagation limit: present, but not used as a propagation value.
    assert_eq!(decoded.get("k"), None);

    let past = "v".repeat(envelope::MAX_HEADER_LEN - 4);
    assert_eq!(
        envelope::encode(&[("k", past.as_str())], b"p"),
        Err(EnvelopeError::HeaderTooLarge(envelope::MAX_HEADER_LEN + 1))
    );
    // Many small headers that add up past the limit, and lengths that would overflow.
    let many = vec![("k", "v"); 20_000];
    assert!(matches!(
        envelope::encode(&many, b""),
        Err(EnvelopeError::HeaderTooLarge(_))
    ));
}

/// DESIGN.md "Propagation" applied to the envelope: 100 duplicate traceparent headers start a
/// new trace (Duplicate(100)), and an oversized one is rejected.
#[test]
fn envelope_headers_follow_the_propagation_rules() {
    let headers = vec![(TRACEPARENT, TP); 100];
    let wire = envelope::encode(&headers, b"p").unwrap();
    let decoded = decode(&wire).unwrap().unwrap();
    assert_eq!(
        extract_span_context(&decoded).unwrap_err(),
        TraceparentError::Duplicate(100)
    );
    let huge = huge_value(TRACEPARENT)[..60_000].to_owned();
    let wire = envelope::encode(&[(TRACEPARENT, huge.as_str())], b"p").unwrap();
    let decoded = decode(&wire).unwrap().unwrap();
    assert_eq!(
        extract_span_context(&decoded).unwrap_err(),
        TraceparentError::Oversized(60_000)
    );
}

/// The hostile envelopes of the tests above, as (name, payload, expected error).
fn hostile_envelopes() -> Vec<(&'static str, Vec<u8>, EnvelopeError)> {
    let good = envelope::encode(&[(TRACEPARENT, TP)], b"21.5").unwrap();
    vec![
        (
            "magic only",
            envelope::MAGIC.to_vec(),
            EnvelopeError::TruncatedPrefix { len: 4 },
        ),
        (
            "truncated prefix",
            good[..6].to_vec(),
            EnvelopeError::TruncatedPrefix { len: 6 },
        ),
        (
            "truncated header",
            good[..30].to_vec(),
            EnvelopeError::HeaderPastEnd {
                header_len: good.len() - 4 - envelope::PREFIX_LEN,
                available: 30 - envelope::PREFIX_LEN,
            },
        ),
        (
            "header length 65535",
            raw_envelope(1, u16::MAX, b"", b"payload"),
            EnvelopeError::HeaderPastEnd {
                header_len: 65_535,
                available: 7,
            },
        ),
        (
            "field length past the block",
            raw_envelope(1, 3, &[0, 9, b'k'], b"payload"),
            EnvelopeError::FieldPastEnd { offset: 7 },
        ),
        (
            "odd field count",
            raw_envelope(1, 3, &[0, 1, b'k'], b"payload"),
            EnvelopeError::FieldPastEnd { offset: 10 },
        ),
        (
            "invalid UTF-8 key",
            raw_envelope(1, 6, &[0, 1, 0xFF, 0, 1, b'v'], b"payload"),
            EnvelopeError::InvalidUtf8 { offset: 9 },
        ),
        (
            "invalid UTF-8 value",
            raw_envelope(1, 6, &[0, 1, b'k', 0, 1, 0x80], b"payload"),
            EnvelopeError::InvalidUtf8 { offset: 12 },
        ),
        (
            "version 2",
            raw_envelope(2, 0, b"", b"payload"),
            EnvelopeError::UnsupportedVersion(2),
        ),
        (
            "version 0xff",
            raw_envelope(0xFF, 0, b"", b"payload"),
            EnvelopeError::UnsupportedVersion(0xFF),
        ),
    ]
}

#[test]
fn hostile_envelopes_are_typed_errors() {
    for (name, wire, expected) in hostile_envelopes() {
        assert_eq!(decode(&wire), Err(expected), "{name}");
    }
}

fn rejected_reasons(span: &SpanData) -> Vec<String> {
    span.events
        .events
        .iter()
        .filter(|event| event.name == "mqtt.propagation.rejected")
        .flat_map(|event| event.attributes.iter())
        .filter(|kv: &&KeyValue| kv.key.as_str() == "reason")
        .map(|kv| kv.value.as_str().into_owned())
        .collect()
}

/// DESIGN.md "Envelope format": "Malformed envelope: deliver the payload unchanged and record the
/// problem; never panic." A plain rumqttc MQTT 3.1.1 publisher sends every hostile envelope
/// through mosquitto; the traced subscriber hands each one to the application byte for byte, and
/// its receive span records the typed error. A valid envelope, sent last, is still stripped.
#[tokio::test(flavor = "multi_thread")]
async fn the_v4_subscriber_delivers_hostile_envelopes_unchanged() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    use rumqttc_opentelemetry::v4::TracedClient;

    let broker = Broker::start();
    let telemetry = Telemetry::new();
    let topic = "hostile/envelope";
    let options = |prefix: &str| {
        let mut options = MqttOptions::new(
            common::unique_client_id(prefix),
            broker.host(),
            broker.port(),
        );
        options.set_max_packet_size(1 << 20, 1 << 20);
        options
    };

    let (subscriber, mut sub_loop) = TracedClient::with_instrumentation(
        options("hostile-sub"),
        100,
        telemetry.instrumentation(),
    );
    subscriber.subscribe(topic, QoS::AtLeastOnce).await.unwrap();
    timeout(DEADLINE, async {
        loop {
            if let Event::Incoming(Packet::SubAck(_)) = sub_loop.poll().await.unwrap() {
                break;
            }
        }
    })
    .await
    .expect("suback");

    let cases = hostile_envelopes();
    let (publisher, mut pub_loop) = AsyncClient::new(options("hostile-pub"), 100);
    for (_, wire, _) in &cases {
        publisher
            .publish(topic, QoS::AtLeastOnce, false, wire.clone())
            .await
            .unwrap();
    }
    publisher
        .publish(
            topic,
            QoS::AtLeastOnce,
            false,
            envelope::encode(&[(TRACEPARENT, TP)], b"21.5").unwrap(),
        )
        .await
        .unwrap();
    let driver = tokio::spawn(async move {
        loop {
            if pub_loop.poll().await.is_err() {
                break;
            }
        }
    });

    let mut received = Vec::new();
    timeout(DEADLINE, async {
        while received.len() < cases.len() + 1 {
            if let Event::Incoming(Packet::Publish(publish)) = sub_loop.poll().await.unwrap() {
                received.push(publish.payload.to_vec());
            }
        }
    })
    .await
    .expect("every message within the deadline");
    driver.abort();

    for ((name, wire, _), got) in cases.iter().zip(&received) {
        assert_eq!(got, wire, "{name}: payload changed");
    }
    assert_eq!(
        received[cases.len()],
        b"21.5",
        "a valid envelope is stripped"
    );

    let spans: Vec<SpanData> = telemetry
        .spans_of(SpanKind::Client)
        .into_iter()
        .filter(|span| span.name.starts_with("receive"))
        .collect();
    assert_eq!(spans.len(), cases.len() + 1);
    for ((name, _, error), span) in cases.iter().zip(&spans) {
        assert_eq!(
            rejected_reasons(span),
            [error.to_string()],
            "{name}: receive span events"
        );
        assert_eq!(span.parent_span_id, SpanId::INVALID, "{name}: new trace");
    }
    let last = &spans[cases.len()];
    assert!(rejected_reasons(last).is_empty());
    assert_eq!(last.span_context.trace_id(), TraceId::from(TRACE_ID));
}

/// DESIGN.md "Propagation" end to end: a plain rumqttc MQTT 5 publisher sends 64 KiB (the
/// largest an MQTT string holds: 65,535 bytes) traceparent, tracestate and baggage user properties through mosquitto; the traced
/// subscriber starts a new trace, records why, and hands the message over with every user
/// property intact (nothing is lost: stripping is the application's call).
#[tokio::test(flavor = "multi_thread")]
async fn the_v5_subscriber_survives_64_kib_propagation_properties() {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    use rumqttc_opentelemetry::v5::TracedClient;

    let broker = Broker::start();
    let telemetry = Telemetry::new();
    let topic = "hostile/properties";
    let options = |prefix: &str| {
        let mut options = MqttOptions::new(
            common::unique_client_id(prefix),
            broker.host(),
            broker.port(),
        );
        options.set_max_packet_size(Some(1 << 20));
        options
    };

    let (subscriber, mut sub_loop) = TracedClient::with_instrumentation(
        options("hostile5-sub"),
        10,
        telemetry.instrumentation(),
    );
    subscriber.subscribe(topic, QoS::AtLeastOnce).await.unwrap();
    timeout(DEADLINE, async {
        loop {
            if let Event::Incoming(Packet::SubAck(_)) = sub_loop.poll().await.unwrap() {
                break;
            }
        }
    })
    .await
    .expect("suback");

    let user_properties = props(&[
        ("unit", "celsius"),
        (TRACEPARENT, &wire_max_value(TRACEPARENT)),
        (TRACESTATE, &wire_max_value(TRACESTATE)),
        (BAGGAGE, &wire_max_value(BAGGAGE)),
    ]);
    let (publisher, mut pub_loop) = AsyncClient::new(options("hostile5-pub"), 10);
    let properties = PublishProperties {
        user_properties: user_properties.clone(),
        ..PublishProperties::default()
    };
    publisher
        .publish_with_properties(topic, QoS::AtLeastOnce, false, "21.5", properties)
        .await
        .unwrap();
    let driver = tokio::spawn(async move {
        loop {
            if pub_loop.poll().await.is_err() {
                break;
            }
        }
    });

    let publish = timeout(DEADLINE, async {
        loop {
            if let Event::Incoming(Packet::Publish(publish)) = sub_loop.poll().await.unwrap() {
                return publish;
            }
        }
    })
    .await
    .expect("the message within the deadline");
    driver.abort();

    assert_eq!(&publish.payload[..], b"21.5");
    let delivered = publish.properties.expect("properties").user_properties;
    assert_eq!(delivered, user_properties, "user properties changed");

    let spans: Vec<SpanData> = telemetry
        .spans_of(SpanKind::Client)
        .into_iter()
        .filter(|span| span.name.starts_with("receive"))
        .collect();
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].parent_span_id, SpanId::INVALID);
    assert_ne!(spans[0].span_context.trace_id(), TraceId::from(TRACE_ID));
    let reasons = rejected_reasons(&spans[0]);
    assert_eq!(
        reasons,
        [TraceparentError::Oversized(usize::from(u16::MAX)).to_string()]
    );
}

// ---------------------------------------------------------------------------------------------
// Topics
// ---------------------------------------------------------------------------------------------

/// [MQTT-4.7.3-3]: topic names and filters "MUST NOT encode to more than 65,535 bytes": exactly
/// 65,535 bytes is valid everywhere (validation, matching, the filter set).
#[test]
fn a_65_535_byte_topic_is_valid() {
    let topic = "a".repeat(MAX_TOPIC_LEN);
    assert_eq!(validate_topic_name(&topic), Ok(()));
    assert_eq!(validate_topic_filter(&topic), Ok(()));
    assert!(matches(&topic, &topic));
    assert!(matches(&topic, "#"));
    assert!(matches(&topic, "+"));

    // 65,535 levels, all but the last empty, as name and filter.
    let levels = format!("{}a", "/".repeat(MAX_TOPIC_LEN - 1));
    assert_eq!(levels.len(), MAX_TOPIC_LEN);
    assert_eq!(validate_topic_name(&levels), Ok(()));
    assert!(matches(&levels, &levels));
    let plus_filter = format!("{}+", "/".repeat(MAX_TOPIC_LEN - 1));
    assert!(matches(&levels, &plus_filter));

    // Multi-byte characters count in bytes: 21,845 × '€' (3 bytes) = 65,535 bytes.
    let euro = "€".repeat(MAX_TOPIC_LEN / 3);
    assert_eq!(euro.len(), MAX_TOPIC_LEN);
    assert_eq!(validate_topic_name(&euro), Ok(()));

    let mut set = TopicFilterSet::new();
    set.insert(&topic, 1).unwrap();
    set.insert(&levels, 2).unwrap();
    set.insert(&plus_filter, 3).unwrap();
    set.insert("#", 4).unwrap();
    let mut hits: Vec<i32> = set.matches(&topic).copied().collect();
    hits.sort_unstable();
    assert_eq!(hits, [1, 4]);
    let mut hits: Vec<i32> = set.matches(&levels).copied().collect();
    hits.sort_unstable();
    assert_eq!(hits, [2, 3, 4]);
    assert_eq!(set.remove(&levels), Some(2));
}

/// [MQTT-4.7.3-3]: 65,536 bytes is `TopicError::TooLong`, as a name, a filter, a shared filter,
/// and in the filter set; it never matches.
#[test]
fn a_65_536_byte_topic_is_too_long() {
    let topic = "a".repeat(MAX_TOPIC_LEN + 1);
    let too_long = Err(TopicError::TooLong {
        len: MAX_TOPIC_LEN + 1,
    });
    assert_eq!(validate_topic_name(&topic), too_long);
    assert_eq!(validate_topic_filter(&topic), too_long);
    assert!(!matches(&topic, "#"));
    assert!(!matches("a", &topic));
    assert!(!matches(&topic, &topic));

    let shared = format!("$share/g/{}", "a".repeat(MAX_TOPIC_LEN + 1 - 9));
    assert_eq!(validate_topic_filter(&shared), too_long);

    // Bytes, not characters: 21,846 × '€' is 65,538 bytes.
    let euro = "€".repeat(MAX_TOPIC_LEN / 3 + 1);
    assert_eq!(
        validate_topic_name(&euro),
        Err(TopicError::TooLong { len: euro.len() })
    );

    let mut set = TopicFilterSet::new();
    assert_eq!(set.insert(&topic, ()), too_long);
    set.insert("#", ()).unwrap();
    assert_eq!(set.matches(&topic).count(), 0);
    // A huge, invalid input is rejected without being walked.
    let huge = "a/".repeat(1 << 20);
    assert!(matches!(
        validate_topic_name(&huge),
        Err(TopicError::TooLong { .. })
    ));
    assert_eq!(set.matches(&huge).count(), 0);
}

/// [MQTT-4.7.3-2]: no U+0000 in topic names and filters: `TopicError::NullCharacter` at its
/// byte position, wherever it is (alone, in a level, next to wildcards, in a share name, last).
#[test]
fn u_0000_in_a_filter_is_a_typed_error() {
    let cases = [
        ("\0", 0),
        ("a\0", 1),
        ("sport/\0/#", 6),
        ("sport/+/\0", 8),
        ("\0/#", 0),
        ("$share/g\0/a", 8),
        ("$share/g/a\0", 10),
        ("a/b/c/d/e/f/g/h/i\0", 17),
    ];
    for (filter, position) in cases {
        assert_eq!(
            validate_topic_filter(filter),
            Err(TopicError::NullCharacter { position }),
            "{filter:?}"
        );
        assert!(!matches("a", filter));
        assert!(!matches(filter, "#"));
    }
    assert_eq!(
        validate_topic_name("home/\0"),
        Err(TopicError::NullCharacter { position: 5 })
    );
    // Long enough for the eight-bytes-at-a-time scan, with the NUL in every position.
    let base = "abcdefghijklmnopqrstuvwxyz".to_owned();
    for position in 0..base.len() {
        let mut filter = base.clone().into_bytes();
        filter[position] = 0;
        let filter = String::from_utf8(filter).unwrap();
        assert_eq!(
            validate_topic_filter(&filter),
            Err(TopicError::NullCharacter { position })
        );
        assert_eq!(
            validate_topic_name(&filter),
            Err(TopicError::NullCharacter { position })
        );
    }
}

/// [MQTT-4.7.1-1], [MQTT-4.7.1-2], [MQTT-4.7.3-1..3], [MQTT-4.8.2-1/2]: `TopicFilterSet::insert`
/// rejects every invalid filter with the typed error of `validate_topic_filter`, and leaves the
/// set unchanged.
#[test]
fn the_filter_set_rejects_invalid_filters_with_typed_errors() {
    let cases = [
        ("", TopicError::Empty),
        (
            "sport/tennis#",
            TopicError::MisplacedMultiLevelWildcard { position: 12 },
        ),
        (
            "#/a",
            TopicError::MisplacedMultiLevelWildcard { position: 0 },
        ),
        (
            "a/#/",
            TopicError::MisplacedMultiLevelWildcard { position: 2 },
        ),
        (
            "##",
            TopicError::MisplacedMultiLevelWildcard { position: 0 },
        ),
        (
            "sport+",
            TopicError::MisplacedSingleLevelWildcard { position: 5 },
        ),
        (
            "+a/b",
            TopicError::MisplacedSingleLevelWildcard { position: 0 },
        ),
        (
            "a/++",
            TopicError::MisplacedSingleLevelWildcard { position: 2 },
        ),
        ("a\0", TopicError::NullCharacter { position: 1 }),
        ("$share//a", TopicError::EmptyShareName),
        ("$share/", TopicError::EmptyShareName),
        ("$share/g+/a", TopicError::InvalidShareName { position: 8 }),
        ("$share/#/a", TopicError::InvalidShareName { position: 7 }),
        ("$share/g", TopicError::MissingSharedFilter),
        ("$share/g/", TopicError::MissingSharedFilter),
        (
            "$share/g/a#",
            TopicError::MisplacedMultiLevelWildcard { position: 10 },
        ),
    ];
    let mut set = TopicFilterSet::new();
    set.insert("keep/#", 0).unwrap();
    for (filter, error) in cases {
        assert_eq!(
            validate_topic_filter(filter),
            Err(error.clone()),
            "{filter:?}"
        );
        assert_eq!(set.insert(filter, 1), Err(error), "{filter:?}");
        assert_eq!(set.len(), 1);
        assert_eq!(set.remove(filter), None);
        assert!(!set.contains(filter));
    }
    let too_long = "a".repeat(MAX_TOPIC_LEN + 1);
    assert_eq!(
        set.insert(&too_long, 1),
        Err(TopicError::TooLong {
            len: MAX_TOPIC_LEN + 1
        })
    );
    assert_eq!(set.iter().collect::<Vec<_>>(), [("keep/#", &0)]);
}

// ---------------------------------------------------------------------------------------------
// JSON fields
// ---------------------------------------------------------------------------------------------

const WANTED: [&str; 3] = [TRACEPARENT, TRACESTATE, BAGGAGE];

/// Runs `f` on a thread with a small stack, so that recursion on input depth would overflow.
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(128 * 1024)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

/// json_fields docs ("Nesting depth": validated without recursion, any depth accepted):
/// a million nested arrays and objects inside a member are accepted and kept byte for byte,
/// on a 128 KiB stack; unbalanced nesting is `Malformed` at the end of the payload.
#[test]
fn deeply_nested_json_does_not_overflow_the_stack() {
    on_small_stack(|| {
        let depth = 1_000_000;
        let arrays = format!(
            r#"{{"deep":{}{},"tail":1}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        );
        let objects = format!(
            r#"{{"deep":{}1{},"tail":1}}"#,
            r#"{"a":"#.repeat(depth),
            "}".repeat(depth)
        );
        for payload in [arrays, objects] {
            let fields = JsonFields::parse(payload.as_bytes(), &WANTED).unwrap();
            assert!(fields.is_empty());
            let out = json_fields::inject(payload.as_bytes(), &[(TRACEPARENT, TP)]).unwrap();
            let expected = format!(r#"{{"traceparent":"{TP}",{}"#, &payload[1..]);
            assert!(out == expected.as_bytes(), "the nested value changed");
        }
        let unbalanced = format!(r#"{{"deep":{}"#, "[".repeat(depth));
        assert_eq!(
            JsonFields::parse(unbalanced.as_bytes(), &WANTED),
            Err(JsonFieldsError::Malformed {
                offset: unbalanced.len()
            })
        );
        let mismatched = format!(r#"{{"deep":{}}}}}"#, "[".repeat(depth));
        assert!(matches!(
            json_fields::inject(mismatched.as_bytes(), &[(TRACEPARENT, TP)]),
            Err(JsonFieldsError::Malformed { .. })
        ));
    });
}

/// json_fields docs (strings validated, not limited) + DESIGN.md "Propagation" (oversized values
/// dropped): an 8 MiB string member, key or propagation field is parsed and kept, but a huge
/// traceparent, tracestate or baggage read from it is not used.
#[test]
fn huge_json_strings() {
    let huge = "x".repeat(8 << 20);
    let payload = format!(r#"{{"{huge}":"{huge}","data":"{huge}"}}"#);
    let out = json_fields::inject(payload.as_bytes(), &[(TRACEPARENT, TP)]).unwrap();
    assert_eq!(
        out.len(),
        payload.len() + TP.len() + r#""traceparent":"","#.len()
    );
    let fields = JsonFields::parse(&out, &WANTED).unwrap();
    assert_eq!(fields.get(TRACEPARENT), Some(TP));

    let hostile = format!(
        r#"{{"traceparent":"{}","tracestate":"{}","baggage":"{}"}}"#,
        huge_value(TRACEPARENT),
        huge_value(TRACESTATE),
        huge_value(BAGGAGE)
    );
    let fields = JsonFields::parse(hostile.as_bytes(), &WANTED).unwrap();
    let extracted = W3CPropagator::new().extract_checked(&Context::new(), &fields);
    assert!(!extracted.context.span().span_context().is_valid());
    assert!(matches!(
        extracted.traceparent_error,
        Some(TraceparentError::Oversized(_))
    ));
    assert_eq!(extracted.context.baggage().len(), 0);

    let with_valid_parent = format!(
        r#"{{"traceparent":"{TP}","tracestate":"{}","baggage":"{}"}}"#,
        huge_value(TRACESTATE),
        huge_value(BAGGAGE)
    );
    let fields = JsonFields::parse(with_valid_parent.as_bytes(), &WANTED).unwrap();
    let extracted = W3CPropagator::new().extract_checked(&Context::new(), &fields);
    let span = extracted.context.span();
    assert!(span.span_context().is_valid());
    assert_eq!(*span.span_context().trace_state(), TraceState::NONE);
    assert_eq!(extracted.context.baggage().len(), 0);
}

/// RFC 8259 section 8.1 (JSON text is UTF-8) + json_fields docs: invalid UTF-8 anywhere is
/// `Malformed` at the offset of the first bad byte, from both `parse` and `inject` (the caller
/// then publishes the payload unchanged); it never reaches a `&str`.
#[test]
fn invalid_utf8_in_json_is_malformed_at_its_offset() {
    let cases: [(&[u8], usize); 9] = [
        (b"{\"\xff\":1}", 2),                   // in a key
        (b"{\"a\":\"\xff\"}", 6),               // in a value
        (b"{\"traceparent\":\"00-\xc3\"}", 19), // cut sequence in a wanted value
        (b"{\"a\":\"\xc0\xaf\"}", 6),           // overlong '/'
        (b"{\"a\":\"\xed\xa0\x80\"}", 6),       // encoded surrogate
        (b"{\"a\":\"\xf4\x90\x80\x80\"}", 6),   // past U+10FFFF
        (b"{\"a\":\"ok\\n\xe2\x82\"}", 10),     // after an escape
        (b"{\"a\":[\"x\",\"\x80\"]}", 11),      // nested
        (b"{\"a\":1}\xff", 7),                  // after the object
    ];
    for (payload, offset) in cases {
        let expected = Err(JsonFieldsError::Malformed { offset });
        assert_eq!(
            JsonFields::parse(payload, &WANTED),
            expected,
            "{:?}",
            String::from_utf8_lossy(payload)
        );
        assert_eq!(
            json_fields::inject(payload, &[(TRACEPARENT, TP)]),
            Err(JsonFieldsError::Malformed { offset }),
            "{:?}",
            String::from_utf8_lossy(payload)
        );
    }
    // Outside any string, before the object: not an object at all.
    assert_eq!(
        JsonFields::parse(b"\xff{}", &WANTED),
        Err(JsonFieldsError::NotAnObject)
    );
}

/// json_fields docs ("Duplicate keys") + DESIGN.md ("Two traceparent ... start a new trace"):
/// 1,000 duplicate traceparent members, in any spelling, read as absent and give
/// `Duplicate(1000)`; `inject` removes every one of them and writes one.
#[test]
fn duplicate_json_keys() {
    let members: Vec<String> = (0..1_000)
        .map(|i| {
            if i % 2 == 0 {
                format!(r#""traceparent":"{TP}""#)
            } else {
                format!(r#""trace\u0070arent":"{TP}""#)
            }
        })
        .collect();
    let payload = format!("{{{},\"keep\":true}}", members.join(","));
    let fields = JsonFields::parse(payload.as_bytes(), &WANTED).unwrap();
    assert_eq!(fields.get(TRACEPARENT), None);
    assert_eq!(fields.get_all(TRACEPARENT).len(), 1_000);
    assert_eq!(
        extract_span_context(&fields).unwrap_err(),
        TraceparentError::Duplicate(1_000)
    );

    let fresh = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let out = json_fields::inject(payload.as_bytes(), &[(TRACEPARENT, fresh)]).unwrap();
    assert_eq!(
        String::from_utf8(out.clone()).unwrap(),
        format!(r#"{{"traceparent":"{fresh}","keep":true}}"#)
    );
    let fields = JsonFields::parse(&out, &WANTED).unwrap();
    assert_eq!(fields.get(TRACEPARENT), Some(fresh));

    // A duplicate that is not a string still counts: the string one is not trusted.
    let payload = format!(r#"{{"traceparent":"{TP}","traceparent":null}}"#);
    let fields = JsonFields::parse(payload.as_bytes(), &WANTED).unwrap();
    assert_eq!(fields.get(TRACEPARENT), None);
}

/// DESIGN.md "Propagation" (dropped values are never forwarded) for MQTT 3.1.1 JSON fields: a
/// gateway that re-publishes a JSON payload with a new context must not pass on the upstream's
/// tracestate and baggage members next to the new traceparent. Regression, as above (the JSON
/// injector only removes the names the propagator sets).
#[test]
fn json_fields_do_not_forward_a_stale_tracestate() {
    use rumqttc_opentelemetry::propagation::json_fields::JsonFieldsInjector;

    let payload = format!(
        r#"{{"traceparent":"{TP}","tracestate":"{}","baggage":"{}","t":1}}"#,
        huge_value(TRACESTATE),
        huge_value(BAGGAGE)
    );
    let mut injector = JsonFieldsInjector::new();
    W3CPropagator::new().inject_context(&sampled_context(TraceState::NONE), &mut injector);
    let out = injector.apply(payload.as_bytes()).unwrap();
    let fields = JsonFields::parse(&out, &WANTED).unwrap();
    assert_eq!(fields.get(TRACESTATE), None, "stale tracestate forwarded");
    assert_eq!(fields.get(BAGGAGE), None, "stale baggage forwarded");
}
