//! Property tests: `rumqttc_opentelemetry::topic` against a small reference model that splits
//! strings on `/` and compares level by level (MQTT 3.1.1 / 5.0 section 4.7, 4.8.2).

use std::collections::BTreeMap;

use proptest::prelude::*;
use rumqttc_opentelemetry::topic::{
    TopicFilterSet, matches, matching_filter, parse_shared, validate_topic_filter,
    validate_topic_name,
};

// ---------------------------------------------------------------------------------------------
// Reference model: obviously correct, slow, allocating.
// ---------------------------------------------------------------------------------------------

mod model {
    const MAX: usize = 65_535;

    pub fn valid_name(topic: &str) -> bool {
        !topic.is_empty() && topic.len() <= MAX && !topic.contains(['\0', '+', '#'])
    }

    fn valid_plain_filter(filter: &str) -> bool {
        if filter.is_empty() || filter.contains('\0') {
            return false;
        }
        let levels: Vec<&str> = filter.split('/').collect();
        let last = levels.len() - 1;
        levels.iter().enumerate().all(|(i, level)| {
            if level.contains('#') {
                *level == "#" && i == last
            } else if level.contains('+') {
                *level == "+"
            } else {
                true
            }
        })
    }

    /// `Some(inner filter)` for a well-formed `$share/{name}/{filter}` share part.
    pub fn shared(filter: &str) -> Option<(&str, &str)> {
        let rest = filter.strip_prefix("$share/")?;
        let parts: Vec<&str> = rest.splitn(2, '/').collect();
        if parts.len() != 2 {
            return None;
        }
        let (name, inner) = (parts[0], parts[1]);
        if name.is_empty() || name.contains(['+', '#', '\0']) || inner.is_empty() {
            return None;
        }
        Some((name, inner))
    }

    pub fn valid_filter(filter: &str) -> bool {
        if filter.is_empty() || filter.len() > MAX {
            return false;
        }
        if filter.starts_with("$share/") {
            shared(filter).is_some_and(|(_, inner)| valid_plain_filter(inner))
        } else {
            valid_plain_filter(filter)
        }
    }

    pub fn matches(topic: &str, filter: &str) -> bool {
        if !valid_name(topic) || !valid_filter(filter) {
            return false;
        }
        let filter = shared(filter).map_or(filter, |(_, inner)| inner);
        let t: Vec<&str> = topic.split('/').collect();
        let f: Vec<&str> = filter.split('/').collect();
        if topic.starts_with('$') && (f[0] == "+" || f[0] == "#") {
            return false;
        }
        levels_match(&t, &f)
    }

    fn levels_match(t: &[&str], f: &[&str]) -> bool {
        match (f.first(), t.first()) {
            // `#` matches zero or more remaining levels (zero: the parent rule).
            (Some(&"#"), _) => true,
            (None, None) => true,
            (None, Some(_)) | (Some(_), None) => false,
            (Some(&"+"), Some(_)) => levels_match(&t[1..], &f[1..]),
            (Some(a), Some(b)) => a == b && levels_match(&t[1..], &f[1..]),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Generators: a small alphabet so that collisions and edge cases are common.
// ---------------------------------------------------------------------------------------------

const LEVELS: &[&str] = &[
    "a", "b", "$x", "$SYS", "", "+", "#", "a+", "#b", "ab", "\0", "é",
];
const SHARE_PREFIXES: &[&str] = &[
    "",
    "",
    "",
    "",
    "$share/g/",
    "$share/h/",
    "$share/",
    "$share//",
    "$share/g+/",
    "$share/g",
];

fn joined(levels: &'static [&'static str], max_levels: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(levels), 1..=max_levels).prop_map(|v| v.join("/"))
}

fn topic() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => joined(&["a", "b", "$x", "$SYS", "", "ab", "é"], 5),
        1 => joined(LEVELS, 5),
        1 => Just(String::new()),
    ]
}

fn filter() -> impl Strategy<Value = String> {
    let random = (
        prop::sample::select(SHARE_PREFIXES),
        joined(LEVELS, 5),
        any::<bool>(),
    )
        .prop_map(|(prefix, body, hash)| {
            // make a valid trailing `#` common
            if hash {
                format!("{prefix}{body}/#")
            } else {
                format!("{prefix}{body}")
            }
        });
    let derived = (topic(), derivation()).prop_map(|(topic, d)| derive(&topic, d));
    prop_oneof![random, derived]
}

