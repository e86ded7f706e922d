//! Trace context carried as top-level string members of a JSON object payload.
//!
//! MQTT 3.1.1 has no user properties. For payloads that are JSON objects, the W3C
//! "Trace Context: MQTT" draft recommends carrying `traceparent` and `tracestate` as top-level
//! string members of the object; this crate also carries `baggage` that way. This module is the
//! codec for that format:
//!
//! - [`inject`] returns a copy of a JSON object payload with the given members set, and
//! - [`JsonFields::parse`] reads the wanted top-level string members back (it implements
//!   [`Extractor`], so any OpenTelemetry propagator can read from it), and
//! - [`JsonFieldsInjector`] is an [`Injector`] that collects what a propagator writes, to hand to
//!   [`inject`].
//!
//! ```
//! use rumqttc_opentelemetry::propagation::json_fields::{inject, JsonFields};
//!
//! let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
//! let out = inject(br#"{"temp": 21.5}"#, &[("traceparent", tp)]).unwrap();
//! assert_eq!(out, format!(r#"{{"traceparent":"{tp}","temp": 21.5}}"#).into_bytes());
//!
//! let fields = JsonFields::parse(&out, &["traceparent", "tracestate"]).unwrap();
//! assert_eq!(fields.get("traceparent"), Some(tp));
//! assert_eq!(fields.get("tracestate"), None);
//! ```
//!
//! # How the payload is treated
//!
//! The codec scans only the top level of the object; it builds no document tree. It still
//! validates the whole payload against RFC 8259 (strings, escapes, UTF-8, numbers, the literals
//! `true`, `false` and `null`, commas, colons, nesting), so that [`inject`] never turns a payload
//! that is not JSON into something else: when it returns an error, publish the payload unchanged.
//!
//! - **Kept bytes.** [`inject`] keeps every byte of the payload that it does not remove:
//!   whitespace before and after the object, member order, whitespace inside the object, and the
//!   exact spelling of every kept key and value (escapes, number formats). The new members are
//!   written compactly right after the opening `{`, so a reader that stops early finds them
//!   first. When the object's last member is removed, the whitespace that followed its value is
//!   kept before the closing `}`.
//! - **Names.** Keys are compared after JSON unescaping: `"trace\u0070arent"` is the key
//!   `traceparent`. Comparison is exact (case-sensitive), as JSON keys are.
//! - **Duplicate keys.** [`inject`] removes every top-level member whose name is one of the
//!   injected names, duplicates included, whatever the type of its value. [`JsonFields::get`]
//!   returns `None` for a name that occurs more than once at the top level (a duplicated
//!   `traceparent` is ambiguous, so the receiver starts a new trace); [`JsonFields::get_all`]
//!   returns every string value of that name.
//! - **Non-string values.** A wanted member whose value is not a string (number, object, ...)
//!   is not extracted, but it still counts as an occurrence of the name for [`JsonFields::get`].
//! - **Nesting depth.** Nested arrays and objects inside member values are validated without
//!   recursion, with one bit of memory per open level, so any depth is accepted and no input can
//!   overflow the stack. (`serde_json` refuses more than 127 levels by default; this codec does
//!   not, since it never needs to build the nested values.)
//! - **Numbers.** A number is checked against the JSON grammar only; its magnitude is not
//!   limited (`1e400` is well-formed JSON and is kept byte for byte, whereas `serde_json` refuses
//!   to parse it into an `f64`).
//! - **Byte order mark.** RFC 8259 forbids a UTF-8 byte order mark in JSON sent over a network.
//!   A payload starting (after optional whitespace) with `EF BB BF` is rejected with
//!   [`JsonFieldsError::Malformed`] at the offset of the mark, never silently re-encoded.
//! - **Not an object.** A payload whose first byte after JSON whitespace is not `{` (empty,
//!   whitespace only, an array, a string, a number, a literal, or not JSON at all) gives
//!   [`JsonFieldsError::NotAnObject`].

use std::borrow::Cow;

use opentelemetry::propagation::{Extractor, Injector};

