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
//! - **Several `tracestate` members.** RFC 8259 (section 4) says the names of an object SHOULD
//!   be unique and leaves duplicates to the receiver; W3C Trace Context says several
//!   `tracestate` fields are one list, combined in order. This crate never writes two: the
//!   injector removes every `tracestate` member and writes one, with the whole list. When it
//!   reads a payload that has several, it applies the W3C rule to them in payload order (their
//!   string values, through [`Extractor::get_all`]), exactly as for several MQTT 5 user
//!   properties or envelope headers, so all three carriers agree. Other JSON readers often keep
//!   only the last member of a name, so a producer should not split the list.
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

mod escape;
mod scan;

use std::borrow::Cow;

use opentelemetry::propagation::{Extractor, Injector};

use escape::{escaped_len, write_string};
use scan::{malformed, object_start, scan_members};

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

#[cfg(test)]
mod tests {
    use super::*;

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
