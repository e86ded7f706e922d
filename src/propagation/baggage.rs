//! W3C Baggage (`baggage`) encoding and decoding, with the W3C limits.
//!
//! W3C Baggage, section 3.3: at most 64 list-members and 8,192 bytes; members are
//! `key=value;property...`, values percent-encoded where they hold bytes outside the
//! `baggage-octet` range. A value over the limit is dropped whole, never forwarded.

use opentelemetry::Context;
use opentelemetry::baggage::{BaggageExt, KeyValueMetadata};

/// The longest `baggage` value read or written (W3C Baggage 3.3).
pub const MAX_BAGGAGE_LEN: usize = 8192;
/// The most list-members read from one `baggage` value (W3C Baggage 3.3).
pub const MAX_BAGGAGE_MEMBERS: usize = 64;

/// `baggage-octet` of W3C Baggage 3.2.1.1, minus `%` (which starts an escape) and `=`/`;`
/// (kept escaped so that keys and properties stay unambiguous).
fn is_plain(byte: u8) -> bool {
    matches!(byte, 0x21 | 0x23..=0x24 | 0x26..=0x2b | 0x2d..=0x3a | 0x3c | 0x3e..=0x5b | 0x5d..=0x7e)
}

fn percent_encode_into(out: &mut String, text: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &byte in text.as_bytes() {
        if is_plain(byte) {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
    }
}

fn hex_digit(byte: u8) -> Option<u8> {
    char::from(byte)
        .to_digit(16)
        .and_then(|digit| u8::try_from(digit).ok())
}

/// Decodes `%XX` escapes; `None` when an escape is broken or the result is not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let high = hex_digit(*bytes.get(index + 1)?)?;
            let low = hex_digit(*bytes.get(index + 2)?)?;
            out.push((high << 4) | low);
            index += 3;
        } else {
            out.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The `baggage` value for the baggage in `context`, or `None` when it has none or the encoded
/// value would exceed [`MAX_BAGGAGE_LEN`].
pub(crate) fn encode(context: &Context) -> Option<String> {
    let baggage = context.baggage();
    if baggage.is_empty() {
        return None;
    }
    let mut out = String::new();
    for (key, (value, metadata)) in baggage {
        if !out.is_empty() {
            out.push(',');
        }
        percent_encode_into(&mut out, key.as_str().trim());
        out.push('=');
        percent_encode_into(&mut out, value.as_str().trim());
        let metadata = metadata.as_str().trim();
        // Properties are written as they are, so they must not contain a list separator: a `,`
        // would start a member of the receiver's baggage that the sender never had.
        if !metadata.is_empty()
            && metadata
                .bytes()
                .all(|byte| is_plain(byte) || b"=; \t".contains(&byte))
        {
            out.push(';');
            out.push_str(metadata);
        }
    }
    (out.len() <= MAX_BAGGAGE_LEN).then_some(out)
}

/// The baggage entries of a `baggage` value; malformed members are skipped, a value longer than
/// [`MAX_BAGGAGE_LEN`] yields nothing, and members past [`MAX_BAGGAGE_MEMBERS`] are ignored.
pub(crate) fn decode(value: &str) -> Vec<KeyValueMetadata> {
    if value.len() > MAX_BAGGAGE_LEN {
        return Vec::new();
    }
    value
        .split(',')
        .take(MAX_BAGGAGE_MEMBERS)
        .filter_map(|member| {
            let (pair, properties) = member.split_once(';').unwrap_or((member, ""));
            let (key, value) = pair.split_once('=')?;
            let key = percent_decode(key.trim())?;
            let value = percent_decode(value.trim())?;
            if key.is_empty() {
                return None;
            }
            Some(KeyValueMetadata::new(key, value, properties.trim()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::KeyValue;

    #[test]
    fn round_trips_values_that_need_escaping() {
        let context = Context::new().with_baggage([
            KeyValue::new("user", "ada lovelace"),
            KeyValue::new("path", "a,b;c=d%e\"é"),
        ]);
        let encoded = encode(&context).unwrap();
        assert!(!encoded.contains(' '));
        let decoded = decode(&encoded);
        let restored = Context::new().with_baggage(decoded);
        assert_eq!(
            restored.baggage().get("user").unwrap().as_str(),
            "ada lovelace"
        );
        assert_eq!(
            restored.baggage().get("path").unwrap().as_str(),
            "a,b;c=d%e\"é"
        );
    }

    #[test]
    fn malformed_members_are_skipped() {
        let decoded = decode("good=1,novalue,=empty,bad=%zz,fine=2;prop=1");
        assert_eq!(decoded.len(), 2);
        let context = Context::new().with_baggage(decoded);
        let baggage = context.baggage();
        assert_eq!(baggage.get("good").unwrap().as_str(), "1");
        let (value, metadata) = baggage.get_with_metadata("fine").unwrap();
        assert_eq!((value.as_str(), metadata.as_str()), ("2", "prop=1"));
    }

    #[test]
    fn limits_hold() {
        let oversized = format!("k={}", "v".repeat(MAX_BAGGAGE_LEN));
        assert!(decode(&oversized).is_empty());
        let many: Vec<String> = (0..100).map(|i| format!("k{i}=v")).collect();
        assert_eq!(decode(&many.join(",")).len(), MAX_BAGGAGE_MEMBERS);
    }
}
