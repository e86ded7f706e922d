//! The examples and rules of MQTT 3.1.1 / 5.0 section 4.7 (and 4.8.2 for shared subscriptions),
//! checked against `rumqttc_opentelemetry::topic`.
//!
//! Rule numbers: MQTT 5.0 numbering first; where MQTT 3.1.1 numbers the same rule differently it
//! is given after a slash ("[MQTT-4.7.1-1] / 3.1.1 [MQTT-4.7.1-2]").

use rumqttc_opentelemetry::topic::{
    MAX_TOPIC_LEN, TopicError, TopicFilterSet, matches, matching_filter, parse_shared,
    validate_topic_filter, validate_topic_name,
};

fn assert_match(topic: &str, filter: &str, rule: &str) {
    assert!(
        matches(topic, filter),
        "{rule}: filter {filter:?} must match topic {topic:?}"
    );
}

fn assert_no_match(topic: &str, filter: &str, rule: &str) {
    assert!(
        !matches(topic, filter),
        "{rule}: filter {filter:?} must not match topic {topic:?}"
    );
}

fn assert_valid_filter(filter: &str, rule: &str) {
    assert_eq!(
        validate_topic_filter(filter),
        Ok(()),
        "{rule}: {filter:?} is a valid topic filter"
    );
}

// ---------------------------------------------------------------------------------------------
// 4.7.1.2 Multi-level wildcard
// ---------------------------------------------------------------------------------------------

/// 4.7.1.2: "sport/tennis/player1/#" receives messages published to "sport/tennis/player1",
/// "sport/tennis/player1/ranking" and "sport/tennis/player1/score/wimbledon".
#[test]
fn multi_level_wildcard_matches_parent_and_children_4_7_1_2() {
    let rule = "4.7.1.2";
    for topic in [
        "sport/tennis/player1",
        "sport/tennis/player1/ranking",
        "sport/tennis/player1/score/wimbledon",
    ] {
        assert_match(topic, "sport/tennis/player1/#", rule);
    }
    assert_no_match("sport/tennis/player2", "sport/tennis/player1/#", rule);
    assert_no_match("sport/tennis", "sport/tennis/player1/#", rule);
}

/// 4.7.1.2: "sport/#" also matches the singular "sport", since # includes the parent level.
#[test]
fn multi_level_wildcard_includes_parent_level_4_7_1_2() {
    assert_match("sport", "sport/#", "4.7.1.2 parent level");
    assert_match("sport/", "sport/#", "4.7.1.2 empty child level");
    assert_no_match("sports", "sport/#", "4.7.1.2 levels are whole");
}

/// 4.7.1.2: "#" is valid and receives every message.
#[test]
fn lone_multi_level_wildcard_matches_everything_4_7_1_2() {
    assert_valid_filter("#", "4.7.1.2");
    for topic in ["a", "/", "a/b/c", "sport/tennis/player1", "//"] {
        assert_match(topic, "#", "4.7.1.2");
    }
}

/// 4.7.1.2 / [MQTT-4.7.1-1] (3.1.1 [MQTT-4.7.1-2]): "sport/tennis/#" is valid, "sport/tennis#"
/// and "sport/tennis/#/ranking" are not.
#[test]
fn multi_level_wildcard_placement_mqtt_4_7_1_1() {
    let rule = "[MQTT-4.7.1-1]";
    assert_valid_filter("sport/tennis/#", rule);
    assert_eq!(
        validate_topic_filter("sport/tennis#"),
        Err(TopicError::MisplacedMultiLevelWildcard { position: 12 }),
        "{rule}: `#` must follow a `/`"
    );
    assert_eq!(
        validate_topic_filter("sport/tennis/#/ranking"),
        Err(TopicError::MisplacedMultiLevelWildcard { position: 13 }),
        "{rule}: `#` must be last"
    );
    assert_eq!(
        validate_topic_filter("#a"),
        Err(TopicError::MisplacedMultiLevelWildcard { position: 0 }),
        "{rule}: `#` must be a whole level"
    );
    assert_eq!(
        validate_topic_filter("#/#"),
        Err(TopicError::MisplacedMultiLevelWildcard { position: 0 }),
        "{rule}: `#` must be last"
    );
    assert_no_match("sport/tennis", "sport/tennis#", rule);
    assert_no_match("sport/tennis/x/ranking", "sport/tennis/#/ranking", rule);
}

