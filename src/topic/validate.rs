//! Validation of topic names and topic filters, and the `$share/` prefix.

use super::scan::find_special;

/// The longest topic name or topic filter, in bytes of UTF-8: 65,535 ([MQTT-4.7.3-3]).
pub const MAX_TOPIC_LEN: usize = 65_535;

/// The prefix that marks an MQTT 5 shared subscription filter (section 4.8.2).
pub const SHARED_SUBSCRIPTION_PREFIX: &str = "$share/";

/// Why a topic name or topic filter is invalid.
///
/// Each variant names the rule it enforces. Rule numbers are given for MQTT 5.0 and, where the
/// numbering differs, for MQTT 3.1.1. Byte positions (`position`) are offsets into the string
/// that was validated, so they point into the whole `$share/{name}/{filter}` string for a shared
/// subscription.
///
/// When a string breaks several rules, the error names the first one found: emptiness, then
/// length, then (for shared subscriptions) the share name, then the first offending byte from the
/// left.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    /// The topic name or filter is the empty string.
    ///
    /// [MQTT-4.7.3-1] (MQTT 3.1.1 and 5.0): "All Topic Names and Topic Filters MUST be at least
    /// one character long".
    #[error("topic names and topic filters must be at least one character long [MQTT-4.7.3-1]")]
    Empty,

    /// The UTF-8 encoding of the topic name or filter is longer than 65,535 bytes.
    ///
    /// [MQTT-4.7.3-3] (MQTT 3.1.1 and 5.0): topic names and filters "MUST NOT encode to more than
    /// 65,535 bytes".
    #[error("topic is {len} bytes long; at most 65,535 bytes are allowed [MQTT-4.7.3-3]")]
    TooLong {
        /// Length of the rejected string in bytes.
        len: usize,
    },

    /// The topic name or filter contains the null character U+0000.
    ///
    /// [MQTT-4.7.3-2] (MQTT 3.1.1 and 5.0): topic names and filters "MUST NOT include the null
    /// character (Unicode U+0000)".
    #[error("U+0000 at byte {position}; the null character is not allowed [MQTT-4.7.3-2]")]
    NullCharacter {
        /// Byte offset of the null character.
        position: usize,
    },

    /// A topic name contains `+` or `#`.
    ///
    /// [MQTT-3.3.2-2] (MQTT 3.1.1 and 5.0): "The Topic Name in the PUBLISH packet MUST NOT contain
    /// wildcard characters"; also MQTT 5.0 [MQTT-4.7.0-1] / MQTT 3.1.1 [MQTT-4.7.1-1].
    #[error(
        "wildcard character at byte {position}; topic names must not contain `+` or `#` [MQTT-3.3.2-2]"
    )]
    WildcardInTopicName {
        /// Byte offset of the `+` or `#`.
        position: usize,
    },

    /// A `#` in a topic filter that is not a whole level, or not the last level.
    ///
    /// MQTT 5.0 [MQTT-4.7.1-1] / MQTT 3.1.1 [MQTT-4.7.1-2]: "The multi-level wildcard character
    /// MUST be specified either on its own or following a topic level separator. In either case it
    /// MUST be the last character specified in the Topic Filter".
    #[error("`#` at byte {position} must be a whole level and the last one [MQTT-4.7.1-1]")]
    MisplacedMultiLevelWildcard {
        /// Byte offset of the `#`.
        position: usize,
    },

    /// A `+` in a topic filter that does not occupy a whole level.
    ///
    /// MQTT 5.0 [MQTT-4.7.1-2] / MQTT 3.1.1 [MQTT-4.7.1-3]: "Where it is used, it MUST occupy an
    /// entire level of the filter".
    #[error("`+` at byte {position} must occupy a whole level [MQTT-4.7.1-2]")]
    MisplacedSingleLevelWildcard {
        /// Byte offset of the `+`.
        position: usize,
    },

    /// A `$share/` filter whose share name is empty (`$share//a`, `$share/`).
    ///
    /// MQTT 5.0 [MQTT-4.8.2-1]: a shared subscription's topic filter "MUST start with $share/ and
    /// MUST contain a ShareName that is at least one character long".
    #[error("shared subscription has an empty share name [MQTT-4.8.2-1]")]
    EmptyShareName,

    /// A `$share/` filter whose share name contains `+` or `#`.
    ///
    /// MQTT 5.0 [MQTT-4.8.2-2]: "The ShareName MUST NOT contain the characters "/", "+" or "#"".
    /// (A `/` always ends the share name, so only `+` and `#` can be reported here.)
    #[error("share name contains a wildcard at byte {position} [MQTT-4.8.2-2]")]
    InvalidShareName {
        /// Byte offset of the `+` or `#` in the whole filter.
        position: usize,
    },

    /// A `$share/{name}` filter with no `/` after the share name, or nothing after that `/`.
    ///
    /// MQTT 5.0 [MQTT-4.8.2-2]: the share name "MUST be followed by a "/" character. This "/"
    /// character MUST be followed by a Topic Filter".
    #[error("shared subscription has no topic filter after the share name [MQTT-4.8.2-2]")]
    MissingSharedFilter,
}