/// How to turn a topic into a filter: share prefix, which levels become `+`, where `#` cuts.
type Derivation = (&'static str, Vec<bool>, usize);

fn derivation() -> impl Strategy<Value = Derivation> {
    (
        prop::sample::select(SHARE_PREFIXES),
        prop::collection::vec(prop::bool::weighted(0.3), 6),
        0_usize..8,
    )
}

/// A filter made from a topic: some levels become `+`, maybe a tail becomes `#`.
fn derive(topic: &str, (prefix, plus, cut): Derivation) -> String {
    let mut levels: Vec<&str> = topic
        .split('/')
        .zip(plus.iter().cycle())
        .map(|(level, &p)| if p { "+" } else { level })
        .collect();
    if cut < levels.len() {
        levels.truncate(cut);
        levels.push("#");
    }
    format!("{prefix}{}", levels.join("/"))
}

/// A topic and a filter, the filter often derived from the topic so that matches are common.
fn pair() -> impl Strategy<Value = (String, String)> {
    (topic(), filter(), derivation(), any::<bool>()).prop_map(|(topic, filter, d, random)| {
        if random {
            (topic, filter)
        } else {
            let derived = derive(&topic, d);
            (topic, derived)
        }
    })
}

/// Valid filters without `$`: literal and `+` levels, maybe a trailing `#`.
fn plain_valid_filter() -> impl Strategy<Value = String> {
    (
        joined(&["a", "b", "", "+", "ab", "é"], 5),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(body, hash, alone)| match (hash, alone) {
            (true, true) => "#".to_owned(),
            (true, false) => format!("{body}/#"),
            (false, _) if body.is_empty() => "+".to_owned(),
            (false, _) => body,
        })
}

/// Strings over the special characters, unstructured.
fn soup() -> impl Strategy<Value = String> {
    "[a$/+#\u{0}é]{0,12}"
}

#[derive(Debug, Clone)]
enum Op {
    Insert(String, u32),
    Remove(String),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![
            3 => (filter(), any::<u32>()).prop_map(|(f, v)| Op::Insert(f, v)),
            1 => filter().prop_map(Op::Remove),
        ],
        0..60,
    )
}

/// The generators must produce enough matching pairs for the comparisons to mean something.
#[test]
fn generators_produce_matches_and_valid_inputs() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let mut runner = TestRunner::deterministic();
    let (mut matched, mut valid_filters, total) = (0, 0, 5_000);
    for _ in 0..total {
        let (t, f) = pair().new_tree(&mut runner).unwrap().current();
        matched += usize::from(model::matches(&t, &f));
        valid_filters += usize::from(model::valid_filter(&f));
    }
    assert!(
        matched * 10 > total,
        "only {matched} of {total} pairs match"
    );
    assert!(
        valid_filters * 5 > total,
        "only {valid_filters} of {total} filters are valid"
    );
}

fn sorted<'a>(it: impl Iterator<Item = (&'a str, &'a u32)>) -> Vec<(String, u32)> {
    let mut v: Vec<(String, u32)> = it.map(|(f, v)| (f.to_owned(), *v)).collect();
    v.sort();
    v
}