// ---------------------------------------------------------------------------------------------
// 4.7.1.3 Single-level wildcard
// ---------------------------------------------------------------------------------------------

/// 4.7.1.3: "sport/tennis/+" matches "sport/tennis/player1" and "sport/tennis/player2", but not
/// "sport/tennis/player1/ranking".
#[test]
fn single_level_wildcard_matches_one_level_4_7_1_3() {
    let rule = "4.7.1.3";
    assert_match("sport/tennis/player1", "sport/tennis/+", rule);
    assert_match("sport/tennis/player2", "sport/tennis/+", rule);
    assert_no_match("sport/tennis/player1/ranking", "sport/tennis/+", rule);
}

/// 4.7.1.3: "sport/+" does not match "sport" but does match "sport/".
#[test]
fn single_level_wildcard_needs_a_level_4_7_1_3() {
    assert_no_match("sport", "sport/+", "4.7.1.3");
    assert_match("sport/", "sport/+", "4.7.1.3 empty level");
}

/// 4.7.1.3 / [MQTT-4.7.1-2] (3.1.1 [MQTT-4.7.1-3]): "+", "+/tennis/#" and "sport/+/player1" are
/// valid; "sport+" is not.
#[test]
fn single_level_wildcard_placement_mqtt_4_7_1_2() {
    let rule = "[MQTT-4.7.1-2]";
    assert_valid_filter("+", rule);
    assert_valid_filter("+/tennis/#", rule);
    assert_valid_filter("sport/+/player1", rule);
    assert_valid_filter("+/+", rule);
    assert_valid_filter("/+", rule);
    assert_eq!(
        validate_topic_filter("sport+"),
        Err(TopicError::MisplacedSingleLevelWildcard { position: 5 }),
        "{rule}"
    );
    assert_eq!(
        validate_topic_filter("sport/+tennis"),
        Err(TopicError::MisplacedSingleLevelWildcard { position: 6 }),
        "{rule}"
    );
    assert_eq!(
        validate_topic_filter("++"),
        Err(TopicError::MisplacedSingleLevelWildcard { position: 0 }),
        "{rule}"
    );
    assert_match("sport/x/player1", "sport/+/player1", rule);
    assert_match("sport/tennis/a/b", "+/tennis/#", rule);
    assert_no_match("sportx", "sport+", rule);
    assert_no_match("sport+", "sport+", rule);
}

/// 4.7.1.3: "/finance" matches "+/+" and "/+", but not "+".
#[test]
fn single_level_wildcard_and_leading_separator_4_7_1_3() {
    assert_match("/finance", "+/+", "4.7.1.3");
    assert_match("/finance", "/+", "4.7.1.3");
    assert_no_match("/finance", "+", "4.7.1.3");
}

// ---------------------------------------------------------------------------------------------
// 4.7.2 Topics beginning with $
// ---------------------------------------------------------------------------------------------

/// [MQTT-4.7.2-1]: filters starting with a wildcard do not match topic names beginning with `$`.
/// 4.7.2 examples: "#" does not receive "$SYS/..." messages; "+/monitor/Clients" does not receive
/// "$SYS/monitor/Clients"; "$SYS/#" receives messages on topics beginning "$SYS/";
/// "$SYS/monitor/+" receives "$SYS/monitor/Clients".
#[test]
fn dollar_topics_mqtt_4_7_2_1() {
    let rule = "[MQTT-4.7.2-1]";
    assert_no_match("$SYS/broker/uptime", "#", rule);
    assert_no_match("$SYS/monitor/Clients", "+/monitor/Clients", rule);
    assert_no_match("$SYS", "+", rule);
    assert_no_match("$SYS", "#", rule);
    assert_no_match("$", "#", rule);
    assert_match("$SYS/monitor/Clients", "$SYS/#", rule);
    assert_match("$SYS/broker/load/bytes", "$SYS/#", rule);
    assert_match("$SYS", "$SYS/#", "4.7.1.2 parent level with $");
    assert_match("$SYS/monitor/Clients", "$SYS/monitor/+", rule);
    assert_match("$SYS/monitor/Clients", "$SYS/+/Clients", rule);
    assert_match("$SYS", "$SYS", rule);
    // only the first character of the topic counts
    assert_match("a/$SYS", "#", rule);
    assert_match("a/$SYS", "+/+", rule);
    assert_match("x$", "+", rule);
    // shared subscriptions are matched by their inner filter
    assert_no_match("$SYS/x", "$share/g/#", rule);
    assert_match("$SYS/x", "$share/g/$SYS/#", rule);
}

