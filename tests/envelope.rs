//! The MQTT 3.1.1 propagation envelope, version 1 (DESIGN.md "Propagation"; crate docs of
//! `propagation::envelope` give the byte layout).

use bytes::Bytes;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use proptest::prelude::*;
use rumqttc_opentelemetry::propagation::W3CPropagator;
use rumqttc_opentelemetry::propagation::envelope::{
    self, EnvelopeError, MAGIC, MAX_HEADER_LEN, PREFIX_LEN,
};

const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn decode(wire: &[u8]) -> Result<Option<envelope::Envelope>, EnvelopeError> {
    envelope::decode(&Bytes::copy_from_slice(wire))
}

#[test]
fn plain_payloads_are_not_envelopes() {
    for plain in [&b""[..], b"21.5", b"{\"t\":1}", b"\x00MT", b"\x00MTx\x01"] {
        assert_eq!(decode(plain), Ok(None), "{plain:?}");
    }
}

#[test]
fn an_envelope_carries_the_trace_context() {
    let wire = envelope::encode(
        &[("traceparent", VALID), ("tracestate", "rojo=1")],
        b"payload",
    )
    .unwrap();
    let decoded = decode(&wire).unwrap().unwrap();
    assert_eq!(&decoded.payload()[..], b"payload");
    assert_eq!(
        decoded.headers().collect::<Vec<_>>(),
        [("traceparent", VALID), ("tracestate", "rojo=1")]
    );
    assert_eq!(decoded.keys(), ["traceparent", "tracestate"]);
    let context = W3CPropagator::new().extract(&decoded);
    assert!(context.span().span_context().is_valid());
    assert_eq!(
        context.span().span_context().trace_state().get("rojo"),
        Some("1")
    );
}

#[test]
fn empty_headers_and_empty_payload() {
    let wire = envelope::encode::<&str, &str>(&[], b"").unwrap();
    assert_eq!(wire, [0x00, b'M', b'T', b'C', 0x01, 0x00, 0x00]);
    let decoded = decode(&wire).unwrap().unwrap();
    assert!(decoded.payload().is_empty());
    assert_eq!(decoded.headers().count(), 0);
}

#[test]
fn duplicate_headers_read_as_absent() {
    let wire = envelope::encode(&[("traceparent", VALID), ("traceparent", VALID)], b"x").unwrap();
    let decoded = decode(&wire).unwrap().unwrap();
    assert_eq!(decoded.get("traceparent"), None);
    assert_eq!(decoded.get_all("traceparent").map(|v| v.len()), Some(2));
    assert!(
        !W3CPropagator::new()
            .extract(&decoded)
            .span()
            .span_context()
            .is_valid()
    );
}

#[test]
fn malformed_envelopes_are_typed_errors() {
    let good = envelope::encode(&[("k", "v")], b"data").unwrap();
    let mut bad_version = good.clone();
    bad_version[4] = 0x02;
    let mut header_past_end = good.clone();
    header_past_end[5..7].copy_from_slice(&1000_u16.to_be_bytes());
    let mut field_past_end = good.clone();
    field_past_end[8] = 200; // key length 200 inside a 6-byte header block
    let mut bad_utf8 = good.clone();
    bad_utf8[9] = 0xff; // the key byte
    let cases: Vec<(Vec<u8>, EnvelopeError)> = vec![
        (MAGIC.to_vec(), EnvelopeError::TruncatedPrefix { len: 4 }),
        (
            vec![0x00, b'M', b'T', b'C', 0x01, 0x00],
            EnvelopeError::TruncatedPrefix { len: 6 },
        ),
        (bad_version, EnvelopeError::UnsupportedVersion(2)),
        (
            header_past_end,
            EnvelopeError::HeaderPastEnd {
                header_len: 1000,
                available: good.len() - PREFIX_LEN,
            },
        ),
        (field_past_end, EnvelopeError::FieldPastEnd { offset: 7 }),
        (bad_utf8, EnvelopeError::InvalidUtf8 { offset: 9 }),
        (
            good[..good.len() - 5].to_vec(),
            EnvelopeError::HeaderPastEnd {
                header_len: 6,
                available: 5,
            },
        ),
    ];
    for (wire, expected) in cases {
        assert_eq!(decode(&wire), Err(expected.clone()), "{wire:?}");
        assert!(!expected.to_string().is_empty());
    }
}

