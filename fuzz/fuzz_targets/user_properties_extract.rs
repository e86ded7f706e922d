//! W3C extraction from MQTT 5 user properties.
//!
//! The input is a list of user properties. Most entries are shaped like propagation fields
//! (valid `traceparent`s, near-misses, `tracestate`s, `baggage`s) so that the fuzzer reaches the
//! interesting paths; any entry can also be an arbitrary `(String, String)`.
//!
//! Invariants (DESIGN.md "Propagation"; W3C Trace Context Level 1, 3.2 and 3.3):
//! - nothing panics;
//! - `extract_span_context` agrees with a reference model written here: exactly one
//!   `traceparent` that is strictly valid -> Ok with its ids and its `sampled` and
//!   `random-trace-id` flags (the reserved ones cleared); none -> Missing; two or more ->
//!   Duplicate(n); otherwise a rejection;
//! - `extract_checked` returns a remote span context exactly when that is Ok, and reports the
//!   error otherwise (None when the traceparent is merely missing);
//! - an extracted context re-formatted with `format_traceparent` parses back to the same ids;
//! - whatever the strict parser accepts, the SDK's lenient parser accepts with the same ids;
//! - a `tracestate` is read only with a valid `traceparent`; several are one list, combined in
//!   order (the same as parsing them joined by `,`), dropped whole when one of them is longer
//!   than 8,192 bytes; the state kept has at most 32 members; baggage has at most 64 entries and
//!   only comes from one `baggage` of at most 8,192 bytes.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use opentelemetry::Context;
use opentelemetry::baggage::BaggageExt;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use rumqttc_opentelemetry::propagation::{
    MAX_PROPAGATION_VALUE_LEN, TraceparentError, UserPropertiesExtractor, W3CPropagator,
    KNOWN_TRACE_FLAGS, TracestateError, extract_span_context, format_traceparent,
    parse_traceparent, parse_tracestate,
};

#[derive(Debug, Arbitrary)]
enum Property {
    /// Any name and value.
    Raw(String, String),
    /// A well-formed version-00 traceparent.
    Valid { trace: u128, span: u64, flags: u8 },
    /// A well-formed traceparent with one byte replaced, inserted or removed.
    Mutated {
        trace: u128,
        span: u64,
        flags: u8,
        version: u8,
        at: u8,
        byte: u8,
        edit: u8,
        suffix: String,
    },
    /// A traceparent with an arbitrary value.
    Traceparent(String),
    /// A tracestate from arbitrary members.
    Tracestate(Vec<(String, String)>),
    /// A tracestate with an arbitrary value.
    RawTracestate(String),
    /// A baggage from arbitrary members.
    Baggage(Vec<(String, String)>),
    /// A long run of one byte, as a value of one of the three names.
    Long { name: u8, byte: u8, len: u16 },
}

const NAMES: [&str; 3] = ["traceparent", "tracestate", "baggage"];

