//! The MQTT 3.1.1 propagation envelope, version 1.
//!
//! MQTT 3.1.1 has no user properties, so a publisher that opts in wraps the payload in an
//! envelope that carries the propagation fields in front of it. Receivers built on this crate
//! always recognise an envelope and strip it, so the application sees the original payload.
//!
//! # Format (version 1)
//!
//! All integers are unsigned big-endian. Other implementations can write and read this from the
//! table alone.
//!
//! | offset | size | content |
//! |---|---|---|
//! | 0 | 4 | magic: `0x00 0x4D 0x54 0x43` (`NUL`, `M`, `T`, `C`) |
//! | 4 | 1 | version: `0x01` |
//! | 5 | 2 | `H`: length of the header block in bytes |
//! | 7 | `H` | header block: zero or more pairs of (`u16` key length, UTF-8 key, `u16` value length, UTF-8 value) that fill it exactly |
//! | 7 + `H` | rest | the original payload, unchanged |
//!
//! The magic starts with a NUL byte so that no text payload (JSON, CSV, plain numbers) can be
//! mistaken for an envelope. A payload that starts with the magic but is not a well-formed
//! version-1 envelope (truncated, a header length past the end, pairs that do not fill the
//! header block, invalid UTF-8, another version) is delivered unchanged, and the problem is
//! returned as an [`EnvelopeError`] for the caller to record. Header names follow the MQTT 5
//! user-property convention: `traceparent`, `tracestate`, `baggage`; as in MQTT 5, a name may
//! repeat, and several `tracestate` headers are one list, combined in order.
//!
//! ```
//! use bytes::Bytes;
//! use rumqttc_opentelemetry::propagation::envelope;
//!
//! let wire = envelope::encode(&[("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")], b"21.5")?;
//! let decoded = envelope::decode(&Bytes::from(wire))?.expect("an envelope");
//! assert_eq!(decoded.payload(), &b"21.5"[..]);
//! assert_eq!(decoded.get("traceparent"), Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
//! # Ok::<(), rumqttc_opentelemetry::propagation::envelope::EnvelopeError>(())
//! ```

use bytes::Bytes;
use opentelemetry::propagation::Extractor;

use super::carrier::{MAX_PROPAGATION_VALUE_LEN, unique};

/// The four bytes every envelope starts with.
pub const MAGIC: [u8; 4] = [0x00, b'M', b'T', b'C'];
/// The envelope version this crate writes and reads.
pub const VERSION: u8 = 0x01;
/// Bytes in front of the header block: magic, version and header length.
pub const PREFIX_LEN: usize = MAGIC.len() + 1 + 2;
/// The largest header block (its length is a `u16`).
pub const MAX_HEADER_LEN: usize = u16::MAX as usize;

/// Why an envelope could not be written or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The payload starts with the magic but ends before the 7-byte prefix is complete.
    #[error("envelope truncated: {len} bytes, the prefix needs {PREFIX_LEN}")]
    TruncatedPrefix {
        /// Bytes present.
        len: usize,
    },
    /// The version byte is not [`VERSION`].
    #[error("unsupported envelope version {0:#04x}")]
    UnsupportedVersion(u8),
    /// The header length points past the end of the payload.
    #[error("envelope header length {header_len} exceeds the {available} bytes after the prefix")]
    HeaderPastEnd {
        /// The header length the prefix declares.
        header_len: usize,
        /// Bytes after the prefix.
        available: usize,
    },
    /// A key or value length inside the header block points past the block's end.
    #[error("envelope header field at offset {offset} runs past the header block")]
    FieldPastEnd {
        /// Offset of the field's length, from the start of the payload.
        offset: usize,
    },
    /// A key or value is not UTF-8.
    #[error("envelope header field at offset {offset} is not UTF-8")]
    InvalidUtf8 {
        /// Offset of the field, from the start of the payload.
        offset: usize,
    },
    /// The headers to write do not fit the `u16` header length.
    #[error("envelope header block of {0} bytes exceeds {MAX_HEADER_LEN}")]
    HeaderTooLarge(usize),
}