#[test]
fn headers_that_do_not_fit_are_refused() {
    let big = "v".repeat(MAX_HEADER_LEN);
    assert!(matches!(
        envelope::encode(&[("k", big.as_str())], b""),
        Err(EnvelopeError::HeaderTooLarge(_))
    ));
    // The largest block that fits: 4 length bytes + key + value == MAX_HEADER_LEN.
    let fits = "v".repeat(MAX_HEADER_LEN - 5);
    let wire = envelope::encode(&[("k", fits.as_str())], b"p").unwrap();
    assert_eq!(
        decode(&wire)
            .unwrap()
            .unwrap()
            .headers()
            .next()
            .unwrap()
            .1
            .len(),
        fits.len()
    );
}

#[test]
fn the_payload_is_not_copied() {
    let wire = Bytes::from(envelope::encode(&[("traceparent", VALID)], &[42; 4096]).unwrap());
    let decoded = envelope::decode(&wire).unwrap().unwrap();
    let offset = decoded.payload().as_ptr() as usize - wire.as_ptr() as usize;
    assert_eq!(offset, PREFIX_LEN + decoded.header_len());
}

proptest! {
    /// Decoding arbitrary bytes never panics, and whatever it accepts re-encodes to the same bytes.
    #[test]
    fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode(&bytes);
        let mut with_magic = MAGIC.to_vec();
        with_magic.push(1);
        with_magic.extend_from_slice(&bytes);
        if let Ok(Some(decoded)) = decode(&with_magic) {
            let headers: Vec<(&str, &str)> = decoded.headers().collect();
            prop_assert_eq!(envelope::encode(&headers, decoded.payload()).unwrap(), with_magic);
        }
    }

    /// encode -> decode returns the same headers and payload.
    #[test]
    fn round_trip(
        headers in proptest::collection::vec((".{0,20}", ".{0,60}"), 0..8),
        payload in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let wire = envelope::encode(&headers, &payload).unwrap();
        prop_assert_eq!(wire.len(), envelope::encoded_len(&headers, payload.len()).unwrap());
        let decoded = decode(&wire).unwrap().unwrap();
        prop_assert_eq!(&decoded.payload()[..], &payload[..]);
        let got: Vec<(String, String)> =
            decoded.headers().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
        prop_assert_eq!(got, headers);
    }
}

#[path = "common/alloc_counter.rs"]
mod alloc_counter;

#[test]
fn decoding_allocates_nothing() {
    let wire = Bytes::from(
        envelope::encode(
            &[("traceparent", VALID), ("tracestate", "rojo=1")],
            &[1; 4096],
        )
        .unwrap(),
    );
    // A `Bytes` made from a `Vec` allocates its shared header on its first clone or slice (the
    // `bytes` crate's promotion). Payloads from rumqttc are slices of its read buffer, already
    // shared; clone once so that the count below sees only what `decode` does.
    drop(wire.clone());
    let allocations = alloc_counter::allocations_during(|| {
        let decoded = envelope::decode(&wire).unwrap().unwrap();
        assert_eq!(decoded.get("traceparent"), Some(VALID));
        assert_eq!(decoded.payload().len(), 4096);
    });
    assert_eq!(allocations, 0);
}

#[test]
fn encoding_allocates_once() {
    let allocations = alloc_counter::allocations_during(|| {
        let wire = envelope::encode(&[("traceparent", VALID)], &[1; 64]).unwrap();
        assert_eq!(wire.len(), PREFIX_LEN + 4 + 11 + 55 + 64);
    });
    assert_eq!(allocations, 1);
}
