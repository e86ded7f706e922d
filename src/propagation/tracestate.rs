//! W3C `tracestate` parsing and writing: several fields as one list, the current key grammar,
//! duplicate keys, the 32-member limit and the truncation of a long list.
//!
//! Section names below are those of the current W3C Trace Context text ("Tracestate Header"):
//!
//! - "tracestate Header Field Values": several `tracestate` fields are one list, combined in
//!   order (RFC 9110 section 5.3); empty and white-space-only list-members are allowed; at most
//!   32 list-members.
//! - "Key": `key = ( lcalpha / DIGIT ) 0*255 ( keychar )`, `keychar` being `a-z 0-9 _ - * / @`.
//!   Level 1's `tenant@system` form is a special case of it, no longer a rule of its own.
//! - "Value": 1 to 256 printable ASCII characters other than `,` and `=`, not ending in a space.
//! - "Mutating the tracestate Field": a receiver may discard duplicate keys it did not write;
//!   it keeps the rest of the state. The left-most member of a key is kept (modified keys move
//!   left, so it is the most recent one).
//! - "tracestate Limits": a list too long to propagate is truncated by whole entries, entries
//!   longer than 128 characters first, then from the end.
//!
//! Parsing works on the borrowed text; up to four members are kept without allocating before the
//! SDK's `TraceState` is built.

use opentelemetry::trace::TraceState;

use super::carrier::MAX_PROPAGATION_VALUE_LEN;

/// The most list-members a `tracestate` may have, all its fields together (spec section
/// "tracestate Header Field Values"). A list with more is discarded whole.
pub const MAX_TRACESTATE_MEMBERS: usize = 32;

/// The longest combined `tracestate` read: all its fields, with the commas that join them.
/// 32 members of the longest key and value fit; a longer one is discarded whole.
pub const MAX_TRACESTATE_LEN: usize = 32 * (256 + 1 + 256) + 31;

/// The longest `tracestate` kept or written, as one header: the carrier limit
/// ([`MAX_PROPAGATION_VALUE_LEN`]), far above the 512 characters the spec asks a vendor to
/// propagate at least. A longer list is truncated by the spec's rule.
const MAX_HEADER_LEN: usize = MAX_PROPAGATION_VALUE_LEN;

/// Entries longer than this are the first to go when a list is truncated ("tracestate Limits").
const LONG_ENTRY_LEN: usize = 128;

/// Why a `tracestate` was discarded. The `traceparent` still counts: a receiver may drop an
/// invalid `tracestate` and keep the trace (processing model, "A traceparent is Received", step
/// 3).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TracestateError {
    /// More than [`MAX_TRACESTATE_MEMBERS`] list-members, all fields together.
    #[error("tracestate has more than {MAX_TRACESTATE_MEMBERS} list-members")]
    TooManyMembers,
    /// One field is longer than the carrier limit ([`MAX_PROPAGATION_VALUE_LEN`]), or all of
    /// them together longer than [`MAX_TRACESTATE_LEN`].
    #[error("tracestate of {0} bytes exceeds the limit")]
    Oversized(usize),
    /// A list-member (counted from 0 over the combined list, empty ones included) is not
    /// `key=value`, or its key or value breaks the grammar.
    #[error("tracestate list-member {0} is malformed")]
    Member(usize),
}

/// Which bytes may appear in a key after its first character (`keychar` of the spec's "Key"
/// section: `a-z 0-9 _ - * / @`) and in a value (`chr`: printable ASCII but `,` and `=`).
const KEY_CHAR: u8 = 1;
const VALUE_CHAR: u8 = 2;
const CLASSES: [u8; 256] = {
    let mut table = [0_u8; 256];
    let mut byte = 0x20;
    while byte <= 0x7e {
        if byte != b',' as usize && byte != b'=' as usize {
            table[byte] = VALUE_CHAR;
        }
        byte += 1;
    }
    let mut byte = 0;
    while byte < 256 {
        let c = byte as u8;
        if c.is_ascii_lowercase()
            || c.is_ascii_digit()
            || matches!(c, b'_' | b'-' | b'*' | b'/' | b'@')
        {
            table[byte] |= KEY_CHAR;
        }
        byte += 1;
    }
    table
};

fn all_of(class: u8, bytes: &[u8]) -> bool {
    bytes
        .iter()
        .fold(class, |all, &byte| all & CLASSES[usize::from(byte)])
        == class
}