/// 4.7.2: to receive both `$SYS` and other messages a client subscribes to both "#" and "$SYS/#".
#[test]
fn dollar_topics_need_their_own_subscription_4_7_2() {
    let mut set = TopicFilterSet::new();
    set.insert("#", "all").unwrap();
    set.insert("$SYS/#", "sys").unwrap();
    assert_eq!(set.matches("$SYS/x").collect::<Vec<_>>(), [&"sys"], "4.7.2");
    assert_eq!(set.matches("x").collect::<Vec<_>>(), [&"all"], "4.7.2");
}

// ---------------------------------------------------------------------------------------------
// 4.7.3 Topic semantic and usage
// ---------------------------------------------------------------------------------------------

/// [MQTT-4.7.3-1]: topic names and filters are at least one character long.
#[test]
fn empty_is_invalid_mqtt_4_7_3_1() {
    assert_eq!(
        validate_topic_name(""),
        Err(TopicError::Empty),
        "[MQTT-4.7.3-1]"
    );
    assert_eq!(
        validate_topic_filter(""),
        Err(TopicError::Empty),
        "[MQTT-4.7.3-1]"
    );
    assert_no_match("", "#", "[MQTT-4.7.3-1]");
    assert_no_match("", "+", "[MQTT-4.7.3-1]");
    assert_no_match("a", "", "[MQTT-4.7.3-1]");
}

/// 4.7.3: topic names and filters are case sensitive; "ACCOUNTS" and "Accounts" differ.
#[test]
fn case_sensitive_4_7_3() {
    assert_no_match("ACCOUNTS", "Accounts", "4.7.3 case sensitive");
    assert_match("Accounts", "Accounts", "4.7.3 case sensitive");
}

/// 4.7.3: topic names and filters can include the space character: "Accounts payable".
#[test]
fn space_is_allowed_4_7_3() {
    assert_eq!(validate_topic_name("Accounts payable"), Ok(()), "4.7.3");
    assert_valid_filter("Accounts payable", "4.7.3");
    assert_match("Accounts payable", "Accounts payable", "4.7.3");
    assert_no_match("Accounts payable", "Accounts", "4.7.3");
}

/// 4.7.3: a leading or trailing `/` creates a distinct name: "/finance" differs from "finance";
/// "/" alone is a valid topic name.
#[test]
fn leading_and_trailing_separators_4_7_3() {
    assert_no_match("/finance", "finance", "4.7.3 leading /");
    assert_no_match("finance", "/finance", "4.7.3 leading /");
    assert_no_match("finance/", "finance", "4.7.3 trailing /");
    assert_eq!(validate_topic_name("/"), Ok(()), "4.7.3 \"/\" is valid");
    assert_valid_filter("/", "4.7.3");
    assert_match("/", "/", "4.7.3");
    assert_match("/", "+/+", "4.7.3");
    assert_match("a//b", "a/+/b", "4.7.3 empty level");
    assert_eq!(validate_topic_name("a//b"), Ok(()), "4.7.3 empty level");
}

/// [MQTT-4.7.3-2]: no U+0000 in topic names or filters.
#[test]
fn null_character_mqtt_4_7_3_2() {
    let rule = "[MQTT-4.7.3-2]";
    assert_eq!(
        validate_topic_name("a\0b"),
        Err(TopicError::NullCharacter { position: 1 }),
        "{rule}"
    );
    assert_eq!(
        validate_topic_filter("a/\0"),
        Err(TopicError::NullCharacter { position: 2 }),
        "{rule}"
    );
    assert_eq!(
        validate_topic_filter("$share/g\0/a"),
        Err(TopicError::NullCharacter { position: 8 }),
        "{rule} in a share name"
    );
    assert_eq!(
        validate_topic_filter("$share/g/a\0"),
        Err(TopicError::NullCharacter { position: 10 }),
        "{rule} in a shared filter"
    );
    assert_no_match("a\0b", "a\0b", rule);
    assert_no_match("a\0b", "#", rule);
    assert_no_match("a/\0", "a/+", rule);
}

