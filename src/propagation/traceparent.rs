//! Strict W3C Trace Context parsing and formatting of `traceparent`, trace flags included.
//!
//! The SDK's `TraceContextPropagator` trims white space, accepts a version-00 value with extra
//! fields or fields of the wrong length, and keeps only the `sampled` flag. Here every rule of the
//! spec's "Traceparent Header" section is checked on the bytes, without allocating, and both
//! flags the current spec defines (`sampled` and Level 2's `random-trace-id`) are kept.

use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId};

/// The longest `traceparent` accepted from a future version (W3C 3.2.4 lets later versions append
/// fields after the 55 bytes of version 00; nothing legitimate needs more than this).
pub const MAX_TRACEPARENT_LEN: usize = 512;

/// The `random-trace-id` trace flag (`0x02`, spec section "Random Trace ID Flag", Trace Context
/// Level 2): at least the right-most 7 bytes of the trace id are random. opentelemetry 0.33's
/// `TraceFlags` has a constant for `sampled` only; this is the other one.
pub const RANDOM_TRACE_ID_FLAG: TraceFlags = TraceFlags::new(0x02);

/// The trace flags this crate reads and writes: `sampled` and `random-trace-id`. The others are
/// reserved; a receiver sets them to zero (spec section "Other Flags").
pub const KNOWN_TRACE_FLAGS: TraceFlags = TraceFlags::new(0x03);

const VERSION_00_LEN: usize = 55;

/// Why a `traceparent` was rejected. The message is still delivered; it starts a new trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TraceparentError {
    /// There is no `traceparent`.
    #[error("no traceparent")]
    Missing,
    /// There is more than one `traceparent`; W3C 3.2 allows one, so none of them is trusted.
    #[error("{0} traceparent values where W3C Trace Context allows one")]
    Duplicate(usize),
    /// The value is longer than [`MAX_TRACEPARENT_LEN`]; it is dropped, never forwarded.
    #[error("traceparent of {0} bytes exceeds the limit of {MAX_TRACEPARENT_LEN}")]
    Oversized(usize),
    /// A version-00 value is not exactly 55 bytes, or a later version is shorter than 55
    /// (W3C 3.2.2, 3.2.4).
    #[error("traceparent has {0} bytes; version 00 needs exactly 55")]
    Length(usize),
    /// The version is not two lowercase hex digits (W3C 3.2.2.1).
    #[error("traceparent version is not two lowercase hex digits")]
    Version,
    /// The version is `ff`, which W3C 3.2.2.1 forbids.
    #[error("traceparent version ff is forbidden")]
    ForbiddenVersion,
    /// A `-` is missing where the format requires one (W3C 3.2.2).
    #[error("traceparent has no '-' at byte {0}")]
    Delimiter(usize),
    /// The trace id is not 32 lowercase hex digits (W3C 3.2.2.3).
    #[error("traceparent trace-id is not 32 lowercase hex digits")]
    TraceIdHex,
    /// The trace id is all zeros (W3C 3.2.2.3).
    #[error("traceparent trace-id is all zeros")]
    ZeroTraceId,
    /// The parent id is not 16 lowercase hex digits (W3C 3.2.2.4).
    #[error("traceparent parent-id is not 16 lowercase hex digits")]
    SpanIdHex,
    /// The parent id is all zeros (W3C 3.2.2.4).
    #[error("traceparent parent-id is all zeros")]
    ZeroSpanId,
    /// The flags are not two lowercase hex digits (W3C 3.2.2.5).
    #[error("traceparent trace-flags are not two lowercase hex digits")]
    FlagsHex,
}

/// The three fields of a valid `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Traceparent {
    /// The trace id (never [`TraceId::INVALID`]).
    pub trace_id: TraceId,
    /// The id of the parent span (never [`SpanId::INVALID`]).
    pub span_id: SpanId,
    /// The trace flags: `sampled` and `random-trace-id` as received; the reserved bits are
    /// cleared (spec section "Other Flags": vendors set them to zero).
    pub flags: TraceFlags,
}

