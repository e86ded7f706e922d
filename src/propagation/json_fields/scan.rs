//! The JSON scanner of the JSON-fields codec: validates a whole payload against RFC 8259 and
//! reports the top-level members of its object, without building a document tree or recursing.

use std::borrow::Cow;

use super::escape::{Unescape, hex4};
use super::{JsonFieldsError, Result};

pub(super) fn malformed(offset: usize) -> JsonFieldsError {
    JsonFieldsError::Malformed { offset }
}

/// JSON whitespace (RFC 8259 section 2).
fn is_ws(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r')
}

/// The offset of the opening `{` of the payload.
pub(super) fn object_start(payload: &[u8]) -> Result<usize> {
    let start = payload.iter().position(|&byte| !is_ws(byte));
    match start {
        Some(open) if payload[open] == b'{' => Ok(open),
        Some(bom) if payload[bom..].starts_with(b"\xEF\xBB\xBF") => Err(malformed(bom)),
        _ => Err(JsonFieldsError::NotAnObject),
    }
}

/// The raw text of a JSON string, between its quotes, validated.
#[derive(Debug, Clone, Copy)]
pub(super) struct RawStr<'a> {
    bytes: &'a [u8],
    /// Whether the raw text contains a backslash escape.
    escaped: bool,
}

impl<'a> RawStr<'a> {
    /// Whether the unescaped string equals `name`.
    pub(super) fn is(&self, name: &str) -> bool {
        if !self.escaped {
            self.bytes == name.as_bytes()
        } else {
            // Unescaping never makes a string longer.
            name.len() <= self.bytes.len()
                && std::str::from_utf8(self.bytes)
                    .is_ok_and(|raw| Unescape::new(raw).eq(name.chars()))
        }
    }

    /// The unescaped string (`None` is unreachable for scanned strings).
    pub(super) fn decode(&self) -> Option<Cow<'a, str>> {
        let raw = std::str::from_utf8(self.bytes).ok()?;
        Some(if self.escaped {
            Cow::Owned(Unescape::new(raw).collect())
        } else {
            Cow::Borrowed(raw)
        })
    }
}

/// One top-level member of the object.
pub(super) struct Member<'a> {
    /// The first byte after the `{` or `,` before the member (its leading whitespace included).
    pub(super) start: usize,
    /// The first byte after the member's value.
    pub(super) value_end: usize,
    /// The offset of the `,` or `}` after the member.
    pub(super) end: usize,
    pub(super) key: RawStr<'a>,
    /// The value, when it is a string.
    pub(super) value: Option<RawStr<'a>>,
}

/// Validates the object opening at `open` and the rest of the payload, calling `on_member` for
/// each top-level member in order, and returns the offset of the object's closing `}`.
///
/// `on_member` may be called before an error later in the payload is found.
pub(super) fn scan_members<'a>(
    payload: &'a [u8],
    open: usize,
    mut on_member: impl FnMut(Member<'a>) -> Result<()>,
) -> Result<usize> {
    let mut scanner = Scanner {
        buf: payload,
        pos: open + 1,
    };
    let mut start = scanner.pos;
    scanner.skip_ws();
    if scanner.peek() == Some(b'}') {
        let close = scanner.pos;
        scanner.pos += 1;
        scanner.end()?;
        return Ok(close);
    }
    loop {
        let key = scanner.key_and_colon()?;
        let value = scanner.value()?;
        let value_end = scanner.pos;
        scanner.skip_ws();
        let end = scanner.pos;
        let member = Member {
            start,
            value_end,
            end,
            key,
            value,
        };
        match scanner.peek() {
            Some(b',') => {
                on_member(member)?;
                scanner.pos += 1;
                start = scanner.pos;
                scanner.skip_ws();
            }
            Some(b'}') => {
                on_member(member)?;
                scanner.pos += 1;
                scanner.end()?;
                return Ok(end);
            }
            _ => return Err(malformed(end)),
        }
    }
}

