//! `envelope::decode` on arbitrary bytes.
//!
//! Invariants (DESIGN.md "Propagation", envelope format version 1):
//! - decode never panics;
//! - no magic <=> `Ok(None)`; a payload that starts with the magic is `Ok(Some)` or a typed `Err`;
//! - `Ok(Some(envelope))`: re-encoding its headers and payload gives the input back byte for byte
//!   (the decoder is strict, so nothing can be dropped or normalised), and the accessors agree
//!   with the headers;
//! - encode then decode also round-trips headers built from the same bytes.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use opentelemetry::propagation::Extractor;
use rumqttc_opentelemetry::propagation::envelope::{self, EnvelopeError};

fuzz_target!(|data: &[u8]| {
    let input = Bytes::copy_from_slice(data);
    match envelope::decode(&input) {
        Ok(None) => assert!(!envelope::has_magic(data), "magic but Ok(None)"),
        Err(error) => {
            assert!(envelope::has_magic(data), "no magic but {error:?}");
            check_error_is_accurate(data, &error);
        }
        Ok(Some(decoded)) => {
            assert!(envelope::has_magic(data));
            let headers: Vec<(&str, &str)> = decoded.headers().collect();
            let wire = envelope::encode(&headers, decoded.payload()).expect("re-encode");
            assert_eq!(wire, data, "decode/encode round trip lost bytes");
            assert_eq!(
                envelope::encoded_len(&headers, decoded.payload().len()).unwrap(),
                data.len()
            );
            assert_eq!(
                envelope::PREFIX_LEN + decoded.header_len() + decoded.payload().len(),
                data.len()
            );
            // Extractor view: `get` is the unique value (or None), `get_all` every value.
            for (key, _) in &headers {
                let all: Vec<&str> = headers
                    .iter()
                    .filter(|(k, _)| k == key)
                    .map(|(_, v)| *v)
                    .collect();
                assert_eq!(Extractor::get_all(&decoded, key), Some(all.clone()));
                let expected = (all.len() == 1
                    && all[0].len()
                        <= rumqttc_opentelemetry::propagation::MAX_PROPAGATION_VALUE_LEN)
                    .then(|| all[0]);
                assert_eq!(decoded.get(key), expected);
            }
            assert_eq!(
                Extractor::keys(&decoded),
                headers.iter().map(|(k, _)| *k).collect::<Vec<_>>()
            );
            let _ = rumqttc_opentelemetry::propagation::extract_span_context(&decoded);
        }
    }

    // The other direction: headers cut from the input (as UTF-8 where possible) encode and
    // decode back to themselves.
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\u{1}');
    let payload = parts.next().unwrap_or("").as_bytes().to_vec();
    let mut headers = Vec::new();
    while let (Some(key), Some(value)) = (parts.next(), parts.next()) {
        headers.push((key, value));
    }
    match envelope::encode(&headers, &payload) {
        Ok(wire) => {
            assert_eq!(
                wire.len(),
                envelope::encoded_len(&headers, payload.len()).unwrap()
            );
            let decoded = envelope::decode(&Bytes::from(wire))
                .expect("own encoding decodes")
                .expect("own encoding has the magic");
            assert_eq!(decoded.headers().collect::<Vec<_>>(), headers);
            assert_eq!(&decoded.payload()[..], &payload[..]);
        }
        Err(EnvelopeError::HeaderTooLarge(len)) => assert!(len > envelope::MAX_HEADER_LEN),
        Err(other) => panic!("encode failed with {other:?}"),
    }
});

/// The error names a real problem of the input.
fn check_error_is_accurate(data: &[u8], error: &EnvelopeError) {
    match *error {
        EnvelopeError::TruncatedPrefix { len } => {
            assert_eq!(len, data.len());
            assert!(len < envelope::PREFIX_LEN);
        }
        EnvelopeError::UnsupportedVersion(version) => {
            assert_eq!(data[4], version);
            assert_ne!(version, envelope::VERSION);
        }
        EnvelopeError::HeaderPastEnd {
            header_len,
            available,
        } => {
            assert_eq!(
                header_len,
                usize::from(u16::from_be_bytes([data[5], data[6]]))
            );
            assert_eq!(available, data.len() - envelope::PREFIX_LEN);
            assert!(header_len > available);
        }
        EnvelopeError::FieldPastEnd { offset } | EnvelopeError::InvalidUtf8 { offset } => {
            let header_len = usize::from(u16::from_be_bytes([data[5], data[6]]));
            assert!(offset >= envelope::PREFIX_LEN);
            assert!(offset <= envelope::PREFIX_LEN + header_len);
        }
        EnvelopeError::HeaderTooLarge(_) => panic!("decode returned an encode error"),
        _ => {}
    }
}