proptest! {
    // No regression files: failures print the minimal input instead.
    #![proptest_config(ProptestConfig {
        cases: 2_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn matches_agrees_with_model((topic, filter) in pair()) {
        prop_assert_eq!(matches(&topic, &filter), model::matches(&topic, &filter));
    }

    #[test]
    fn matches_agrees_with_model_on_soup(topic in soup(), filter in soup()) {
        prop_assert_eq!(matches(&topic, &filter), model::matches(&topic, &filter));
    }

    #[test]
    fn validation_agrees_with_model((topic, filter) in pair()) {
        prop_assert_eq!(validate_topic_name(&topic).is_ok(), model::valid_name(&topic));
        prop_assert_eq!(validate_topic_filter(&filter).is_ok(), model::valid_filter(&filter));
        prop_assert_eq!(validate_topic_name(&filter).is_ok(), model::valid_name(&filter));
        prop_assert_eq!(validate_topic_filter(&topic).is_ok(), model::valid_filter(&topic));
    }

    #[test]
    fn shared_parsing_agrees_with_model(filter in filter()) {
        prop_assert_eq!(parse_shared(&filter), model::shared(&filter));
        let expected = model::shared(&filter).map_or(filter.as_str(), |(_, inner)| inner);
        prop_assert_eq!(matching_filter(&filter), expected);
    }

    /// A filter always matches itself when it is also a valid topic name.
    #[test]
    fn valid_name_matches_itself(topic in topic()) {
        prop_assert_eq!(matches(&topic, &topic), validate_topic_name(&topic).is_ok());
    }

    /// Where the spec and rumqttc agree (valid inputs, no `$` topic, no `$share/` filter, and a
    /// topic whose first character is ASCII, because `rumqttc::matches` panics otherwise), the
    /// results are the same.
    #[test]
    fn agrees_with_rumqttc_on_plain_valid_inputs(
        topic in joined(&["a", "b", "", "ab", "é"], 5).prop_map(|t| {
            if t.as_bytes().first().is_some_and(u8::is_ascii) { t } else { format!("a{t}") }
        }),
        filter in plain_valid_filter(),
    ) {
        prop_assert!(validate_topic_name(&topic).is_ok());
        prop_assert!(validate_topic_filter(&filter).is_ok());
        prop_assert_eq!(matches(&topic, &filter), rumqttc::matches(&topic, &filter));
    }

    /// Validation and matching never panic, whatever the input.
    #[test]
    fn never_panics(a in any::<String>(), b in any::<String>()) {
        let _ = validate_topic_name(&a);
        let _ = validate_topic_filter(&a);
        let _ = parse_shared(&a);
        let _ = matches(&a, &b);
        prop_assert_eq!(matches(&a, &b), model::matches(&a, &b));
        let mut set = TopicFilterSet::new();
        let _ = set.insert(&b, 1_u32);
        let _ = set.matches(&a).count();
        let _ = set.remove(&a);
    }

    /// After random inserts and removes, `matches_with_filter(topic)` yields exactly the stored
    /// filters f with `matches(topic, f)`, each once, with its latest value.
    #[test]
    fn filter_set_agrees_with_linear_scan(ops in ops(), topics in prop::collection::vec(topic(), 1..20)) {
        let mut set = TopicFilterSet::new();
        let mut expected: BTreeMap<String, u32> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Insert(filter, value) => {
                    let result = set.insert(&filter, value);
                    prop_assert_eq!(result.is_ok(), model::valid_filter(&filter));
                    prop_assert_eq!(result, validate_topic_filter(&filter));
                    if model::valid_filter(&filter) {
                        expected.insert(filter, value);
                    }
                }
                Op::Remove(filter) => {
                    prop_assert_eq!(set.remove(&filter), expected.remove(&filter));
                }
            }
            prop_assert_eq!(set.len(), expected.len());
        }
        prop_assert_eq!(set.is_empty(), expected.is_empty());
        prop_assert_eq!(sorted(set.iter()), sorted(expected.iter().map(|(f, v)| (f.as_str(), v))));
        for (filter, value) in &expected {
            prop_assert_eq!(set.get(filter), Some(value));
        }
        for topic in &topics {
            let got = sorted(set.matches_with_filter(topic));
            let want = sorted(
                expected
                    .iter()
                    .filter(|(f, _)| matches(topic, f))
                    .map(|(f, v)| (f.as_str(), v)),
            );
            prop_assert_eq!(&got, &want, "topic {:?}", topic);
            let mut values: Vec<u32> = set.matches(topic).copied().collect();
            values.sort_unstable();
            let mut want_values: Vec<u32> = want.iter().map(|(_, v)| *v).collect();
            want_values.sort_unstable();
            prop_assert_eq!(values, want_values);
        }
        let clone = set.clone();
        for topic in &topics {
            prop_assert_eq!(sorted(clone.matches_with_filter(topic)), sorted(set.matches_with_filter(topic)));
        }
    }
}