struct Scanner<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(is_ws) {
            self.pos += 1;
        }
    }

    fn expect(&mut self, byte: u8) -> Result<()> {
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(malformed(self.pos))
        }
    }

    /// Only whitespace may follow the object.
    fn end(&mut self) -> Result<()> {
        self.skip_ws();
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(malformed(self.pos))
        }
    }

    /// A key, `:` and the whitespace around it; `pos` is at the key.
    fn key_and_colon(&mut self) -> Result<RawStr<'a>> {
        let key = self.string()?;
        self.skip_ws();
        self.expect(b':')?;
        self.skip_ws();
        Ok(key)
    }

    /// One value (of any depth), `pos` at its first byte; returns it when it is a string.
    fn value(&mut self) -> Result<Option<RawStr<'a>>> {
        match self.peek() {
            Some(b'"') => self.string().map(Some),
            Some(b'{' | b'[') => self.container().map(|()| None),
            _ => self.scalar().map(|()| None),
        }
    }

    /// A string, number or literal, `pos` at its first byte.
    fn scalar(&mut self) -> Result<()> {
        match self.peek() {
            Some(b'"') => self.string().map(drop),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            _ => Err(malformed(self.pos)),
        }
    }

    /// An array or object of any depth, `pos` at its `[` or `{`; iterative, so that deep
    /// nesting cannot overflow the stack.
    fn container(&mut self) -> Result<()> {
        let mut open = Nesting::default();
        'value: loop {
            // `pos` is at the first byte of a value.
            match self.peek() {
                Some(b'{') => {
                    self.pos += 1;
                    self.skip_ws();
                    if self.peek() == Some(b'}') {
                        self.pos += 1;
                    } else {
                        open.push(true);
                        self.key_and_colon()?;
                        continue 'value;
                    }
                }
                Some(b'[') => {
                    self.pos += 1;
                    self.skip_ws();
                    if self.peek() == Some(b']') {
                        self.pos += 1;
                    } else {
                        open.push(false);
                        continue 'value;
                    }
                }
                _ => self.scalar()?,
            }
            // A value has ended: continue or close the enclosing containers.
            loop {
                let Some(in_object) = open.top() else {
                    return Ok(());
                };
                self.skip_ws();
                match self.peek() {
                    Some(b',') => {
                        self.pos += 1;
                        self.skip_ws();
                        if in_object {
                            self.key_and_colon()?;
                        }
                        continue 'value;
                    }
                    Some(b'}') if in_object => {
                        self.pos += 1;
                        open.pop();
                    }
                    Some(b']') if !in_object => {
                        self.pos += 1;
                        open.pop();
                    }
                    _ => return Err(malformed(self.pos)),
                }
            }
        }
    }

    fn literal(&mut self, literal: &[u8]) -> Result<()> {
        for (index, &byte) in literal.iter().enumerate() {
            if self.buf.get(self.pos + index) != Some(&byte) {
                return Err(malformed(self.pos + index));
            }
        }
        self.pos += literal.len();
        Ok(())
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    fn number(&mut self) -> Result<()> {
        let buf = self.buf;
        let digits = |mut at: usize| {
            while buf.get(at).is_some_and(u8::is_ascii_digit) {
                at += 1;
            }
            at
        };
        let some_digits = |at: usize| {
            let end = digits(at);
            if end == at {
                Err(malformed(at))
            } else {
                Ok(end)
            }
        };
        let mut at = self.pos;
        if buf.get(at) == Some(&b'-') {
            at += 1;
        }
        match buf.get(at) {
            Some(b'0') => at += 1,
            Some(b'1'..=b'9') => at = digits(at + 1),
            _ => return Err(malformed(at)),
        }
        if buf.get(at) == Some(&b'.') {
            at = some_digits(at + 1)?;
        }
        if matches!(buf.get(at), Some(b'e' | b'E')) {
            at += 1;
            if matches!(buf.get(at), Some(b'+' | b'-')) {
                at += 1;
            }
            at = some_digits(at)?;
        }
        self.pos = at;
        Ok(())
    }

    /// A string, `pos` at its opening quote: no raw control characters, valid escapes (UTF-16
    /// surrogates paired), valid UTF-8.
    fn string(&mut self) -> Result<RawStr<'a>> {
        self.expect(b'"')?;
        let buf = self.buf;
        let start = self.pos;
        let mut at = start;
        // Bytes since the last escape; checked as UTF-8 only when not all ASCII.
        let mut run = start;
        let mut non_ascii = false;
        let mut escaped = false;
        let check_run = |run: usize, end: usize, non_ascii: bool| {
            if non_ascii {
                std::str::from_utf8(&buf[run..end])
                    .map_err(|error| malformed(run + error.valid_up_to()))?;
            }
            Ok(())
        };
        loop {
            match buf.get(at) {
                Some(b'"') => {
                    check_run(run, at, non_ascii)?;
                    self.pos = at + 1;
                    return Ok(RawStr {
                        bytes: &buf[start..at],
                        escaped,
                    });
                }
                Some(b'\\') => {
                    check_run(run, at, non_ascii)?;
                    escaped = true;
                    at = escape(buf, at)?;
                    run = at;
                    non_ascii = false;
                }
                Some(0x00..=0x1F) | None => {
                    check_run(run, at, non_ascii)?;
                    return Err(malformed(at));
                }
                Some(0x80..=0xFF) => {
                    non_ascii = true;
                    at += 1;
                }
                Some(_) => at += 1,
            }
        }
    }
}