/// `key = ( lcalpha / DIGIT ) 0*255 ( keychar )`: 1 to 256 characters, the first a lowercase
/// letter or a digit.
pub(crate) fn valid_key(key: &[u8]) -> bool {
    match key.first() {
        Some(first) => {
            key.len() <= 256
                && (first.is_ascii_lowercase() || first.is_ascii_digit())
                && all_of(KEY_CHAR, key)
        }
        None => false,
    }
}

/// `value = 0*255(chr) nblk-chr`: 1 to 256 printable ASCII characters other than `,` and `=`,
/// the last not a space (leading spaces are part of the value).
pub(crate) fn valid_value(value: &[u8]) -> bool {
    (1..=256).contains(&value.len()) && all_of(VALUE_CHAR, value) && value.last() != Some(&b' ')
}

/// The optional white space around list-members: spaces and horizontal tabs.
fn trim_ows(member: &str) -> &str {
    let bytes = member.as_bytes();
    let is_ows = |byte: &u8| *byte == b' ' || *byte == b'\t';
    let start = bytes.iter().position(|b| !is_ows(b)).unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !is_ows(b))
        .map_or(start, |at| at + 1);
    // Both ends are next to ASCII bytes (or the string's ends), so they are char boundaries.
    member.get(start..end).unwrap_or("")
}

/// The list-members of a field, split at `,` (not trimmed); a byte scan, cheaper than
/// `str::split` on the short fields a `tracestate` has.
fn split_members(field: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(field);
    std::iter::from_fn(move || {
        let current = rest?;
        match current.bytes().position(|byte| byte == b',') {
            Some(at) => {
                rest = current.get(at + 1..);
                current.get(..at)
            }
            None => {
                rest = None;
                Some(current)
            }
        }
    })
}

/// `key=value` split at the first `=` (a byte scan, like [`split_members`]).
fn split_pair(member: &str) -> Option<(&str, &str)> {
    let at = member.bytes().position(|byte| byte == b'=')?;
    Some((member.get(..at)?, member.get(at + 1..)?))
}

/// Members kept without allocating; a longer list spills into a `Vec`.
const INLINE: usize = 4;

/// The list-members of a parsed `tracestate`, in order, borrowed from the fields; no key twice.
/// Small and cheap to move: up to four members live inline.
#[derive(Debug, Clone)]
pub(crate) struct Members<'a> {
    inline: [(&'a str, &'a str); INLINE],
    len: usize,
    /// Every member, once there are more than [`INLINE`].
    spilled: Vec<(&'a str, &'a str)>,
}

impl<'a> Members<'a> {
    fn new() -> Self {
        Self {
            inline: [("", ""); INLINE],
            len: 0,
            spilled: Vec::new(),
        }
    }

