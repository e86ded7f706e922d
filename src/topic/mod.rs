//! MQTT topic names and topic filters: validation, matching and a filter set.
//!
//! This module implements section 4.7 of MQTT 3.1.1 and MQTT 5.0 (the rules are the same in both)
//! and the shared subscriptions of MQTT 5.0 section 4.8.2:
//!
//! - A **topic name** (the topic of a PUBLISH) and a **topic filter** (what a SUBSCRIBE asks for)
//!   are UTF-8 strings of at least one character ([MQTT-4.7.3-1]), at most 65,535 bytes once
//!   encoded ([MQTT-4.7.3-3]), without U+0000 ([MQTT-4.7.3-2]). `/` separates levels; empty levels
//!   are valid (`a//b`, `/`, `a/`). Matching is case sensitive and compares bytes, with no
//!   normalization ([MQTT-4.7.3-4]).
//! - Topic names contain no wildcards ([MQTT-3.3.2-2]).
//! - `#` (multi-level wildcard) is only valid as the whole last level of a filter
//!   ([MQTT-4.7.1-1]). It matches its parent level and any number of child levels: `sport/#`
//!   matches `sport`, `sport/` and `sport/tennis/player1`. The filter `#` matches every topic (but
//!   see the `$` rule below).
//! - `+` (single-level wildcard) is only valid as a whole level ([MQTT-4.7.1-2]) and matches exactly
//!   one level, which may be empty: `sport/+` matches `sport/` but not `sport`; `+/+` and `/+`
//!   match `/finance`; `+` does not.
//! - A filter whose first character is a wildcard never matches a topic name that begins with `$`
//!   ([MQTT-4.7.2-1]): `#` and `+/monitor/Clients` do not match `$SYS/monitor/Clients`, while
//!   `$SYS/#` matches `$SYS` and `$SYS/monitor/Clients`, and `$SYS/monitor/+` matches
//!   `$SYS/monitor/Clients`.
//! - `$share/{name}/{filter}` (MQTT 5.0 shared subscription) is matched as `{filter}`. The share
//!   name is non-empty ([MQTT-4.8.2-1]) and contains no `/`, `+` or `#` ([MQTT-4.8.2-2]).
//!   [`parse_shared`] splits such a filter and [`matching_filter`] strips the prefix. Every filter
//!   that starts with `$share/` is read this way, whatever the protocol version.
//!
//! Rule numbers are those of MQTT 5.0. MQTT 3.1.1 numbers the wildcard rules differently:
//! [MQTT-4.7.1-1] (no wildcards in topic names), [MQTT-4.7.1-2] (`#`), [MQTT-4.7.1-3] (`+`).
//!
//! [`matches()`] takes its arguments in the order of `rumqttc::matches` (topic, then filter) but,
//! unlike rumqttc 0.25, applies the `$` rule of the specification (rumqttc never matches a topic
//! that begins with `$`, not even against `$SYS/#`), understands `$share/`, returns `false` for an
//! invalid topic name or filter instead of matching it anyway, and does not panic on a topic whose
//! first character is not ASCII. Neither [`matches()`] nor [`TopicFilterSet::matches`] allocate
//! (except, once, for a very deep topic; see [`TopicFilterSet::matches_with_filter`]).
//!
//! ```
//! use rumqttc_opentelemetry::topic::{matches, TopicFilterSet};
//!
//! assert!(matches("sport/tennis/player1", "sport/#"));
//! assert!(matches("$SYS/broker/uptime", "$SYS/#"));
//! assert!(!matches("$SYS/broker/uptime", "#"));
//!
//! let mut set = TopicFilterSet::new();
//! set.insert("sport/+/player1", "player1")?;
//! set.insert("sport/#", "all sport")?;
//! let mut hits: Vec<_> = set.matches("sport/tennis/player1").copied().collect();
//! hits.sort_unstable();
//! assert_eq!(hits, ["all sport", "player1"]);
//! # Ok::<(), rumqttc_opentelemetry::topic::TopicError>(())
//! ```

mod scan;
mod set;
mod validate;

pub use set::{Matches, MatchesWithFilter, TopicFilterSet};
pub(crate) use validate::topic_name_characters;
pub use validate::{
    MAX_TOPIC_LEN, SHARED_SUBSCRIPTION_PREFIX, TopicError, matching_filter, parse_shared,
    validate_topic_filter, validate_topic_name,
};