/// [MQTT-4.7.3-3]: at most 65,535 bytes of UTF-8 (bytes, not characters).
#[test]
fn length_limit_mqtt_4_7_3_3() {
    let rule = "[MQTT-4.7.3-3]";
    let max = "a".repeat(MAX_TOPIC_LEN);
    let over = "a".repeat(MAX_TOPIC_LEN + 1);
    assert_eq!(validate_topic_name(&max), Ok(()), "{rule}");
    assert_valid_filter(&max, rule);
    assert_eq!(
        validate_topic_name(&over),
        Err(TopicError::TooLong { len: 65_536 }),
        "{rule}"
    );
    assert_eq!(
        validate_topic_filter(&over),
        Err(TopicError::TooLong { len: 65_536 }),
        "{rule}"
    );
    // 21,846 three-byte characters are 65,538 bytes although only 21,846 chars.
    let wide = "€".repeat(21_846);
    assert_eq!(
        validate_topic_name(&wide),
        Err(TopicError::TooLong { len: 65_538 }),
        "{rule} counts UTF-8 bytes"
    );
    assert_match(&max, &max, rule);
    assert_match(&max, "#", rule);
    assert_no_match(&over, &over, rule);
    assert_no_match(&over, "#", rule);
    assert_no_match(&wide, "#", rule);
}

/// [MQTT-4.7.3-4]: no normalization; bytes are compared (é precomposed vs decomposed differ).
#[test]
fn no_normalization_mqtt_4_7_3_4() {
    assert_no_match("caf\u{e9}", "cafe\u{301}", "[MQTT-4.7.3-4]");
    assert_match("caf\u{e9}", "caf\u{e9}", "[MQTT-4.7.3-4]");
    assert_match(
        "\u{1F600}/x",
        "\u{1F600}/+",
        "[MQTT-4.7.3-4] non-ASCII levels",
    );
}

/// [MQTT-3.3.2-2] (also [MQTT-4.7.0-1] / 3.1.1 [MQTT-4.7.1-1]): no wildcards in topic names.
#[test]
fn wildcards_in_topic_names_mqtt_3_3_2_2() {
    let rule = "[MQTT-3.3.2-2]";
    assert_eq!(
        validate_topic_name("sport/+"),
        Err(TopicError::WildcardInTopicName { position: 6 }),
        "{rule}"
    );
    assert_eq!(
        validate_topic_name("sport/#"),
        Err(TopicError::WildcardInTopicName { position: 6 }),
        "{rule}"
    );
    assert_eq!(
        validate_topic_name("c#"),
        Err(TopicError::WildcardInTopicName { position: 1 }),
        "{rule}: anywhere in a level"
    );
    assert_no_match("sport/+", "sport/+", rule);
    assert_no_match("sport/#", "sport/#", rule);
    assert_no_match("sport/#", "#", rule);
}

// ---------------------------------------------------------------------------------------------
// 4.8.2 Shared subscriptions (MQTT 5.0)
// ---------------------------------------------------------------------------------------------