impl Property {
    fn build(self) -> (String, String) {
        match self {
            Property::Raw(name, value) => (name, value),
            Property::Valid { trace, span, flags } => (
                "traceparent".into(),
                format!("00-{trace:032x}-{span:016x}-{flags:02x}"),
            ),
            Property::Mutated {
                trace,
                span,
                flags,
                version,
                at,
                byte,
                edit,
                suffix,
            } => {
                let mut value =
                    format!("{version:02x}-{trace:032x}-{span:016x}-{flags:02x}").into_bytes();
                let at = usize::from(at) % (value.len() + 1);
                match edit % 4 {
                    0 if at < value.len() => value[at] = byte,
                    1 => value.insert(at, byte),
                    2 if at < value.len() => {
                        value.remove(at);
                    }
                    _ => value.extend_from_slice(suffix.as_bytes()),
                }
                (
                    "traceparent".into(),
                    String::from_utf8_lossy(&value).into_owned(),
                )
            }
            Property::Traceparent(value) => ("traceparent".into(), value),
            Property::Tracestate(members) => (
                "tracestate".into(),
                members
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            Property::RawTracestate(value) => ("tracestate".into(), value),
            Property::Baggage(members) => (
                "baggage".into(),
                members
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            Property::Long { name, byte, len } => (
                NAMES[usize::from(name) % 3].into(),
                char::from(byte % 128).to_string().repeat(usize::from(len)),
            ),
        }
    }
}

/// Reference parser of a `traceparent`, written from W3C Trace Context 3.2 independently of the
/// crate's: `(trace id, span id, flags)` or `None`; the flags keep `sampled` and
/// `random-trace-id` (Level 2) and clear the reserved bits.
fn reference_traceparent(value: &str) -> Option<(u128, u64, u8)> {
    let lower_hex =
        |s: &str| !s.is_empty() && s.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'));
    let bytes = value.as_bytes();
    if bytes.len() > 512 || bytes.len() < 55 {
        return None;
    }
    // The first 55 bytes must be ASCII; what a later version appends after byte 55 (W3C 3.2.4)
    // is ignored, whatever it holds.
    if !bytes[..55].is_ascii() {
        return None;
    }
    let head = std::str::from_utf8(&bytes[..55]).ok()?;
    let version = &head[0..2];
    if !lower_hex(version) || version == "ff" {
        return None;
    }
    if version == "00" && bytes.len() != 55 {
        return None;
    }
    if bytes.len() > 55 && bytes[55] != b'-' {
        return None;
    }
    let fields: Vec<&str> = head.split('-').collect();
    if fields.len() != 4 || fields[1].len() != 32 || fields[2].len() != 16 || fields[3].len() != 2 {
        return None;
    }
    if !fields[1..].iter().all(|f| lower_hex(f)) {
        return None;
    }
    let trace = u128::from_str_radix(fields[1], 16).ok()?;
    let span = u64::from_str_radix(fields[2], 16).ok()?;
    let flags = u8::from_str_radix(fields[3], 16).ok()?;
    (trace != 0 && span != 0).then_some((trace, span, flags & 0x03))
}

fn values_of<'a>(properties: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    properties
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// Input layout. Text mode (the default): properties separated by `\n`, each `name\0value`
/// (a line without `\0` is a `traceparent` value); MQTT strings never hold U+0000 (MQTT 5,
/// 1.5.4), so the separators lose nothing that matters. Structured mode: a first byte `0x02`,
/// then a `Vec<Property>` decoded with `arbitrary`.
fn properties(data: &[u8]) -> Vec<(String, String)> {
    if let Some(rest) = data.strip_prefix(&[0x02]) {
        let properties =
            Vec::<Property>::arbitrary_take_rest(Unstructured::new(rest)).unwrap_or_default();
        return properties.into_iter().map(Property::build).collect();
    }
    String::from_utf8_lossy(data)
        .split('\n')
        .map(|line| match line.split_once('\0') {
            Some((name, value)) => (name.to_owned(), value.to_owned()),
            None => ("traceparent".to_owned(), line.to_owned()),
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let properties = properties(data);
    let extractor = UserPropertiesExtractor::new(&properties);

    let traceparents = values_of(&properties, "traceparent");
    let tracestates = values_of(&properties, "tracestate");
    let baggages = values_of(&properties, "baggage");

    // The strict parser agrees with the reference on every traceparent value seen.
    for value in &traceparents {
        let strict = parse_traceparent(value);
        let reference = reference_traceparent(value);
        match (&strict, reference) {
            (Ok(parsed), Some((trace, span, flags))) => {
                assert_eq!(parsed.trace_id, TraceId::from(trace));
                assert_eq!(parsed.span_id, SpanId::from(span));
                assert_eq!(parsed.flags, TraceFlags::new(flags));
            }
            (Err(_), None) => {}
            _ => panic!("strict {strict:?} vs reference {reference:?} for {value:?}"),
        }
    }

    let checked = extract_span_context(&extractor);
    match (&checked, traceparents.as_slice()) {
        (Err(TraceparentError::Missing), []) => {}
        (Err(TraceparentError::Duplicate(n)), many) if many.len() > 1 => {
            assert_eq!(*n, many.len())
        }
        (Ok((context, _)), [one]) => {
            let (trace, span, flags) =
                reference_traceparent(one).expect("accepted a traceparent the reference rejects");
            assert_eq!(context.trace_id(), TraceId::from(trace));
            assert_eq!(context.span_id(), SpanId::from(span));
            assert_eq!(context.trace_flags(), TraceFlags::new(flags));
            assert!(context.is_remote() && context.is_valid());
        }
        (Err(_), [one]) => assert!(
            reference_traceparent(one).is_none(),
            "rejected a valid traceparent {one:?}: {checked:?}"
        ),
        _ => panic!("{checked:?} for traceparents {traceparents:?}"),
    }

    // tracestate: read only with a valid traceparent; all fields one list; bounded.
    if let Ok((context, tracestate_error)) = &checked {
        let state = context.trace_state();
        let oversized = tracestates
            .iter()
            .find(|field| field.len() > MAX_PROPAGATION_VALUE_LEN);
        if let Some(field) = oversized {
            assert_eq!(*state, TraceState::NONE);
            assert_eq!(
                *tracestate_error,
                Some(TracestateError::Oversized(field.len()))
            );
        } else if tracestates.is_empty() {
            assert_eq!(*state, TraceState::NONE);
            assert_eq!(*tracestate_error, None);
        } else {
            let expected = parse_tracestate(&tracestates.join(","));
            assert_eq!(tracestate_error.clone(), expected.clone().err());
            if let Ok(expected) = expected {
                assert_eq!(state.header(), expected.header());
                let members = state.header().split(',').filter(|m| !m.is_empty()).count();
                assert!(members <= 32, "{members} tracestate members");
                assert!(state.header().len() <= MAX_PROPAGATION_VALUE_LEN);
                // What we kept is itself valid and stable.
                let again = parse_tracestate(&state.header()).expect("kept tracestate re-parses");
                assert_eq!(again.header(), state.header());
            } else {
                assert_eq!(*state, TraceState::NONE);
            }
        }

        // Re-format and parse back.
        let text = format_traceparent(context);
        assert_eq!(text.len(), 55);
        let parsed = parse_traceparent(&text).expect("own traceparent parses");
        assert_eq!(parsed.trace_id, context.trace_id());
        assert_eq!(parsed.span_id, context.span_id());
        assert_eq!(parsed.flags, context.trace_flags() & KNOWN_TRACE_FLAGS);

        // The SDK's lenient parser accepts whatever the strict one does, with the same ids.
        let sdk = TraceContextPropagator::new().extract(&extractor);
        let sdk_span = sdk.span();
        let sdk_context = sdk_span.span_context();
        assert!(sdk_context.is_valid(), "SDK rejected {traceparents:?}");
        assert_eq!(sdk_context.trace_id(), context.trace_id());
        assert_eq!(sdk_context.span_id(), context.span_id());
        // The SDK keeps the sampled flag only (no Level 2 random-trace-id).
        assert_eq!(
            sdk_context.trace_flags(),
            context.trace_flags() & TraceFlags::SAMPLED
        );
    }

    for propagator in [W3CPropagator::new(), W3CPropagator::without_baggage()] {
        let extracted = propagator.extract_checked(&Context::new(), &extractor);
        let span = extracted.context.span();
        let remote = span.span_context();
        match &checked {
            Ok((context, tracestate_error)) => {
                assert_eq!(remote, context);
                assert_eq!(extracted.traceparent_error, None);
                assert_eq!(&extracted.tracestate_error, tracestate_error);
            }
            Err(error) => {
                assert!(!remote.is_valid(), "context from a rejected traceparent");
                let expected = (*error != TraceparentError::Missing).then_some(*error);
                assert_eq!(extracted.traceparent_error, expected);
                assert_eq!(extracted.tracestate_error, None);
            }
        }
        let baggage = extracted.context.baggage();
        assert!(baggage.len() <= 64, "{} baggage entries", baggage.len());
        let usable = baggages.len() == 1 && baggages[0].len() <= 8192;
        if !propagator.propagates_baggage() || !usable {
            assert_eq!(baggage.len(), 0, "baggage from {baggages:?}");
        }
        // Same through the plain TextMapPropagator API.
        let plain = propagator.extract(&extractor);
        assert_eq!(plain.span().span_context(), remote);
    }
});
