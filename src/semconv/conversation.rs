//! `messaging.message.conversation_id` from MQTT 5 Correlation Data: text when it is text,
//! lowercase hex otherwise, bounded in length.

use std::borrow::Cow;

/// The longest `messaging.message.conversation_id` recorded, in bytes: 128.
///
/// MQTT 5 Correlation Data may be 65,535 bytes long; the bound keeps a sender from making every
/// span of a conversation that large.
pub const CONVERSATION_ID_MAX_LEN: usize = 128;

/// The `messaging.message.conversation_id` of MQTT 5 Correlation Data.
///
/// Correlation Data is binary (MQTT 5 section 3.3.2.3.6: "used by the sender of the Request
/// Message to identify which request the Response Message is for"), and semconv wants a string.
/// Only the first [`CONVERSATION_ID_MAX_LEN`] bytes count:
///
/// - when they are UTF-8 text without control characters (a character cut by the bound is
///   left out), the text as it is;
/// - otherwise the lowercase hex of the first `CONVERSATION_ID_MAX_LEN / 2` bytes: binary data,
///   and also data that happens to be UTF-8 with control characters, such as a big-endian
///   counter (`[0, 0, 0, 7]` is `00000007`, not three NULs and a BEL).
///
/// So the value is never longer than [`CONVERSATION_ID_MAX_LEN`] bytes, and both ends of a
/// conversation, given the same bytes, record the same string. Text and hex are not told apart
/// (`ab` is the text "ab" and also the hex of the byte 0xab).
///
/// ```
/// use rumqttc_opentelemetry::semconv::{CONVERSATION_ID_MAX_LEN, conversation_id};
///
/// assert_eq!(conversation_id(b"req-42"), "req-42");
/// assert_eq!(conversation_id(&[0x00, 0xff, 0x10]), "00ff10");
/// assert_eq!(conversation_id(&7_u32.to_be_bytes()), "00000007");
/// assert_eq!(conversation_id(&[b'x'; 65_535]).len(), CONVERSATION_ID_MAX_LEN);
/// assert_eq!(conversation_id(&[0xfe; 65_535]).len(), CONVERSATION_ID_MAX_LEN);
/// ```
pub fn conversation_id(correlation_data: &[u8]) -> Cow<'_, str> {
    let cut = correlation_data.len() > CONVERSATION_ID_MAX_LEN;
    let head = &correlation_data[..correlation_data.len().min(CONVERSATION_ID_MAX_LEN)];
    let text = match std::str::from_utf8(head) {
        Ok(text) => Some(text),
        // Input that ends inside a character: only the bound's doing when the data went on.
        Err(error) if cut && error.error_len().is_none() => {
            std::str::from_utf8(&head[..error.valid_up_to()]).ok()
        }
        Err(_) => None,
    };
    if let Some(text) = text.filter(|text| !text.chars().any(char::is_control)) {
        return Cow::Borrowed(text);
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = &head[..head.len().min(CONVERSATION_ID_MAX_LEN / 2)];
    let mut hex = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        hex.push(char::from(HEX[usize::from(byte >> 4)]));
        hex.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    Cow::Owned(hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversation_ids_are_text_or_hex_and_bounded() {
        assert_eq!(conversation_id(b"7f3c-request"), "7f3c-request");
        assert!(matches!(conversation_id(b"text"), Cow::Borrowed(_)));
        assert_eq!(conversation_id(&[0xde, 0xad, 0xbe, 0xef]), "deadbeef");
        assert_eq!(conversation_id("réponse-7".as_bytes()), "réponse-7");
        // UTF-8, but with control characters: a counter, not text.
        assert_eq!(conversation_id(&[0, 0, 1, 0]), "00000100");
        assert_eq!(conversation_id(b"a\nb"), "610a62");
        assert_eq!(conversation_id(&[]), "");
        // Ends inside a character ("é" is c3 a9) without being cut: not UTF-8.
        assert_eq!(conversation_id(&[b'a', 0xc3]), "61c3");
        let long_text = "a".repeat(200);
        assert_eq!(conversation_id(long_text.as_bytes()), "a".repeat(128));
        // A two-byte character across the bound is left out whole.
        let across = format!("{}é", "a".repeat(127));
        assert_eq!(conversation_id(across.as_bytes()), "a".repeat(127));
        let binary = vec![0xab; 65_535];
        assert_eq!(conversation_id(&binary), "ab".repeat(64));
        // Invalid UTF-8 after the bound does not count.
        let mut tail = long_text.into_bytes();
        tail.push(0xff);
        assert_eq!(conversation_id(&tail), "a".repeat(128));
    }
}
