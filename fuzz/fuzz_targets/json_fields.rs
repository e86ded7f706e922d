//! The JSON-fields codec on arbitrary payloads, differentially against `serde_json`.
//!
//! Invariants (crate docs of `propagation::json_fields`; RFC 8259):
//! - `JsonFields::parse` and `inject` never panic;
//! - they accept exactly the payloads `serde_json` accepts as an object (modulo the documented
//!   differences: no nesting limit here, and numbers of any magnitude; payloads serde_json
//!   refuses only for those reasons are not compared);
//! - when `inject` returns Ok, the output parses with `serde_json` as an object holding every
//!   written field (non-empty value, last one of its name) with its value, no other member of an
//!   injected name, and every other member of the input unchanged; `JsonFields::parse` reads the
//!   fields back;
//! - `parse`'s `get`, when it returns a value, is the string serde_json sees for that name;
//! - injecting the same fields into the output again changes nothing (idempotence).
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use rumqttc_opentelemetry::propagation::json_fields::{JsonFields, JsonFieldsError, inject};
use serde_json::{Map, Value};

/// The fields to inject, decoded with `arbitrary` from the bytes after the payload's separator.
#[derive(Debug, Arbitrary)]
struct Fields {
    /// Names are drawn mostly from the propagation names, so that they collide with the payload.
    fields: Vec<(u8, String)>,
    extra_name: String,
}

/// Input layout: `payload [0xFF fields]`. The last 0xFF byte (which no JSON text contains)
/// separates the payload from the fields, decoded with `arbitrary`; without one, the whole input
/// is the payload and a valid `traceparent` plus an empty `tracestate` (a removal) are injected.
/// So a hand-written JSON file is a useful seed as is.
fn split(data: &[u8]) -> (&[u8], Fields) {
    match data.iter().rposition(|&byte| byte == 0xFF) {
        Some(at) => {
            let mut rest = Unstructured::new(&data[at + 1..]);
            let fields = Fields::arbitrary(&mut rest).unwrap_or(Fields {
                fields: Vec::new(),
                extra_name: String::new(),
            });
            (&data[..at], fields)
        }
        None => (
            data,
            Fields {
                fields: vec![(0, TRACEPARENT_VALUE.to_owned()), (1, String::new())],
                extra_name: String::new(),
            },
        ),
    }
}

const TRACEPARENT_VALUE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const NAMES: [&str; 4] = ["traceparent", "tracestate", "baggage", "a"];

/// What serde_json thinks of the payload: `Some(Ok(map))` for an object, `Some(Err(()))` for
/// anything else it rejects or that is not an object, `None` when it refuses only because of its
/// nesting limit or a number outside `f64` (`1e400`): this codec has neither limit, by design.
fn serde_view(payload: &[u8]) -> Option<Result<Map<String, Value>, ()>> {
    match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(map)) => Some(Ok(map)),
        Ok(_) => Some(Err(())),
        Err(error)
            if error.to_string().contains("recursion limit")
                || error.to_string().contains("number out of range") =>
        {
            None
        }
        Err(_) => Some(Err(())),
    }
}

fuzz_target!(|data: &[u8]| {
    let (payload, input) = split(data);
    let fields: Vec<(&str, &str)> = input
        .fields
        .iter()
        .map(|(name, value)| {
            let name = NAMES
                .get(usize::from(*name % 5))
                .copied()
                .unwrap_or(input.extra_name.as_str());
            (name, value.as_str())
        })
        .collect();
    let wanted: Vec<&str> = fields.iter().map(|(name, _)| *name).chain(NAMES).collect();

    let parsed = JsonFields::parse(payload, &wanted);
    let injected = inject(payload, &fields);
    let serde = serde_view(payload);

    // Parse and inject accept the same payloads, with the same error.
    match (&parsed, &injected) {
        (Ok(_), Ok(_)) => {}
        (Err(a), Err(b)) => assert_eq!(a, b),
        _ => panic!(
            "parse {parsed:?} vs inject {:?}",
            injected.as_ref().map(|_| ())
        ),
    }
    match (&parsed, &serde) {
        (_, None) => {}
        (Ok(_), Some(Ok(_))) => {}
        (Err(JsonFieldsError::NotAnObject | JsonFieldsError::Malformed { .. }), Some(Err(()))) => {}
        _ => panic!(
            "codec {parsed:?} vs serde_json {:?} on {:?}",
            serde.as_ref().map(|s| s.as_ref().map(|_| ())),
            String::from_utf8_lossy(payload)
        ),
    }
    if let Err(JsonFieldsError::Malformed { offset }) = parsed {
        assert!(offset <= payload.len());
    }

    let Ok(parsed) = parsed else { return };
    if let Some(Ok(original)) = &serde {
        // get: the unique value of a name that occurs once at the top level, as a string.
        for name in &wanted {
            if let Some(value) = parsed.get(name) {
                assert_eq!(original.get(*name), Some(&Value::String(value.to_owned())));
            }
        }
    }

    let output = injected.expect("checked above");
    // The written fields: non-empty values, the last one of each name.
    let mut written: Vec<(&str, &str)> = Vec::new();
    for (index, (name, value)) in fields.iter().enumerate() {
        let last = !fields[index + 1..].iter().any(|(later, _)| later == name);
        if last && !value.is_empty() {
            written.push((name, value));
        }
    }
    let reread = JsonFields::parse(&output, &wanted).expect("inject output parses back");
    for (name, value) in &written {
        assert_eq!(reread.get(name), Some(*value), "field {name:?}");
    }
    for (name, _) in &fields {
        if !written.iter().any(|(w, _)| w == name) {
            assert_eq!(reread.get_all(name), Vec::<&str>::new(), "{name:?} removed");
        }
    }

    match serde_view(&output) {
        None => {}
        Some(Err(())) => panic!(
            "inject output is not a JSON object: {:?}",
            String::from_utf8_lossy(&output)
        ),
        Some(Ok(out_map)) => {
            for (name, value) in &written {
                assert_eq!(
                    out_map.get(*name),
                    Some(&Value::String((*value).to_owned()))
                );
            }
            if let Some(Ok(mut expected)) = serde {
                for (name, _) in &fields {
                    expected.remove(*name);
                }
                for (name, value) in &written {
                    expected.insert((*name).to_owned(), Value::String((*value).to_owned()));
                }
                assert_eq!(
                    out_map, expected,
                    "members other than the injected ones changed"
                );
            }
        }
    }
    // Injecting the same fields again is idempotent.
    let again = inject(&output, &fields).expect("inject output accepts a second inject");
    assert_eq!(again, output, "inject is not idempotent");
});