/// [MQTT-4.8.2-1] / [MQTT-4.8.2-2]: `$share/{ShareName}/{filter}`; the share name is at least one
/// character and has no `/`, `+` or `#`; a `/` and a topic filter follow it.
#[test]
fn shared_subscription_form_mqtt_4_8_2() {
    assert_valid_filter("$share/consumer1/sport/tennis/+", "[MQTT-4.8.2-1]");
    assert_valid_filter("$share/g/#", "[MQTT-4.8.2-2]");
    assert_valid_filter("$share/g//", "[MQTT-4.8.2-2] the filter `/` is valid");
    assert_eq!(
        validate_topic_filter("$share//sport"),
        Err(TopicError::EmptyShareName),
        "[MQTT-4.8.2-1]"
    );
    assert_eq!(
        validate_topic_filter("$share/"),
        Err(TopicError::EmptyShareName),
        "[MQTT-4.8.2-1]"
    );
    assert_eq!(
        validate_topic_filter("$share/a+b/sport"),
        Err(TopicError::InvalidShareName { position: 8 }),
        "[MQTT-4.8.2-2]"
    );
    assert_eq!(
        validate_topic_filter("$share/#"),
        Err(TopicError::InvalidShareName { position: 7 }),
        "[MQTT-4.8.2-2]"
    );
    assert_eq!(
        validate_topic_filter("$share/consumer1"),
        Err(TopicError::MissingSharedFilter),
        "[MQTT-4.8.2-2] `/` must follow the share name"
    );
    assert_eq!(
        validate_topic_filter("$share/consumer1/"),
        Err(TopicError::MissingSharedFilter),
        "[MQTT-4.8.2-2] a filter must follow the `/`"
    );
    assert_eq!(
        validate_topic_filter("$share/g/sport/#/x"),
        Err(TopicError::MisplacedMultiLevelWildcard { position: 15 }),
        "[MQTT-4.7.1-1] inside a shared filter; position in the whole string"
    );
    assert_eq!(
        validate_topic_filter("$share/g/a+"),
        Err(TopicError::MisplacedSingleLevelWildcard { position: 10 }),
        "[MQTT-4.7.1-2] inside a shared filter"
    );
    // `$share` without the slash, or `$shared/`, is an ordinary filter.
    assert_valid_filter("$share", "4.8.2 no prefix");
    assert_valid_filter("$shared/x", "4.8.2 no prefix");
    assert_valid_filter("a/$share/g/x", "4.8.2 prefix only at the start");
}

/// 4.8.2: a shared subscription is matched by its topic filter.
#[test]
fn shared_subscription_matching_4_8_2() {
    let rule = "4.8.2";
    assert_match(
        "sport/tennis/player1",
        "$share/consumer1/sport/tennis/+",
        rule,
    );
    assert_match("sport", "$share/consumer1/sport/#", rule);
    assert_no_match("$share/consumer1/sport", "$share/consumer1/sport", rule);
    assert_no_match("sport", "$share//sport", "[MQTT-4.8.2-1]");
    assert_no_match("sport", "$share/g", "[MQTT-4.8.2-2]");
    assert_no_match("x", "$share/g+/x", "[MQTT-4.8.2-2]");
    assert_no_match("x", "$share/g/x+", "[MQTT-4.7.1-2]");
    // The inner filter is not itself parsed for `$share/` again.
    assert_match("$share/h/x", "$share/g/$share/h/x", rule);

    assert_eq!(
        parse_shared("$share/consumer1/sport/#"),
        Some(("consumer1", "sport/#"))
    );
    assert_eq!(parse_shared("$share/g//"), Some(("g", "/")));
    assert_eq!(parse_shared("sport/#"), None);
    assert_eq!(parse_shared("$share/g"), None);
    assert_eq!(parse_shared("$share/g/"), None);
    assert_eq!(parse_shared("$share//x"), None);
    assert_eq!(parse_shared("$share/+/x"), None);
    assert_eq!(matching_filter("$share/g/a/+"), "a/+");
    assert_eq!(matching_filter("a/+"), "a/+");
    assert_eq!(matching_filter("$share/g"), "$share/g");
}

#[test]
fn error_messages_cite_rules() {
    let cases = [
        (TopicError::Empty, "[MQTT-4.7.3-1]"),
        (TopicError::TooLong { len: 70_000 }, "[MQTT-4.7.3-3]"),
        (TopicError::NullCharacter { position: 1 }, "[MQTT-4.7.3-2]"),
        (
            TopicError::WildcardInTopicName { position: 1 },
            "[MQTT-3.3.2-2]",
        ),
        (
            TopicError::MisplacedMultiLevelWildcard { position: 1 },
            "[MQTT-4.7.1-1]",
        ),
        (
            TopicError::MisplacedSingleLevelWildcard { position: 1 },
            "[MQTT-4.7.1-2]",
        ),
        (TopicError::EmptyShareName, "[MQTT-4.8.2-1]"),
        (
            TopicError::InvalidShareName { position: 9 },
            "[MQTT-4.8.2-2]",
        ),
        (TopicError::MissingSharedFilter, "[MQTT-4.8.2-2]"),
    ];
    for (error, rule) in cases {
        let message = error.to_string();
        assert!(message.contains(rule), "{message:?} should cite {rule}");
        let _: &dyn std::error::Error = &error;
    }
    assert!(
        TopicError::TooLong { len: 70_000 }
            .to_string()
            .contains("70000")
    );
}