/// Errors of the JSON-fields codec.
///
/// Either way, the payload should be published or delivered unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JsonFieldsError {
    /// The payload, after leading JSON whitespace, does not start with `{`: it is empty, an
    /// array, a string, a number, a literal, or not JSON.
    #[error("payload is not a JSON object")]
    NotAnObject,
    /// The payload starts like a JSON object but is not well-formed JSON (RFC 8259).
    #[error("payload is not well-formed JSON: error at byte offset {offset}")]
    Malformed {
        /// Byte offset of the first byte that cannot be part of well-formed JSON, or the payload
        /// length when the payload ends too early.
        offset: usize,
    },
    /// The payload with the injected members would not fit in memory.
    #[error("payload with the injected JSON fields would be too large")]
    TooLarge,
}

type Result<T> = std::result::Result<T, JsonFieldsError>;

/// Returns a new payload: the JSON object `payload` with `fields` (name, value) set as top-level
/// string members.
///
/// Existing top-level members with one of those names are removed (all of them, duplicates
/// included, whatever their value), every other byte of the payload is kept as is (order,
/// whitespace, escapes), and the new members are inserted right after the opening `{`, in the
/// order of `fields`, so that a reader that stops early finds them first. Fields with an empty
/// value are not written (so `("tracestate", "")` only removes a stale `tracestate`). When the
/// same name is given more than once, the last one wins. Names and values are JSON-escaped as
/// needed.
///
/// The output is allocated once, with its size computed up front.
///
/// # Errors
///
/// - [`JsonFieldsError::NotAnObject`] when the payload (after leading whitespace) is not a JSON
///   object,
/// - [`JsonFieldsError::Malformed`] when it is not well-formed JSON,
/// - [`JsonFieldsError::TooLarge`] when the output cannot be allocated.
///
/// The caller then publishes the payload unchanged.
pub fn inject(payload: &[u8], fields: &[(&str, &str)]) -> Result<Vec<u8>> {
    let open = object_start(payload)?;

    // A field is written when its value is not empty and no later field has the same name.
    let written = |index: usize| {
        let (name, value) = fields[index];
        !value.is_empty() && !fields[index + 1..].iter().any(|(later, _)| *later == name)
    };

    // Upper bound of the output size: the payload, plus each written field (`"name":"value"`
    // escaped) and one comma per written field. Removed members only shrink it.
    let mut capacity = payload.len();
    for (index, (name, value)) in fields.iter().enumerate() {
        if written(index) {
            capacity = escaped_len(name)
                .and_then(|n| escaped_len(value)?.checked_add(n))
                .and_then(|n| n.checked_add(2)) // `:` and `,`
                .and_then(|n| capacity.checked_add(n))
                .ok_or(JsonFieldsError::TooLarge)?;
        }
    }
    let mut out = Vec::new();
    out.try_reserve_exact(capacity)
        .map_err(|_| JsonFieldsError::TooLarge)?;

    out.extend_from_slice(&payload[..=open]);
    let mut wrote_member = false;
    for (index, (name, value)) in fields.iter().enumerate() {
        if written(index) {
            if wrote_member {
                out.push(b',');
            }
            write_string(&mut out, name);
            out.push(b':');
            write_string(&mut out, value);
            wrote_member = true;
        }
    }

    let mut had_member = false;
    // Whitespace after the value of the last member, when that member was removed.
    let mut removed_tail = None;
    let close = scan_members(payload, open, |member| {
        had_member = true;
        if fields.iter().any(|(name, _)| member.key.is(name)) {
            removed_tail = Some(member.value_end..member.end);
        } else {
            if wrote_member {
                out.push(b',');
            }
            out.extend_from_slice(&payload[member.start..member.end]);
            wrote_member = true;
            removed_tail = None;
        }
        Ok(())
    })?;
    if !had_member {
        // Whitespace between `{` and `}`.
        out.extend_from_slice(&payload[open + 1..close]);
    } else if let Some(tail) = removed_tail {
        out.extend_from_slice(&payload[tail]);
    }
    out.extend_from_slice(&payload[close..]);
    debug_assert!(out.len() <= capacity, "output size bound is wrong");
    Ok(out)
}