/// Checks that `topic` is a valid topic name, the topic of a PUBLISH packet.
///
/// A topic name is valid when it is at least one byte long ([MQTT-4.7.3-1]), at most 65,535 bytes
/// long ([MQTT-4.7.3-3]), contains no U+0000 ([MQTT-4.7.3-2]) and no wildcard `+` or `#`
/// ([MQTT-3.3.2-2]). Empty levels (`a//b`, `/`) and a leading `$` are allowed. A topic name that
/// begins with `$share/` is not treated specially.
///
/// # Errors
///
/// The [`TopicError`] for the first rule broken.
///
/// # Examples
///
/// ```
/// use rumqttc_opentelemetry::topic::{validate_topic_name, TopicError};
///
/// assert_eq!(validate_topic_name("home/kitchen/temperature"), Ok(()));
/// assert_eq!(validate_topic_name("/"), Ok(()));
/// assert_eq!(validate_topic_name("$SYS/broker/uptime"), Ok(()));
/// assert_eq!(validate_topic_name(""), Err(TopicError::Empty));
/// assert_eq!(
///     validate_topic_name("home/+/temperature"),
///     Err(TopicError::WildcardInTopicName { position: 5 })
/// );
/// ```
pub fn validate_topic_name(topic: &str) -> Result<(), TopicError> {
    check_length(topic)?;
    topic_name_characters(topic)
}

/// The character rules of a topic name alone: no wildcard ([MQTT-3.3.2-2]) and no U+0000
/// ([MQTT-4.7.3-2]), in one scan eight bytes at a time. The publish path checks only these:
/// MQTT 5 allows an empty name with a Topic Alias, and rumqttc itself refuses wildcards only.
#[inline]
pub(crate) fn topic_name_characters(topic: &str) -> Result<(), TopicError> {
    match find_special(topic.as_bytes()) {
        None => Ok(()),
        Some(position) if topic.as_bytes()[position] == 0 => {
            Err(TopicError::NullCharacter { position })
        }
        Some(position) => Err(TopicError::WildcardInTopicName { position }),
    }
}

/// Checks that `filter` is a valid topic filter, as sent in SUBSCRIBE and UNSUBSCRIBE.
///
/// A topic filter is valid when it is at least one byte long ([MQTT-4.7.3-1]), at most 65,535
/// bytes long ([MQTT-4.7.3-3]) and contains no U+0000 ([MQTT-4.7.3-2]); `#` must be a whole level
/// and the last one ([MQTT-4.7.1-1]); `+` must be a whole level ([MQTT-4.7.1-2]).
///
/// A filter that starts with `$share/` is an MQTT 5 shared subscription, `$share/{name}/{filter}`:
/// the share name must be non-empty ([MQTT-4.8.2-1]), contain no `+` or `#` (a `/` ends it), and
/// be followed by `/` and a non-empty topic filter that is itself valid ([MQTT-4.8.2-2]). This
/// function accepts shared subscriptions whatever the protocol version; an MQTT 3.1.1 broker
/// treats `$share/...` as an ordinary filter, which is valid as well.
///
/// # Errors
///
/// The [`TopicError`] for the first rule broken.
///
/// # Examples
///
/// ```
/// use rumqttc_opentelemetry::topic::{validate_topic_filter, TopicError};
///
/// assert_eq!(validate_topic_filter("home/+/temperature"), Ok(()));
/// assert_eq!(validate_topic_filter("sport/#"), Ok(()));
/// assert_eq!(validate_topic_filter("$share/workers/jobs/#"), Ok(()));
/// assert_eq!(
///     validate_topic_filter("sport/tennis#"),
///     Err(TopicError::MisplacedMultiLevelWildcard { position: 12 })
/// );
/// assert_eq!(
///     validate_topic_filter("sport+"),
///     Err(TopicError::MisplacedSingleLevelWildcard { position: 5 })
/// );
/// assert_eq!(validate_topic_filter("$share/workers"), Err(TopicError::MissingSharedFilter));
/// ```
pub fn validate_topic_filter(filter: &str) -> Result<(), TopicError> {
    check_length(filter)?;
    match filter.strip_prefix(SHARED_SUBSCRIPTION_PREFIX) {
        Some(rest) => {
            let prefix_len = SHARED_SUBSCRIPTION_PREFIX.len();
            let name_len = rest.bytes().position(|b| b == b'/').unwrap_or(rest.len());
            if name_len == 0 {
                return Err(TopicError::EmptyShareName);
            }
            for (i, &byte) in rest.as_bytes()[..name_len].iter().enumerate() {
                let position = prefix_len + i;
                match byte {
                    0 => return Err(TopicError::NullCharacter { position }),
                    b'+' | b'#' => return Err(TopicError::InvalidShareName { position }),
                    _ => {}
                }
            }
            let inner = rest.get(name_len + 1..).unwrap_or("");
            if inner.is_empty() {
                return Err(TopicError::MissingSharedFilter);
            }
            validate_filter_levels(inner, prefix_len + name_len + 1)
        }
        None => validate_filter_levels(filter, 0),
    }
}