/// Lowercase hex digit values; 0xff marks every other byte.
const HEX_VALUES: [u8; 256] = {
    let mut table = [0xff_u8; 256];
    let mut digit = 0;
    while digit < 10 {
        table[b'0' as usize + digit] = digit as u8;
        digit += 1;
    }
    let mut letter = 0;
    while letter < 6 {
        table[b'a' as usize + letter] = 10 + letter as u8;
        letter += 1;
    }
    table
};

/// Parses lowercase hex into a number; `None` on any other byte. `bytes` is at most 16 long.
#[inline]
fn parse_hex_u64(bytes: &[u8]) -> Option<u64> {
    let mut value = 0_u64;
    let mut invalid = 0_u8;
    for &byte in bytes {
        let nibble = HEX_VALUES[usize::from(byte)];
        invalid |= nibble & 0xf0;
        value = (value << 4) | u64::from(nibble & 0x0f);
    }
    (invalid == 0).then_some(value)
}

/// Parses 32 lowercase hex digits.
#[inline]
fn parse_hex_u128(bytes: &[u8]) -> Option<u128> {
    let (high, low) = bytes.split_at(bytes.len().saturating_sub(16));
    Some((u128::from(parse_hex_u64(high)?) << 64) | u128::from(parse_hex_u64(low)?))
}

/// Parses a `traceparent` value by the rules of W3C Trace Context, section 3.2.
///
/// - version: two lowercase hex digits, not `ff`;
/// - version `00`: exactly 55 bytes, `00-{32 hex}-{16 hex}-{2 hex}`;
/// - a later version: at least 55 bytes, the first 55 as in version 00 and, when longer, a `-`
///   at byte 55 (the fields it adds are ignored);
/// - lowercase hex only; neither id all zeros.
///
/// No white space is trimmed: MQTT user properties are not HTTP headers.
///
/// ```
/// use rumqttc_opentelemetry::propagation::{parse_traceparent, TraceparentError};
///
/// let parsed = parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
/// assert!(parsed.flags.is_sampled());
/// assert_eq!(
///     parse_traceparent("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
///     Err(TraceparentError::TraceIdHex)
/// );
/// ```
pub fn parse_traceparent(value: &str) -> Result<Traceparent, TraceparentError> {
    let bytes = value.as_bytes();
    if bytes.len() > MAX_TRACEPARENT_LEN {
        return Err(TraceparentError::Oversized(bytes.len()));
    }
    if bytes.len() < 2 {
        return Err(TraceparentError::Length(bytes.len()));
    }
    let version = parse_hex_u64(&bytes[..2]).ok_or(TraceparentError::Version)?;
    if version == 0xff {
        return Err(TraceparentError::ForbiddenVersion);
    }
    let length_ok = if version == 0 {
        bytes.len() == VERSION_00_LEN
    } else {
        bytes.len() >= VERSION_00_LEN
    };
    if !length_ok {
        return Err(TraceparentError::Length(bytes.len()));
    }
    for position in [2, 35, 52] {
        if bytes[position] != b'-' {
            return Err(TraceparentError::Delimiter(position));
        }
    }
    if bytes.len() > VERSION_00_LEN && bytes[VERSION_00_LEN] != b'-' {
        return Err(TraceparentError::Delimiter(VERSION_00_LEN));
    }
    let trace_id = parse_hex_u128(&bytes[3..35]).ok_or(TraceparentError::TraceIdHex)?;
    if trace_id == 0 {
        return Err(TraceparentError::ZeroTraceId);
    }
    let span_id = parse_hex_u64(&bytes[36..52]).ok_or(TraceparentError::SpanIdHex)?;
    if span_id == 0 {
        return Err(TraceparentError::ZeroSpanId);
    }
    let flags = parse_hex_u64(&bytes[53..55]).ok_or(TraceparentError::FlagsHex)?;
    Ok(Traceparent {
        trace_id: TraceId::from(trace_id),
        span_id: SpanId::from(span_id),
        flags: TraceFlags::new(flags as u8) & KNOWN_TRACE_FLAGS,
    })
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn write_hex(out: &mut [u8], bytes: &[u8]) {
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0x0f)];
    }
}