/// The top-level string members of a JSON object payload whose names are among the wanted
/// names (e.g. `["traceparent", "tracestate", "baggage"]`).
///
/// Names and values are borrowed from the payload when they contain no escapes, and unescaped
/// into owned strings otherwise. Members with other names are validated and skipped, never
/// stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JsonFields<'a> {
    /// Every top-level member with a wanted name, in payload order; `value` is `None` when the
    /// member's value is not a string.
    entries: Vec<Entry<'a>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry<'a> {
    name: Cow<'a, str>,
    value: Option<Cow<'a, str>>,
}

impl<'a> JsonFields<'a> {
    /// Reads the top-level members of the JSON object `payload` whose names are in `names`.
    ///
    /// The whole payload is validated, as for [`inject`].
    ///
    /// # Errors
    ///
    /// [`JsonFieldsError::NotAnObject`] when the payload (after leading whitespace) is not a
    /// JSON object, [`JsonFieldsError::Malformed`] when it is not well-formed JSON.
    pub fn parse(payload: &'a [u8], names: &[&str]) -> Result<Self> {
        let open = object_start(payload)?;
        let mut entries = Vec::new();
        scan_members(payload, open, |member| {
            if names.iter().any(|name| member.key.is(name)) {
                let name = member.key.decode().ok_or(malformed(member.start))?;
                let value = match member.value {
                    Some(value) => Some(value.decode().ok_or(malformed(member.start))?),
                    None => None,
                };
                entries.push(Entry { name, value });
            }
            Ok(())
        })?;
        Ok(Self { entries })
    }

    /// The value of the member `name`: `None` when it is absent, when its value is not a
    /// string, or when the payload has more than one top-level member of that name (a
    /// duplicated `traceparent` is invalid, so the receiver starts a new trace).
    pub fn get(&self, name: &str) -> Option<&str> {
        let mut found = None;
        for entry in self.entries.iter().filter(|entry| entry.name == name) {
            if found.is_some() {
                return None;
            }
            found = Some(entry.value.as_deref());
        }
        found.flatten()
    }

    /// Every string value of the members named `name`, in payload order.
    pub fn get_all(&self, name: &str) -> Vec<&str> {
        self.entries
            .iter()
            .filter(|entry| entry.name == name)
            .filter_map(|entry| entry.value.as_deref())
            .collect()
    }

    /// The (name, value) pairs of the wanted members with string values, in payload order,
    /// duplicates included.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries
            .iter()
            .filter_map(|entry| Some((entry.name.as_ref(), entry.value.as_deref()?)))
    }

    /// The number of wanted members with string values, duplicates included.
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// Whether no wanted member with a string value was found.
    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }
}

impl Extractor for JsonFields<'_> {
    /// Same rule as [`JsonFields::get`]: `None` when the name is absent, not a string, or
    /// present more than once.
    fn get(&self, key: &str) -> Option<&str> {
        JsonFields::get(self, key)
    }

    /// The distinct names of the wanted members with string values, in payload order.
    fn keys(&self) -> Vec<&str> {
        let mut keys: Vec<&str> = Vec::new();
        for (name, _) in self.iter() {
            if !keys.contains(&name) {
                keys.push(name);
            }
        }
        keys
    }

    /// Every string value of `key`, or `None` when there is none.
    fn get_all(&self, key: &str) -> Option<Vec<&str>> {
        let all = JsonFields::get_all(self, key);
        (!all.is_empty()).then_some(all)
    }
}

/// An [`Injector`] that collects the fields a propagator sets, to write them into a JSON object
/// payload with [`JsonFieldsInjector::apply`] (which calls [`inject`]).
///
/// Setting a name again replaces its value. Setting a name to an empty value makes
/// [`JsonFieldsInjector::apply`] remove that name from the payload without writing it, which is
/// how to clear stale members (e.g. set `tracestate` to `""` before injecting).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JsonFieldsInjector {
    fields: Vec<(String, String)>,
}

impl JsonFieldsInjector {
    /// An injector with no fields.
    pub fn new() -> Self {
        Self::default()
    }

    /// The collected (name, value) pairs, in the order the names were first set.
    pub fn fields(&self) -> impl Iterator<Item = (&str, &str)> {
        self.fields
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
    }