// ---------------------------------------------------------------------------------------------
// Where rumqttc::matches (0.25.1) disagrees with the specification
// ---------------------------------------------------------------------------------------------

/// Every pair on which `rumqttc::matches(topic, filter)` returns something else than ours, with
/// the rule that decides. Ours follows the specification.
///
/// 1. rumqttc never matches a topic that begins with `$`, whatever the filter. [MQTT-4.7.2-1]
///    only excludes filters that *start with a wildcard*; `$SYS/#` must match.
/// 2. rumqttc does not know MQTT 5 shared subscriptions (4.8.2): `$share/g/a` must match `a`.
/// 3. rumqttc does not validate: it matches invalid filters (`#` not last, `+` inside a level) and
///    invalid topic names (empty, with wildcards, with U+0000). Ours returns `false` for them.
const RUMQTTC_DISAGREES: &[(&str, &str, bool, &str)] = &[
    // (topic, filter, spec says, rule)
    (
        "$SYS/broker/uptime",
        "$SYS/#",
        true,
        "[MQTT-4.7.2-1] $SYS/# matches $SYS topics",
    ),
    (
        "$SYS",
        "$SYS/#",
        true,
        "[MQTT-4.7.2-1] + 4.7.1.2 parent level",
    ),
    (
        "$SYS/monitor/Clients",
        "$SYS/monitor/+",
        true,
        "4.7.2 example",
    ),
    ("$SYS", "$SYS", true, "[MQTT-4.7.2-1] exact $ topic"),
    (
        "$aws/things/t1/shadow",
        "$aws/things/+/shadow",
        true,
        "[MQTT-4.7.2-1]",
    ),
    (
        "sport/tennis",
        "$share/g/sport/tennis",
        true,
        "4.8.2 shared subscription",
    ),
    (
        "sport/tennis",
        "$share/g/sport/#",
        true,
        "4.8.2 shared subscription",
    ),
    ("a", "#/a", false, "[MQTT-4.7.1-1] # must be last"),
    ("a/b/c", "a/#/c", false, "[MQTT-4.7.1-1] # must be last"),
    ("a+", "a+", false, "[MQTT-4.7.1-2] + must be a whole level"),
    (
        "a/+",
        "a/+",
        false,
        "[MQTT-3.3.2-2] no wildcard in a topic name",
    ),
    (
        "a/+",
        "#",
        false,
        "[MQTT-3.3.2-2] no wildcard in a topic name",
    ),
    ("", "#", false, "[MQTT-4.7.3-1] empty topic"),
    ("", "+", false, "[MQTT-4.7.3-1] empty topic"),
    ("", "", false, "[MQTT-4.7.3-1] empty topic and filter"),
    ("a\0", "a\0", false, "[MQTT-4.7.3-2] U+0000"),
    ("a/\0", "a/#", false, "[MQTT-4.7.3-2] U+0000"),
];

#[test]
fn where_rumqttc_matches_disagrees() {
    for &(topic, filter, spec, rule) in RUMQTTC_DISAGREES {
        assert_eq!(
            matches(topic, filter),
            spec,
            "{rule}: ours for ({topic:?}, {filter:?})"
        );
        assert_eq!(
            rumqttc::matches(topic, filter),
            !spec,
            "rumqttc 0.25.1 was recorded as disagreeing on ({topic:?}, {filter:?}); \
             if this fails, update the list"
        );
    }
}

/// 4. `rumqttc::matches` panics when the topic's first character is not ASCII (it slices
///    `topic[..1]`); topics are UTF-8 strings (1.5.4 / 3.1.1 1.5.3) and `é/x` matches `#`.
#[test]
fn rumqttc_matches_panics_on_non_ascii_first_character() {
    for (topic, filter) in [("é/x", "#"), ("€", "€"), ("日本/温度", "+/温度")] {
        assert!(matches(topic, filter), "4.7.1: ({topic:?}, {filter:?})");
        let rumqttc = std::panic::catch_unwind(|| rumqttc::matches(topic, filter));
        assert!(
            rumqttc.is_err(),
            "rumqttc 0.25.1 was recorded as panicking on {topic:?}"
        );
    }
}