/// Whether `payload` starts with the envelope [`MAGIC`].
pub fn has_magic(payload: &[u8]) -> bool {
    payload.starts_with(&MAGIC)
}

fn header_block_len<K: AsRef<str>, V: AsRef<str>>(
    headers: &[(K, V)],
) -> Result<usize, EnvelopeError> {
    let len = headers.iter().fold(0_usize, |len, (key, value)| {
        len.saturating_add(4 + key.as_ref().len() + value.as_ref().len())
    });
    if len > MAX_HEADER_LEN {
        return Err(EnvelopeError::HeaderTooLarge(len));
    }
    Ok(len)
}

/// The size of the envelope [`encode`] writes for these headers and payload.
pub fn encoded_len<K: AsRef<str>, V: AsRef<str>>(
    headers: &[(K, V)],
    payload_len: usize,
) -> Result<usize, EnvelopeError> {
    Ok(PREFIX_LEN + header_block_len(headers)? + payload_len)
}

/// Wraps `payload` in a version-1 envelope carrying `headers`, in one allocation.
///
/// Fails only when the header block would exceed [`MAX_HEADER_LEN`]; each field is then also
/// below `u16::MAX`.
pub fn encode<K: AsRef<str>, V: AsRef<str>>(
    headers: &[(K, V)],
    payload: &[u8],
) -> Result<Vec<u8>, EnvelopeError> {
    let header_len = header_block_len(headers)?;
    let mut out = Vec::with_capacity(PREFIX_LEN + header_len + payload.len());
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    // Both lengths below are at most MAX_HEADER_LEN, checked above.
    out.extend_from_slice(&(header_len as u16).to_be_bytes());
    for (key, value) in headers {
        for field in [key.as_ref(), value.as_ref()] {
            out.extend_from_slice(&(field.len() as u16).to_be_bytes());
            out.extend_from_slice(field.as_bytes());
        }
    }
    out.extend_from_slice(payload);
    Ok(out)
}

/// A decoded envelope: its headers and the original payload, both sharing the received buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    header: Bytes,
    payload: Bytes,
}

/// Reads one length-prefixed field at `at` of `block`; `None` when it runs past the end.
fn field(block: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let len_bytes = block.get(at..at + 2)?;
    let len = usize::from(u16::from_be_bytes([len_bytes[0], len_bytes[1]]));
    let start = at + 2;
    block
        .get(start..start + len)
        .map(|bytes| (bytes, start + len))
}

/// Decodes an envelope without copying: the payload and headers it returns are slices of
/// `payload`'s buffer, and nothing is allocated.
///
/// - `Ok(None)`: `payload` does not start with the [`MAGIC`]; it is a plain payload.
/// - `Ok(Some(envelope))`: a well-formed version-1 envelope.
/// - `Err(_)`: it starts with the magic but is malformed; deliver `payload` unchanged.
pub fn decode(payload: &Bytes) -> Result<Option<Envelope>, EnvelopeError> {
    if !has_magic(payload) {
        return Ok(None);
    }
    if payload.len() < PREFIX_LEN {
        return Err(EnvelopeError::TruncatedPrefix { len: payload.len() });
    }
    let version = payload[MAGIC.len()];
    if version != VERSION {
        return Err(EnvelopeError::UnsupportedVersion(version));
    }
    let header_len = usize::from(u16::from_be_bytes([payload[5], payload[6]]));
    let available = payload.len() - PREFIX_LEN;
    if header_len > available {
        return Err(EnvelopeError::HeaderPastEnd {
            header_len,
            available,
        });
    }
    let header = payload.slice(PREFIX_LEN..PREFIX_LEN + header_len);
    let mut at = 0;
    while at < header.len() {
        let (bytes, next) = field(&header, at).ok_or(EnvelopeError::FieldPastEnd {
            offset: PREFIX_LEN + at,
        })?;
        if std::str::from_utf8(bytes).is_err() {
            return Err(EnvelopeError::InvalidUtf8 {
                offset: PREFIX_LEN + at + 2,
            });
        }
        at = next;
    }
    // Fields alternate key, value: an odd count leaves a key without its value.
    if !Headers::new(&header).count_fields().is_multiple_of(2) {
        return Err(EnvelopeError::FieldPastEnd {
            offset: PREFIX_LEN + header.len(),
        });
    }
    Ok(Some(Envelope {
        header,
        payload: payload.slice(PREFIX_LEN + header_len..),
    }))
}