    /// Whether no field was set.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// [`inject`]s the collected fields into `payload`.
    ///
    /// # Errors
    ///
    /// As [`inject`]; the caller then publishes the payload unchanged.
    pub fn apply(&self, payload: &[u8]) -> Result<Vec<u8>> {
        let fields: Vec<(&str, &str)> = self.fields().collect();
        inject(payload, &fields)
    }
}

impl Injector for JsonFieldsInjector {
    fn set(&mut self, key: &str, value: String) {
        match self.fields.iter_mut().find(|(name, _)| name == key) {
            Some((_, old)) => *old = value,
            None => self.fields.push((key.to_owned(), value)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Scanner
// ---------------------------------------------------------------------------------------------

fn malformed(offset: usize) -> JsonFieldsError {
    JsonFieldsError::Malformed { offset }
}

/// JSON whitespace (RFC 8259 section 2).
fn is_ws(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r')
}

/// The offset of the opening `{` of the payload.
fn object_start(payload: &[u8]) -> Result<usize> {
    let start = payload.iter().position(|&byte| !is_ws(byte));
    match start {
        Some(open) if payload[open] == b'{' => Ok(open),
        Some(bom) if payload[bom..].starts_with(b"\xEF\xBB\xBF") => Err(malformed(bom)),
        _ => Err(JsonFieldsError::NotAnObject),
    }
}

/// The raw text of a JSON string, between its quotes, validated.
#[derive(Debug, Clone, Copy)]
struct RawStr<'a> {
    bytes: &'a [u8],
    /// Whether the raw text contains a backslash escape.
    escaped: bool,
}

impl<'a> RawStr<'a> {
    /// Whether the unescaped string equals `name`.
    fn is(&self, name: &str) -> bool {
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
    fn decode(&self) -> Option<Cow<'a, str>> {
        let raw = std::str::from_utf8(self.bytes).ok()?;
        Some(if self.escaped {
            Cow::Owned(Unescape::new(raw).collect())
        } else {
            Cow::Borrowed(raw)
        })
    }
}

/// One top-level member of the object.
struct Member<'a> {
    /// The first byte after the `{` or `,` before the member (its leading whitespace included).
    start: usize,
    /// The first byte after the member's value.
    value_end: usize,
    /// The offset of the `,` or `}` after the member.
    end: usize,
    key: RawStr<'a>,
    /// The value, when it is a string.
    value: Option<RawStr<'a>>,
}

/// Validates the object opening at `open` and the rest of the payload, calling `on_member` for
/// each top-level member in order, and returns the offset of the object's closing `}`.
///
/// `on_member` may be called before an error later in the payload is found.
fn scan_members<'a>(
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
        Some(b'u') => match hex4(buf, at + 2)? {
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
                match hex4(buf, low + 2)? {
                    0xDC00..=0xDFFF => Ok(low + 6),
                    _ => Err(malformed(low)),
                }
            }
            _ => Ok(at + 6),
        },
        _ => Err(malformed(at + 1)),
    }
}

/// Four hex digits at `at`.
fn hex4(buf: &[u8], at: usize) -> Result<u32> {
    let mut value = 0;
    for offset in at..at + 4 {
        let digit = buf
            .get(offset)
            .and_then(|&byte| char::from(byte).to_digit(16))
            .ok_or(malformed(offset))?;
        value = value << 4 | digit;
    }
    Ok(value)
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

// ---------------------------------------------------------------------------------------------
// Escaping and unescaping
// ---------------------------------------------------------------------------------------------

/// The length of `value` as a JSON string, quotes included.
fn escaped_len(value: &str) -> Option<usize> {
    value.bytes().try_fold(2usize, |len, byte| {
        len.checked_add(match byte {
            b'"' | b'\\' | 0x08 | 0x0C | b'\n' | b'\r' | b'\t' => 2,
            0x00..=0x1F => 6,
            _ => 1,
        })
    })
}

/// Writes `value` as a JSON string: `"` and `\` and control characters escaped, everything else
/// (`/` and non-ASCII included) as is.
fn write_string(out: &mut Vec<u8>, value: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = value.as_bytes();
    let mut run = 0;
    for (at, &byte) in bytes.iter().enumerate() {
        let short = match byte {
            b'"' => b'"',
            b'\\' => b'\\',
            0x08 => b'b',
            0x0C => b'f',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' => b't',
            0x00..=0x1F => b'u',
            _ => continue,
        };
        out.extend_from_slice(&bytes[run..at]);
        run = at + 1;
        out.push(b'\\');
        out.push(short);
        if short == b'u' {
            out.extend_from_slice(&[
                b'0',
                b'0',
                HEX[usize::from(byte >> 4)],
                HEX[usize::from(byte & 0xF)],
            ]);
        }
    }
    out.extend_from_slice(&bytes[run..]);
    out.push(b'"');
}

/// The characters of the raw text of a validated JSON string, unescaped.
struct Unescape<'a> {
    raw: &'a str,
}