/// Whether the topic name `topic` matches the topic filter `filter`.
///
/// The argument order is that of `rumqttc::matches`. Follows MQTT 3.1.1 / 5.0 section 4.7 (see
/// the [module documentation](self)): `sport/#` matches `sport`, `+` matches one level (possibly
/// empty), filters starting with a wildcard do not match topics starting with `$`
/// ([MQTT-4.7.2-1]), and `$share/{name}/{filter}` is matched as `{filter}`.
///
/// Returns `false` when `topic` is not a valid topic name or `filter` is not a valid topic filter
/// (see [`validate_topic_name`] and [`validate_topic_filter`]); a `true` result therefore implies
/// that both are valid. Validation and matching happen in one pass over both strings; nothing is
/// allocated.
///
/// # Examples
///
/// ```
/// use rumqttc_opentelemetry::topic::matches;
///
/// assert!(matches("sport/tennis/player1", "sport/tennis/+"));
/// assert!(matches("sport", "sport/#"));
/// assert!(matches("sport/", "sport/+"));
/// assert!(!matches("sport", "sport/+"));
/// assert!(matches("/finance", "+/+"));
/// assert!(!matches("/finance", "+"));
/// assert!(matches("$SYS/broker/uptime", "$SYS/#"));
/// assert!(!matches("$SYS/broker/uptime", "+/broker/uptime"));
/// assert!(matches("jobs/42", "$share/workers/jobs/+"));
/// // invalid filter or topic: never a match
/// assert!(!matches("sport/tennis", "sport/tennis#"));
/// assert!(!matches("sport/+", "sport/+"));
/// ```
#[must_use]
pub fn matches(topic: &str, filter: &str) -> bool {
    if topic.is_empty()
        || topic.len() > MAX_TOPIC_LEN
        || filter.is_empty()
        || filter.len() > MAX_TOPIC_LEN
    {
        return false;
    }
    let filter = if filter.starts_with(SHARED_SUBSCRIPTION_PREFIX) {
        match parse_shared(filter) {
            Some((_, inner)) => inner,
            None => return false,
        }
    } else {
        filter
    };
    match_bytes(topic.as_bytes(), filter.as_bytes())
}

/// Matches and validates in one pass. Both slices are non-empty and within the length limit; the
/// filter has no `$share/` prefix left.
///
/// Invariant at the top of the loop: `ti` and `fi` are at the start of a level in the topic and in
/// the filter, and the topic does have a level there (possibly empty). Literal levels are consumed
/// by a word-at-a-time common-prefix scan that may span several levels; the slow path only runs at
/// wildcards and at the first difference.
fn match_bytes(topic: &[u8], filter: &[u8]) -> bool {
    // [MQTT-4.7.2-1]: a filter starting with a wildcard never matches a topic starting with `$`.
    if topic.first() == Some(&b'$') && matches!(filter.first(), Some(b'+' | b'#')) {
        return false;
    }
    let (mut ti, mut fi) = (0_usize, 0_usize);
    loop {
        let (Some(t), Some(f)) = (topic.get(ti..), filter.get(fi..)) else {
            return false;
        };
        match f.first() {
            // `#` must be the whole last level; it matches the rest of the topic (zero or more
            // levels), which must still be a valid topic name.
            Some(b'#') => return f.len() == 1 && scan::find_special(t).is_none(),
            // `+` must be a whole level; it matches one topic level, possibly empty.
            Some(b'+') => {
                if !matches!(f.get(1), None | Some(b'/')) {
                    return false;
                }
                fi += 1;
                ti += match scan::find_special_or_slash(t) {
                    None => t.len(),
                    Some(k) if t[k] == b'/' => k,
                    Some(_) => return false,
                };
                // Both are at the end of a level.
                match (filter.get(fi), topic.get(ti)) {
                    (None, None) => return true,
                    (Some(_), Some(_)) => {
                        // both at a `/`
                        fi += 1;
                        ti += 1;
                    }
                    // The topic has no level left: only a trailing `/#` (parent level,
                    // 4.7.1.2) still matches.
                    (Some(_), None) => return filter.get(fi..) == Some(b"/#".as_slice()),
                    (None, Some(_)) => return false,
                }
            }
            // A literal level: skip the common prefix (no wildcard or U+0000 allowed in it).
            _ => {
                let Some(p) = scan::common_prefix_without_special(t, f) else {
                    return false;
                };
                ti += p;
                fi += p;
                match (filter.get(fi), topic.get(ti)) {
                    (None, None) => return true,
                    // Parent level rule (4.7.1.2), as above.
                    (Some(b'/'), None) => return filter.get(fi..) == Some(b"/#".as_slice()),
                    (None, Some(_)) => return false,
                    // The first difference is fine only at the start of a filter level that
                    // follows a common `/`: the loop then handles a wildcard there, or fails.
                    _ => {
                        if p == 0 || filter.get(fi - 1) != Some(&b'/') {
                            return false;
                        }
                    }
                }
            }
        }
    }
}