impl Envelope {
    /// The original payload, as the publisher passed it.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// Consumes the envelope, returning the original payload.
    pub fn into_payload(self) -> Bytes {
        self.payload
    }

    /// The size of the header block in bytes.
    pub fn header_len(&self) -> usize {
        self.header.len()
    }

    /// The headers, in order, as `(key, value)` pairs.
    pub fn headers(&self) -> Headers<'_> {
        Headers::new(&self.header)
    }

    /// The value of header `key`, `None` when it is absent, present twice, or longer than the
    /// propagation limit.
    pub fn get(&self, key: &str) -> Option<&str> {
        let mut values = self
            .headers()
            .filter(|(name, _)| *name == key)
            .map(|(_, value)| value);
        unique(&mut values).filter(|value| value.len() <= MAX_PROPAGATION_VALUE_LEN)
    }

    fn values_of<'a>(&'a self, key: &str) -> Vec<&'a str> {
        self.headers()
            .filter(|(name, _)| *name == key)
            .map(|(_, value)| value)
            .collect()
    }
}

impl Extractor for Envelope {
    fn get(&self, key: &str) -> Option<&str> {
        Envelope::get(self, key)
    }

    fn keys(&self) -> Vec<&str> {
        self.headers().map(|(key, _)| key).collect()
    }

    fn get_all(&self, key: &str) -> Option<Vec<&str>> {
        let values = self.values_of(key);
        (!values.is_empty()).then_some(values)
    }
}

/// Iterator over the `(key, value)` pairs of an envelope's header block.
#[derive(Debug, Clone)]
pub struct Headers<'a> {
    block: &'a [u8],
    at: usize,
}

impl<'a> Headers<'a> {
    fn new(block: &'a [u8]) -> Self {
        Self { block, at: 0 }
    }

    fn next_field(&mut self) -> Option<&'a str> {
        let (bytes, next) = field(self.block, self.at)?;
        self.at = next;
        // `decode` checked every field; a failure here cannot happen and ends the iteration.
        std::str::from_utf8(bytes).ok()
    }

    fn count_fields(mut self) -> usize {
        std::iter::from_fn(|| self.next_field()).count()
    }
}

impl<'a> Iterator for Headers<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        let key = self.next_field()?;
        let value = self.next_field()?;
        Some((key, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_byte_exact() {
        let wire = encode(&[("ab", "xyz")], b"P").unwrap();
        assert_eq!(
            wire,
            [
                0x00, b'M', b'T', b'C', 0x01, 0x00, 0x09, 0x00, 0x02, b'a', b'b', 0x00, 0x03, b'x',
                b'y', b'z', b'P'
            ]
        );
        assert_eq!(encoded_len(&[("ab", "xyz")], 1).unwrap(), wire.len());
    }

    #[test]
    fn encode_allocates_exactly_once() {
        let headers = [(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )];
        let wire = encode(&headers, &[7; 100]).unwrap();
        assert_eq!(wire.capacity(), wire.len());
    }

    #[test]
    fn decode_shares_the_buffer() {
        let wire = Bytes::from(encode(&[("k", "v")], b"payload").unwrap());
        let envelope = decode(&wire).unwrap().unwrap();
        let start = wire.as_ptr() as usize;
        let payload_start = envelope.payload().as_ptr() as usize;
        assert_eq!(payload_start - start, wire.len() - b"payload".len());
    }

    #[test]
    fn a_key_without_value_is_malformed() {
        let mut wire = vec![0x00, b'M', b'T', b'C', 0x01, 0x00, 0x03, 0x00, 0x01, b'k'];
        wire.extend_from_slice(b"rest");
        assert!(matches!(
            decode(&Bytes::from(wire)),
            Err(EnvelopeError::FieldPastEnd { .. })
        ));
    }
}