/// On valid inputs without `$` topics or `$share/` filters, rumqttc and ours agree.
#[test]
fn rumqttc_agrees_elsewhere() {
    let topics = [
        "sport",
        "sport/",
        "sport/tennis/player1",
        "/finance",
        "/",
        "a//b",
        "a",
    ];
    let filters = [
        "sport/#",
        "sport/+",
        "#",
        "+",
        "+/+",
        "/+",
        "sport/tennis/+",
        "a/+/b",
        "+/#",
        "/#",
        "sport",
        "a//b",
    ];
    for topic in topics {
        for filter in filters {
            assert_eq!(
                matches(topic, filter),
                rumqttc::matches(topic, filter),
                "({topic:?}, {filter:?})"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// TopicFilterSet and the spec
// ---------------------------------------------------------------------------------------------

#[test]
fn filter_set_spec_examples() {
    let mut set = TopicFilterSet::new();
    for filter in [
        "sport/tennis/player1/#",
        "sport/#",
        "#",
        "sport/tennis/+",
        "sport/+",
        "+/+",
        "/+",
        "+",
        "$SYS/#",
        "$SYS/monitor/+",
        "+/monitor/Clients",
        "$share/g/sport/#",
    ] {
        set.insert(filter, ()).unwrap();
    }
    let hits = |topic: &str| {
        let mut v: Vec<&str> = set.matches_with_filter(topic).map(|(f, ())| f).collect();
        v.sort_unstable();
        v.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    assert_eq!(
        hits("sport/tennis/player1"),
        [
            "#",
            "$share/g/sport/#",
            "sport/#",
            "sport/tennis/+",
            "sport/tennis/player1/#"
        ]
    );
    assert_eq!(hits("sport"), ["#", "$share/g/sport/#", "+", "sport/#"]);
    assert_eq!(
        hits("sport/"),
        ["#", "$share/g/sport/#", "+/+", "sport/#", "sport/+"]
    );
    assert_eq!(hits("/finance"), ["#", "+/+", "/+"]);
    assert_eq!(hits("$SYS/monitor/Clients"), ["$SYS/#", "$SYS/monitor/+"]);
    assert!(hits("sport/+").is_empty(), "[MQTT-3.3.2-2] invalid topic");
    assert!(hits("").is_empty(), "[MQTT-4.7.3-1] invalid topic");
}

// ---------------------------------------------------------------------------------------------
// "Matching allocates nothing" (DESIGN.md)
// ---------------------------------------------------------------------------------------------

#[path = "common/alloc_counter.rs"]
mod alloc_counter;
use alloc_counter::allocations_during;

#[test]
fn matching_allocates_nothing() {
    let mut set = TopicFilterSet::new();
    for room in 0..50 {
        set.insert(&format!("home/room{room}/+/temperature"), room)
            .unwrap();
        set.insert(&format!("home/room{room}/sensor/#"), room)
            .unwrap();
        set.insert(&format!("$share/g/home/room{room}/#"), room)
            .unwrap();
    }
    set.insert("#", 1000).unwrap();
    let n = allocations_during(|| {
        for _ in 0..100 {
            assert!(matches("home/room7/sensor/temperature", "home/+/sensor/#"));
            assert!(matches("$SYS/x", "$SYS/#"));
            assert!(matches("a/b", "$share/g/a/+"));
            assert!(!matches("a/b", "a/#/b"));
            assert_eq!(set.matches("home/room7/sensor/temperature").count(), 4);
            assert_eq!(
                set.matches_with_filter("home/room7/x/temperature").count(),
                3
            );
            assert_eq!(set.matches("invalid/+").count(), 0);
        }
    });
    assert_eq!(n, 0, "matching allocated {n} times");
}

#[test]
fn deep_lookup_allocates_at_most_once() {
    let mut set = TopicFilterSet::new();
    let levels = 200;
    // `a/.../a` and `a/.../a/+` at every depth: the walk leaves one `+` node pending per level.
    for depth in 1..=levels {
        let prefix = vec!["a"; depth - 1].join("/");
        let sep = if depth == 1 { "" } else { "/" };
        set.insert(&format!("{prefix}{sep}a"), depth).unwrap();
        set.insert(&format!("{prefix}{sep}+"), depth).unwrap();
    }
    let topic = vec!["a"; levels].join("/");
    let n = allocations_during(|| {
        assert_eq!(set.matches(&topic).count(), 2);
    });
    assert_eq!(
        n, 1,
        "a lookup that overflows the inline stack allocates once"
    );
}