/// The most specific of several matching filters (`filter` gives an item's filter): fewest
/// wildcards, then longest, then alphabetical, so the choice never depends on the order filters
/// were added in.
pub(crate) fn most_specific<'a, T: ?Sized + 'a>(
    items: impl Iterator<Item = &'a T>,
    filter: impl Fn(&T) -> &str,
) -> Option<&'a T> {
    items.min_by(|a, b| {
        let (a, b) = (matching_filter(filter(a)), matching_filter(filter(b)));
        let wildcards = |f: &str| f.bytes().filter(|&c| c == b'+' || c == b'#').count();
        wildcards(a)
            .cmp(&wildcards(b))
            .then(b.len().cmp(&a.len()))
            .then(a.cmp(b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [MQTT-3.3.2-2] and [MQTT-4.7.3-2]: a wildcard or U+0000 anywhere is refused at its byte
    /// position, on both sides of the eight-byte scan's word boundaries; `/`, `$`, spaces
    /// and multi-byte UTF-8 are fine, and so is the empty name (MQTT 5 Topic Alias).
    #[test]
    fn the_characters_of_topic_names() {
        for ok in [
            "",
            "/",
            "a",
            "$SYS/x",
            "home/kitchen temp",
            "capteurs/été/°C",
        ] {
            assert_eq!(topic_name_characters(ok), Ok(()), "{ok:?}");
        }
        let base = "abcdefghijklmnopqrstuvw";
        for bad in [b'+', b'#', 0] {
            for position in 0..base.len() {
                let mut topic = base.as_bytes().to_vec();
                topic[position] = bad;
                let topic = String::from_utf8(topic).expect("ASCII");
                let expected = match bad {
                    0 => TopicError::NullCharacter { position },
                    _ => TopicError::WildcardInTopicName { position },
                };
                assert_eq!(topic_name_characters(&topic), Err(expected), "{topic:?}");
            }
        }
    }

    #[test]
    fn spec_examples() {
        assert!(matches("sport/tennis/player1", "sport/tennis/player1/#"));
        assert!(matches(
            "sport/tennis/player1/ranking",
            "sport/tennis/player1/#"
        ));
        assert!(matches(
            "sport/tennis/player1/score/wimbledon",
            "sport/tennis/player1/#"
        ));
        assert!(matches("sport", "sport/#"));
        assert!(matches("sport/tennis/player1", "sport/tennis/+"));
        assert!(!matches("sport/tennis/player1/ranking", "sport/tennis/+"));
        assert!(matches("sport/", "sport/+"));
        assert!(!matches("sport", "sport/+"));
        assert!(matches("/finance", "+/+"));
        assert!(matches("/finance", "/+"));
        assert!(!matches("/finance", "+"));
    }

    #[test]
    fn dollar_topics() {
        assert!(!matches("$SYS/x", "#"));
        assert!(!matches("$SYS/x", "+/x"));
        assert!(!matches("$SYS", "+"));
        assert!(matches("$SYS/x", "$SYS/#"));
        assert!(matches("$SYS", "$SYS/#"));
        assert!(matches("$SYS/x", "$SYS/+"));
        assert!(!matches("$SYS/x", "$share/g/#"));
        assert!(matches("a/$x", "a/+"));
        assert!(matches("a/$x", "#"));
    }

    #[test]
    fn invalid_inputs_never_match() {
        assert!(!matches("", "#"));
        assert!(!matches("", "+"));
        assert!(!matches("", ""));
        assert!(!matches("a", ""));
        assert!(!matches("a+", "a+"));
        assert!(!matches("a/#", "a/#"));
        assert!(!matches("a", "#/a"));
        assert!(!matches("a/b", "a/#/b"));
        assert!(!matches("ab", "a#"));
        assert!(!matches("a", "a\0"));
        assert!(!matches("a\0", "a\0"));
        assert!(!matches("a/b\0", "a/#"));
        assert!(!matches("a/b\0", "a/+"));
        assert!(!matches("a/+", "a/+"));
        assert!(!matches("x", "+x"));
        assert!(!matches("x", "x+"));
        assert!(!matches("a/x", "a/+x"));
        assert!(!matches("a", "$share//a"));
        assert!(!matches("a", "$share/g"));
        assert!(!matches("a", "$share/g/"));
        assert!(!matches("a", "$share/g+/a"));
        let long = "a".repeat(MAX_TOPIC_LEN + 1);
        assert!(!matches(&long, "#"));
        assert!(!matches("a", &long));
        let max = "a".repeat(MAX_TOPIC_LEN);
        assert!(matches(&max, "#"));
        assert!(matches(&max, &max));
    }

    #[test]
    fn empty_levels_and_prefixes() {
        assert!(matches("/", "/"));
        assert!(matches("/", "+/+"));
        assert!(matches("/", "/#"));
        assert!(matches("/", "#"));
        assert!(!matches("/", "+"));
        assert!(matches("a//b", "a/+/b"));
        assert!(matches("a//b", "a//b"));
        assert!(!matches("a/b", "a//b"));
        assert!(!matches("ab", "a"));
        assert!(!matches("a", "ab"));
        assert!(!matches("a/b", "a"));
        assert!(!matches("a", "a/b"));
        assert!(matches("a/", "a/#"));
        assert!(matches("a/", "a/"));
        assert!(!matches("a", "a/"));
        assert!(!matches("a", "a//#"));
        assert!(matches("a/", "a//#"));
        assert!(!matches("Sport", "sport"));
    }

    #[test]
    fn shared() {
        assert!(matches("a/b", "$share/g/a/b"));
        assert!(matches("a/b", "$share/g/#"));
        assert!(matches("a/b", "$share/g/+/b"));
        assert!(!matches("$share/g/a/b", "$share/g/a/b"));
        assert!(matches("$share/g/a", "$share/x/$share/g/a"));
        assert!(matches("$share", "$share"));
        // `$share/` always starts a shared subscription; `#` is not a valid share name.
        assert!(!matches("$share/g", "$share/#"));
    }
}
