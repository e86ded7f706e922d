//! Strict W3C Trace Context parsing and formatting of `traceparent` and `tracestate`.
//!
//! The SDK's `TraceContextPropagator` trims white space, accepts a version-00 value with extra
//! fields, and turns an invalid `tracestate` into an empty one only after it has split and copied
//! it. Here every rule of W3C Trace Context (Level 1, section 3.2 and 3.3) is checked on the bytes,
//! without allocating, before anything is built.

use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

/// The longest `traceparent` accepted from a future version (W3C 3.2.4 lets later versions append
/// fields after the 55 bytes of version 00; nothing legitimate needs more than this).
pub const MAX_TRACEPARENT_LEN: usize = 512;
/// The most list-members a `tracestate` may have (W3C 3.3.1).
pub const MAX_TRACESTATE_MEMBERS: usize = 32;
/// The longest `tracestate` accepted; 32 members of the longest key and value fit.
pub const MAX_TRACESTATE_LEN: usize = 32 * (256 + 1 + 256) + 31;

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
    /// The trace flags; only the `sampled` bit is kept, as W3C 3.2.2.5 asks of a version-00
    /// parser for the bits it does not know.
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
        flags: TraceFlags::new(flags as u8) & TraceFlags::SAMPLED,
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
/// formatting machinery.
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
        &[(context.trace_flags() & TraceFlags::SAMPLED).to_u8()],
    );
    // Every byte written above is ASCII, so the conversion cannot fail.
    std::str::from_utf8(&out).map_or_else(|_| String::new(), str::to_owned)
}

/// Why a `tracestate` was discarded. The `traceparent` still counts: W3C 3.3.1.1 lets a receiver
/// drop an invalid `tracestate` and keep the trace.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TracestateError {
    /// More than [`MAX_TRACESTATE_MEMBERS`] list-members.
    #[error("tracestate has more than {MAX_TRACESTATE_MEMBERS} list-members")]
    TooManyMembers,
    /// Longer than [`MAX_TRACESTATE_LEN`].
    #[error("tracestate of {0} bytes exceeds the limit of {MAX_TRACESTATE_LEN}")]
    Oversized(usize),
    /// A list-member is not `key=value`, or its key or value breaks W3C 3.3.1.3.
    #[error("tracestate list-member {0} is malformed")]
    Member(usize),
    /// Two list-members share a key (W3C 3.3.1.1).
    #[error("tracestate key {0:?} appears twice")]
    DuplicateKey(String),
}

fn is_key_char(byte: u8) -> bool {
    byte.is_ascii_lowercase() || byte.is_ascii_digit() || matches!(byte, b'_' | b'-' | b'*' | b'/')
}

/// W3C 3.3.1.3.1: `simple-key` or `tenant-id@system-id`.
fn valid_key(key: &[u8]) -> bool {
    match key.iter().position(|&byte| byte == b'@') {
        None => {
            (1..=256).contains(&key.len())
                && key[0].is_ascii_lowercase()
                && key[1..].iter().all(|&byte| is_key_char(byte))
        }
        Some(at) => {
            let (tenant, system) = (&key[..at], &key[at + 1..]);
            (1..=241).contains(&tenant.len())
                && (tenant[0].is_ascii_lowercase() || tenant[0].is_ascii_digit())
                && tenant[1..].iter().all(|&byte| is_key_char(byte))
                && (1..=14).contains(&system.len())
                && system[0].is_ascii_lowercase()
                && system[1..].iter().all(|&byte| is_key_char(byte))
        }
    }
}

/// W3C 3.3.1.3.2: 1 to 256 printable ASCII characters other than `,` and `=`, not ending in a
/// space.
fn valid_value(value: &[u8]) -> bool {
    (1..=256).contains(&value.len())
        && value
            .iter()
            .all(|&byte| (0x20..=0x7e).contains(&byte) && byte != b',' && byte != b'=')
        && value.last() != Some(&b' ')
}

fn trim_ows(member: &str) -> &str {
    member.trim_matches([' ', '\t'])
}

/// Parses a `tracestate` value by the rules of W3C Trace Context, section 3.3: at most 32
/// list-members, empty members (`a=1,,b=2`) skipped, optional white space around members, valid
/// keys and values, no key twice.
///
/// ```
/// use rumqttc_opentelemetry::propagation::parse_tracestate;
///
/// let state = parse_tracestate("rojo=00f067aa0ba902b7, congo=t61rcWkgMzE").unwrap();
/// assert_eq!(state.get("congo"), Some("t61rcWkgMzE"));
/// assert!(parse_tracestate("Upper=1").is_err());
/// ```
pub fn parse_tracestate(value: &str) -> Result<TraceState, TracestateError> {
    if value.len() > MAX_TRACESTATE_LEN {
        return Err(TracestateError::Oversized(value.len()));
    }
    let mut members: Vec<(&str, &str)> = Vec::new();
    for (index, member) in value.split(',').map(trim_ows).enumerate() {
        if member.is_empty() {
            continue;
        }
        if members.len() == MAX_TRACESTATE_MEMBERS {
            return Err(TracestateError::TooManyMembers);
        }
        let (key, member_value) = member
            .split_once('=')
            .ok_or(TracestateError::Member(index))?;
        if !valid_key(key.as_bytes()) || !valid_value(member_value.as_bytes()) {
            return Err(TracestateError::Member(index));
        }
        if members.iter().any(|(seen, _)| *seen == key) {
            return Err(TracestateError::DuplicateKey(key.to_owned()));
        }
        members.push((key, member_value));
    }
    if members.is_empty() {
        return Ok(TraceState::NONE);
    }
    TraceState::from_key_value(members).map_err(|_| TracestateError::Member(0))
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn only_the_sampled_flag_is_kept() {
        let parsed = parse_traceparent(&VALID.replace("-01", "-ff")).unwrap();
        assert_eq!(parsed.flags, TraceFlags::SAMPLED);
        let parsed = parse_traceparent(&VALID.replace("-01", "-02")).unwrap();
        assert_eq!(parsed.flags, TraceFlags::NOT_SAMPLED);
    }

    #[test]
    fn keys_follow_w3c_grammar() {
        assert!(valid_key(b"rojo"));
        assert!(valid_key(b"a1_-*/"));
        assert!(valid_key(b"tenant@system"));
        assert!(valid_key(b"1tenant@sys"));
        assert!(!valid_key(b"1simple"));
        assert!(!valid_key(b""));
        assert!(!valid_key(b"a@"));
        assert!(!valid_key(b"@b"));
        assert!(!valid_key(b"t@system-id-too-long"));
        assert!(!valid_key(&[b'a'; 257]));
        assert!(valid_key(&[b'a'; 256]));
    }

    #[test]
    fn values_follow_w3c_grammar() {
        assert!(valid_value(b"00f067aa0ba902b7"));
        assert!(valid_value(b"a b"));
        assert!(!valid_value(b"trailing "));
        assert!(!valid_value(b""));
        assert!(!valid_value(b"a=b"));
        assert!(!valid_value("é".as_bytes()));
        assert!(!valid_value(&[b'v'; 257]));
    }
}