/// Splits an MQTT 5 shared subscription filter `$share/{group}/{filter}` into `(group, filter)`.
///
/// Returns `None` when `filter` does not start with `$share/`, or when the share part is
/// malformed: an empty share name, a share name containing `+`, `#` or U+0000, or nothing after
/// the share name and its `/` ([MQTT-4.8.2-1], [MQTT-4.8.2-2]). The inner filter is returned as is
/// and not validated; use [`validate_topic_filter`] on the whole string for that.
///
/// The group is what OpenTelemetry calls `messaging.consumer.group.name`.
///
/// # Examples
///
/// ```
/// use rumqttc_opentelemetry::topic::parse_shared;
///
/// assert_eq!(parse_shared("$share/workers/jobs/#"), Some(("workers", "jobs/#")));
/// assert_eq!(parse_shared("jobs/#"), None);
/// assert_eq!(parse_shared("$share//jobs"), None);
/// ```
#[must_use]
pub fn parse_shared(filter: &str) -> Option<(&str, &str)> {
    let rest = filter.strip_prefix(SHARED_SUBSCRIPTION_PREFIX)?;
    let (group, inner) = rest.split_once('/')?;
    if group.is_empty() || inner.is_empty() || group.bytes().any(|b| matches!(b, 0 | b'+' | b'#')) {
        return None;
    }
    Some((group, inner))
}

/// The filter that topics are matched against: `{filter}` for `$share/{group}/{filter}`, and
/// `filter` itself otherwise (including a malformed `$share/` filter, which is returned unchanged).
///
/// # Examples
///
/// ```
/// use rumqttc_opentelemetry::topic::matching_filter;
///
/// assert_eq!(matching_filter("$share/workers/jobs/#"), "jobs/#");
/// assert_eq!(matching_filter("jobs/#"), "jobs/#");
/// ```
#[must_use]
pub fn matching_filter(filter: &str) -> &str {
    parse_shared(filter).map_or(filter, |(_, inner)| inner)
}

fn check_length(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        Err(TopicError::Empty)
    } else if s.len() > MAX_TOPIC_LEN {
        Err(TopicError::TooLong { len: s.len() })
    } else {
        Ok(())
    }
}

/// Validates the wildcard placement and the absence of U+0000 in a (non-shared) filter body.
/// `offset` is added to reported positions.
fn validate_filter_levels(filter: &str, offset: usize) -> Result<(), TopicError> {
    let bytes = filter.as_bytes();
    let mut from = 0;
    while let Some(k) = bytes.get(from..).and_then(find_special) {
        let i = from + k;
        let position = offset + i;
        let starts_level = i == 0 || bytes[i - 1] == b'/';
        match bytes[i] {
            b'+' => {
                let ends_level = matches!(bytes.get(i + 1), None | Some(b'/'));
                if !(starts_level && ends_level) {
                    return Err(TopicError::MisplacedSingleLevelWildcard { position });
                }
            }
            b'#' => {
                if !(starts_level && i + 1 == bytes.len()) {
                    return Err(TopicError::MisplacedMultiLevelWildcard { position });
                }
            }
            _ => return Err(TopicError::NullCharacter { position }),
        }
        from = i + 1;
    }
    Ok(())
}