/// Formats the `traceparent` (version 00) of a span context: one 55-byte allocation, no
/// formatting machinery. The `sampled` and `random-trace-id` flags are written as they are in
/// the context (spec section "Random Trace ID Flag": a continued trace keeps the flag), the
/// reserved ones as zero.
///
/// ```
/// use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
/// use rumqttc_opentelemetry::propagation::format_traceparent;
///
/// let context = SpanContext::new(
///     TraceId::from(0x4bf92f3577b34da6a3ce929d0e0e4736),
///     SpanId::from(0x00f067aa0ba902b7),
///     TraceFlags::SAMPLED,
///     false,
///     TraceState::NONE,
/// );
/// assert_eq!(
///     format_traceparent(&context),
///     "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
/// );
/// ```
pub fn format_traceparent(context: &SpanContext) -> String {
    let mut out = [0_u8; VERSION_00_LEN];
    out[..2].copy_from_slice(b"00");
    out[2] = b'-';
    write_hex(&mut out[3..35], &context.trace_id().to_bytes());
    out[35] = b'-';
    write_hex(&mut out[36..52], &context.span_id().to_bytes());
    out[52] = b'-';
    write_hex(
        &mut out[53..55],
        &[(context.trace_flags() & KNOWN_TRACE_FLAGS).to_u8()],
    );
    // Every byte written above is ASCII, so the conversion cannot fail.
    std::str::from_utf8(&out).map_or_else(|_| String::new(), str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TraceState;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn format_then_parse_round_trips() {
        for (trace, span, flags) in [
            (1_u128, 1_u64, TraceFlags::NOT_SAMPLED),
            (u128::MAX, u64::MAX, TraceFlags::SAMPLED),
            (
                0x4bf92f3577b34da6a3ce929d0e0e4736,
                0x00f067aa0ba902b7,
                TraceFlags::SAMPLED,
            ),
        ] {
            let context = SpanContext::new(
                TraceId::from(trace),
                SpanId::from(span),
                flags,
                true,
                TraceState::NONE,
            );
            let text = format_traceparent(&context);
            assert_eq!(
                text,
                format!("00-{trace:032x}-{span:016x}-{:02x}", flags.to_u8())
            );
            let parsed = parse_traceparent(&text).unwrap();
            assert_eq!(
                (parsed.trace_id, parsed.span_id, parsed.flags),
                (TraceId::from(trace), SpanId::from(span), flags)
            );
        }
    }

    /// Spec sections "Random Trace ID Flag" (Level 2: the flag received is the flag sent on)
    /// and "Other Flags" (unknown bits are set to zero). Before Level 2 support this test was
    /// `only_the_sampled_flag_is_kept` and asserted that `02` reads as `00`: the Level 2 rule
    /// proves that wrong.
    #[test]
    fn sampled_and_random_flags_are_kept_and_the_rest_cleared() {
        for (text, expected) in [("00", 0x00), ("01", 0x01), ("02", 0x02), ("03", 0x03)] {
            let parsed = parse_traceparent(&VALID.replace("-01", &format!("-{text}"))).unwrap();
            assert_eq!(parsed.flags, TraceFlags::new(expected), "{text}");
        }
        let parsed = parse_traceparent(&VALID.replace("-01", "-ff")).unwrap();
        assert_eq!(parsed.flags, KNOWN_TRACE_FLAGS);
        let parsed = parse_traceparent(&VALID.replace("-01", "-fc")).unwrap();
        assert_eq!(parsed.flags, TraceFlags::NOT_SAMPLED);
    }

    /// Spec section "Random Trace ID Flag": a continued trace carries the flag on; reserved bits
    /// of the context are not written ("Other Flags").
    #[test]
    fn the_random_flag_is_written_and_reserved_bits_are_not() {
        for (flags, written) in [(0x02, "02"), (0x03, "03"), (0xff, "03"), (0x04, "00")] {
            let context = SpanContext::new(
                TraceId::from(1),
                SpanId::from(1),
                TraceFlags::new(flags),
                false,
                Default::default(),
            );
            assert!(format_traceparent(&context).ends_with(&format!("-{written}")));
        }
        assert!(
            parse_traceparent(&VALID.replace("-01", "-02"))
                .is_ok_and(|parsed| (parsed.flags & RANDOM_TRACE_ID_FLAG) == RANDOM_TRACE_ID_FLAG)
        );
    }
}