    /// Parses the fields of a `tracestate` as one list, in order.
    ///
    /// All-or-nothing, as the processing model allows ("If the tracestate header cannot be
    /// parsed the vendor MAY discard the entire header"): a malformed member or a 33rd member
    /// discards the list. A duplicated key keeps its left-most member and the rest of the list.
    pub(crate) fn parse(fields: &[&'a str]) -> Result<Self, TracestateError> {
        let combined = fields
            .iter()
            .map(|field| field.len())
            .fold(fields.len().saturating_sub(1), usize::saturating_add);
        if combined > MAX_TRACESTATE_LEN {
            return Err(TracestateError::Oversized(combined));
        }
        let mut members = Self::new();
        let mut received = 0;
        let mut index = 0;
        for field in fields {
            for member in split_members(field) {
                let at = index;
                index += 1;
                let member = trim_ows(member);
                if member.is_empty() {
                    continue;
                }
                if received == MAX_TRACESTATE_MEMBERS {
                    return Err(TracestateError::TooManyMembers);
                }
                received += 1;
                let (key, value) = split_pair(member).ok_or(TracestateError::Member(at))?;
                if !valid_key(key.as_bytes()) || !valid_value(value.as_bytes()) {
                    return Err(TracestateError::Member(at));
                }
                if !members.iter().any(|(seen, _)| seen == key) {
                    members.push(key, value);
                }
            }
        }
        Ok(members)
    }

    /// The members of an SDK `TraceState` (it holds at most 32).
    pub(crate) fn of(state: &'a TraceState) -> Self {
        let mut members = Self::new();
        for (key, value) in state.into_iter().take(MAX_TRACESTATE_MEMBERS) {
            members.push(key, value);
        }
        members
    }

    fn as_slice(&self) -> &[(&'a str, &'a str)] {
        if self.len > INLINE {
            &self.spilled
        } else {
            &self.inline[..self.len]
        }
    }

    fn push(&mut self, key: &'a str, value: &'a str) {
        if self.len < INLINE {
            self.inline[self.len] = (key, value);
        } else {
            if self.len == INLINE {
                self.spilled.extend_from_slice(&self.inline);
            }
            self.spilled.push((key, value));
        }
        self.len += 1;
    }

    fn remove(&mut self, at: usize) {
        if at >= self.len {
            return;
        }
        if self.len > INLINE {
            self.spilled.remove(at);
            if self.spilled.len() == INLINE {
                self.inline.copy_from_slice(&self.spilled);
                self.spilled.clear();
            }
        } else {
            self.inline.copy_within(at + 1..self.len, at);
        }
        self.len -= 1;
    }

    /// The members, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&'a str, &'a str)> + '_ {
        self.as_slice().iter().copied()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The length of `key=value,key=value...`.
    pub(crate) fn header_len(&self) -> usize {
        self.iter()
            .map(|(key, value)| key.len() + 1 + value.len())
            .sum::<usize>()
            + self.len.saturating_sub(1)
    }

    /// Removes whole entries until the header fits `limit` (spec section "tracestate Limits"):
    /// entries longer than 128 characters first, right-most first, then entries from the end.
    pub(crate) fn truncate_to(&mut self, limit: usize) {
        let entry_len = |(key, value): (&str, &str)| key.len() + 1 + value.len();
        let mut at = self.len;
        while self.header_len() > limit && at > 0 {
            at -= 1;
            if entry_len(self.as_slice()[at]) > LONG_ENTRY_LEN {
                self.remove(at);
            }
        }
        while self.header_len() > limit && self.len > 0 {
            self.remove(self.len - 1);
        }
    }

    /// Fits the list into what this crate propagates.
    pub(crate) fn truncate_for_propagation(&mut self) {
        if self.header_len() > MAX_HEADER_LEN {
            self.truncate_to(MAX_HEADER_LEN);
        }
    }

    /// Writes `key=value,key=value...` in one allocation.
    pub(crate) fn header(&self) -> String {
        let mut out = String::with_capacity(self.header_len());
        for (index, (key, value)) in self.iter().enumerate() {
            if index > 0 {
                out.push(',');
            }
            out.push_str(key);
            out.push('=');
            out.push_str(value);
        }
        out
    }
}

/// The `tracestate` header of an SDK `TraceState`: empty for none, truncated by the spec's rule
/// when it would be longer than the carrier limit (an application can build one that long;
/// the injectors would otherwise drop it whole).
pub(crate) fn header_of(state: &TraceState) -> String {
    if *state == TraceState::NONE {
        return String::new();
    }
    let mut members = Members::of(state);
    members.truncate_for_propagation();
    members.header()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(fields: &[&str]) -> Result<String, TracestateError> {
        Members::parse(fields).map(|members| members.header())
    }

    /// Spec section "Key": the current grammar, `( lcalpha / DIGIT ) 0*255 ( keychar )`.
    #[test]
    fn keys_follow_the_current_grammar() {
        for key in [
            "rojo",
            "a1_-*/",
            "tenant@system",
            "1tenant@sys",
            "1simple",
            "foo@",
            "foo@@bar",
            "foo@bar@baz",
            "t@vvvvvvvvvvvvvvv",
        ] {
            assert!(valid_key(key.as_bytes()), "{key}");
        }
        for key in ["", "@b", "_a", "Upper", "foo.bar", "foo ", "é"] {
            assert!(!valid_key(key.as_bytes()), "{key:?}");
        }
        assert!(valid_key(&[b'z'; 256]));
        assert!(!valid_key(&[b'z'; 257]));
        let both = format!("{}@{}", "t".repeat(241), "v".repeat(14));
        assert!(valid_key(both.as_bytes()));
    }

    /// Spec section "Value".
    #[test]
    fn values_follow_the_grammar() {
        assert!(valid_value(b"00f067aa0ba902b7"));
        assert!(valid_value(b"a b"));
        assert!(valid_value(b" leading"));
        assert!(!valid_value(b"trailing "));
        assert!(!valid_value(b""));
        assert!(!valid_value(b"a=b"));
        assert!(!valid_value(b"a\tb"));
        assert!(!valid_value("é".as_bytes()));
        assert!(valid_value(&[b'v'; 256]));
        assert!(!valid_value(&[b'v'; 257]));
    }

    /// Spec section "tracestate Header Field Values": several fields are one list, in order;
    /// empty fields and members are allowed.
    #[test]
    fn fields_combine_in_order() {
        assert_eq!(
            parse(&["foo=1,bar=2", "rojo=1,congo=2", "baz=3"]).unwrap(),
            "foo=1,bar=2,rojo=1,congo=2,baz=3"
        );
        assert_eq!(parse(&["", "foo=1"]).unwrap(), "foo=1");
        assert_eq!(parse(&["foo=1", ""]).unwrap(), "foo=1");
        assert_eq!(parse(&[" \t ", ",,", "a=1 \t, \tb=2"]).unwrap(), "a=1,b=2");
        assert_eq!(parse(&[""]).unwrap(), "");
    }

    /// Spec section "tracestate Header Field Values": at most 32 members, all fields together;
    /// a longer list is discarded.
    #[test]
    fn thirty_two_members_across_fields_at_most() {
        let members: Vec<String> = (1..=33).map(|i| format!("bar{i:02}={i:02}")).collect();
        let fields = |n: usize| -> Vec<String> {
            members[..n]
                .chunks(10)
                .map(|chunk| chunk.join(","))
                .collect()
        };
        let ok = fields(32);
        let ok: Vec<&str> = ok.iter().map(String::as_str).collect();
        assert_eq!(Members::parse(&ok).unwrap().iter().count(), 32);
        let over = fields(33);
        let over: Vec<&str> = over.iter().map(String::as_str).collect();
        assert_eq!(
            Members::parse(&over).unwrap_err(),
            TracestateError::TooManyMembers
        );
    }

    /// Spec section "Mutating the tracestate Field": duplicate keys may be discarded, the state
    /// is kept; the left-most member (the most recent position) stays.
    #[test]
    fn a_duplicated_key_keeps_the_first_member() {
        assert_eq!(parse(&["foo=1,foo=2"]).unwrap(), "foo=1");
        assert_eq!(parse(&["foo=1", "foo=2", "bar=3"]).unwrap(), "foo=1,bar=3");
        assert_eq!(parse(&["foo=1,foo=1"]).unwrap(), "foo=1");
    }

    /// Processing model, "A traceparent is Received", step 3: a list that cannot be parsed is
    /// discarded whole, whichever field holds the bad member.
    #[test]
    fn one_bad_member_discards_the_combined_list() {
        let long_key = format!("{}=1", "z".repeat(257));
        for fields in [
            &["foo=1", &long_key][..],
            &["@foo=1,bar=2"][..],
            &["foo=,bar=3"][..],
            &["foo=bar=baz"][..],
            &["a=1", "b"][..],
        ] {
            assert!(
                matches!(Members::parse(fields), Err(TracestateError::Member(_))),
                "{fields:?}"
            );
        }
        assert_eq!(
            Members::parse(&["a=1", "b=2,c"]).unwrap_err(),
            TracestateError::Member(2)
        );
    }

    /// Combined length over `MAX_TRACESTATE_LEN`: discarded before any member is looked at.
    #[test]
    fn an_oversized_combination_is_discarded() {
        let half = ",".repeat(MAX_TRACESTATE_LEN / 2);
        assert_eq!(
            Members::parse(&[&half, &half, "a=1"]).unwrap_err(),
            TracestateError::Oversized(2 * half.len() + 3 + 2)
        );
    }

    /// Spec section "tracestate Limits": whole entries, longer than 128 characters first (from
    /// the right), then from the end.
    #[test]
    fn truncation_removes_long_entries_first_then_from_the_end() {
        let long = |name: &str| format!("{name}={}", "v".repeat(200));
        let fields = [
            "a=1".to_owned(),
            long("l1"),
            "b=2".to_owned(),
            long("l2"),
            "c=3".to_owned(),
        ];
        let fields: Vec<&str> = fields.iter().map(String::as_str).collect();
        let mut members = Members::parse(&fields).unwrap();
        let full = members.header_len();
        members.truncate_to(full - 1);
        assert_eq!(
            members.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            ["a", "l1", "b", "c"]
        );
        members.truncate_to(20);
        assert_eq!(members.header(), "a=1,b=2,c=3");
        members.truncate_to(7);
        assert_eq!(members.header(), "a=1,b=2");
        members.truncate_to(0);
        assert!(members.is_empty());
    }
}