impl<'a> Unescape<'a> {
    fn new(raw: &'a str) -> Self {
        Self { raw }
    }
}

impl Iterator for Unescape<'_> {
    type Item = char;

    fn next(&mut self) -> Option<char> {
        let first = self.raw.chars().next()?;
        let (c, used) = if first != '\\' {
            (first, first.len_utf8())
        } else {
            let bytes = self.raw.as_bytes();
            match bytes.get(1) {
                Some(b'"') => ('"', 2),
                Some(b'\\') => ('\\', 2),
                Some(b'/') => ('/', 2),
                Some(b'b') => ('\u{8}', 2),
                Some(b'f') => ('\u{C}', 2),
                Some(b'n') => ('\n', 2),
                Some(b'r') => ('\r', 2),
                Some(b't') => ('\t', 2),
                Some(b'u') => match hex4(bytes, 2) {
                    Ok(high @ 0xD800..=0xDBFF) if bytes.get(6..8) == Some(b"\\u") => {
                        match hex4(bytes, 8) {
                            Ok(low @ 0xDC00..=0xDFFF) => {
                                let code = 0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00);
                                (char::from_u32(code).unwrap_or('\u{FFFD}'), 12)
                            }
                            _ => ('\u{FFFD}', 6),
                        }
                    }
                    Ok(code) => (char::from_u32(code).unwrap_or('\u{FFFD}'), 6),
                    Err(_) => ('\u{FFFD}', 2),
                },
                // Unreachable for validated strings.
                _ => ('\u{FFFD}', 1),
            }
        };
        self.raw = self.raw.get(used..).unwrap_or("");
        Some(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unescape(raw: &str) -> String {
        Unescape::new(raw).collect()
    }

    #[test]
    fn unescapes_every_escape() {
        assert_eq!(unescape(r#"a\"b\\c\/d"#), "a\"b\\c/d");
        assert_eq!(unescape(r"\b\f\n\r\t"), "\u{8}\u{C}\n\r\t");
        assert_eq!(unescape(r"trace\u0070arent"), "traceparent");
        assert_eq!(unescape(r"\u00e9\u4E2D"), "é中");
        assert_eq!(unescape(r"x\ud83d\ude00y"), "x😀y");
        assert_eq!(unescape("plain é"), "plain é");
    }

    #[test]
    fn escapes_what_json_requires() {
        let mut out = Vec::new();
        write_string(&mut out, "a\"b\\c/d\u{0}\u{1f}\n\té\u{7f}");
        assert_eq!(out, br#""a\"b\\c/d\u0000\u001f\n\t"#.iter().chain("é\u{7f}\"".as_bytes()).copied().collect::<Vec<_>>());
        let value = "q\"\\\u{1}\u{8}x";
        let mut out = Vec::new();
        write_string(&mut out, value);
        assert_eq!(escaped_len(value), Some(out.len()));
    }

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

    #[test]
    fn output_capacity_is_an_upper_bound() {
        // debug_assert! in `inject` checks the bound; exercise removal-heavy cases.
        let payload = br#" { "traceparent" : "x" , "tracestate":"y","a":1 , "traceparent":2 } "#;
        for fields in [
            &[("traceparent", "00-aa")][..],
            &[("traceparent", ""), ("tracestate", "")][..],
            &[
                ("a", "\u{0}\u{0}"),
                ("traceparent", "z"),
                ("tracestate", "s"),
            ][..],
        ] {
            let out = inject(payload, fields).unwrap();
            let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert!(value.is_object());
        }
    }
}