/// Validates the escape whose backslash is at `at`, and returns the offset after it.
fn escape(buf: &[u8], at: usize) -> Result<usize> {
    match buf.get(at + 1) {
        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => Ok(at + 2),
        Some(b'u') => match hex4(buf, at + 2).map_err(malformed)? {
            // A trailing surrogate without a leading one.
            0xDC00..=0xDFFF => Err(malformed(at)),
            // A leading surrogate must be followed by an escaped trailing one.
            0xD800..=0xDBFF => {
                let low = at + 6;
                if buf.get(low) != Some(&b'\\') {
                    return Err(malformed(low));
                }
                if buf.get(low + 1) != Some(&b'u') {
                    return Err(malformed(low + 1));
                }
                match hex4(buf, low + 2).map_err(malformed)? {
                    0xDC00..=0xDFFF => Ok(low + 6),
                    _ => Err(malformed(low)),
                }
            }
            _ => Ok(at + 6),
        },
        _ => Err(malformed(at + 1)),
    }
}

/// The kinds (object or array) of the open containers: one bit per level, the first 64 levels
/// without allocating.
#[derive(Default)]
struct Nesting {
    depth: usize,
    inline: u64,
    spilled: Vec<u64>,
}

impl Nesting {
    fn push(&mut self, object: bool) {
        let (word, bit) = (self.depth / 64, self.depth % 64);
        let slot = if word == 0 {
            &mut self.inline
        } else {
            if self.spilled.len() < word {
                self.spilled.push(0);
            }
            &mut self.spilled[word - 1]
        };
        if object {
            *slot |= 1 << bit;
        } else {
            *slot &= !(1 << bit);
        }
        self.depth += 1;
    }

    /// Whether the innermost open container is an object; `None` when none is open.
    fn top(&self) -> Option<bool> {
        let level = self.depth.checked_sub(1)?;
        let (word, bit) = (level / 64, level % 64);
        let slot = if word == 0 {
            self.inline
        } else {
            *self.spilled.get(word - 1)?
        };
        Some(slot & (1 << bit) != 0)
    }

    fn pop(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_spills_past_64_levels() {
        let mut nesting = Nesting::default();
        let kinds: Vec<bool> = (0..300).map(|level| level % 3 == 0).collect();
        for &kind in &kinds {
            nesting.push(kind);
            assert_eq!(nesting.top(), Some(kind));
        }
        for &kind in kinds.iter().rev() {
            assert_eq!(nesting.top(), Some(kind));
            nesting.pop();
        }
        assert_eq!(nesting.top(), None);
        // Reuse after popping overwrites stale bits.
        nesting.push(false);
        assert_eq!(nesting.top(), Some(false));
    }

    #[test]
    fn raw_str_compares_unescaped() {
        let raw = RawStr {
            bytes: br"trace\u0070arent",
            escaped: true,
        };
        assert!(raw.is("traceparent"));
        assert!(!raw.is("tracestate"));
        assert_eq!(raw.decode().as_deref(), Some("traceparent"));
        let plain = RawStr {
            bytes: b"baggage",
            escaped: false,
        };
        assert!(plain.is("baggage"));
        assert!(matches!(plain.decode(), Some(Cow::Borrowed("baggage"))));
    }
}
