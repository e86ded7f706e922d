//! Topic validation, matching and the filter set, against a reference model written here.
//!
//! The reference follows MQTT 3.1.1 / 5.0 section 4.7 (and 4.8.2 for `$share/`) level by level,
//! on `str::split('/')`, the simplest reading of the rules:
//! - names and filters: 1 to 65,535 bytes, no U+0000 [MQTT-4.7.3-1..3]; names have no `+`/`#`
//!   [MQTT-3.3.2-2]; in filters `#` is only the whole last level [MQTT-4.7.1-1] and `+` only a
//!   whole level [MQTT-4.7.1-2]; `$share/{name}/{filter}`: name non-empty, without `+`/`#`, and
//!   a non-empty valid filter after it [MQTT-4.8.2-1/2];
//! - `#` matches the parent level and any number of child levels, `+` exactly one level, which
//!   may be empty; a filter whose first character is a wildcard never matches a topic that
//!   starts with `$` [MQTT-4.7.2-1]; invalid inputs never match.
//!
//! Invariants: `validate_topic_name`/`validate_topic_filter` agree with the reference (the error
//! variant too, for the first rule broken, as documented); `matches` agrees with the reference;
//! a `TopicFilterSet` after arbitrary inserts and removes holds what a map model holds and
//! yields, for each topic, exactly the filters a linear scan with `matches` finds.
#![no_main]

use std::collections::BTreeMap;

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use rumqttc_opentelemetry::topic::{
    MAX_TOPIC_LEN, TopicError, TopicFilterSet, matches, validate_topic_filter, validate_topic_name,
};

/// A string built from a small alphabet of MQTT-significant pieces, so that the fuzzer produces
/// structure (levels, wildcards, `$`, `$share/`) and not only noise.
#[derive(Debug, Arbitrary)]
enum Piece {
    Slash,
    Plus,
    Hash,
    Dollar,
    Share,
    Nul,
    A,
    B,
    Sys,
    Text(String),
}

#[derive(Debug, Arbitrary)]
struct Topicish(Vec<Piece>);

impl Topicish {
    fn build(&self) -> String {
        let mut out = String::new();
        for piece in &self.0 {
            out.push_str(match piece {
                Piece::Slash => "/",
                Piece::Plus => "+",
                Piece::Hash => "#",
                Piece::Dollar => "$",
                Piece::Share => "$share/",
                Piece::Nul => "\0",
                Piece::A => "a",
                Piece::B => "bb",
                Piece::Sys => "$SYS",
                Piece::Text(text) => text,
            });
        }
        out
    }
}

#[derive(Debug, Arbitrary)]
enum Op {
    Insert(Topicish, u8),
    Remove(u8),
    RemoveRaw(Topicish),
}

#[derive(Debug, Arbitrary)]
struct Input {
    pairs: Vec<(Topicish, Topicish)>,
    ops: Vec<Op>,
    topics: Vec<Topicish>,
    /// Appended `a/` levels, to reach deep topics and the stack spill of the set's walk.
    depth: u8,
}

/// The kind of the first rule broken, in the documented order; `None` when valid.
fn reference_name_error(topic: &str) -> Option<TopicError> {
    if topic.is_empty() {
        return Some(TopicError::Empty);
    }
    if topic.len() > MAX_TOPIC_LEN {
        return Some(TopicError::TooLong { len: topic.len() });
    }
    for (position, byte) in topic.bytes().enumerate() {
        match byte {
            0 => return Some(TopicError::NullCharacter { position }),
            b'+' | b'#' => return Some(TopicError::WildcardInTopicName { position }),
            _ => {}
        }
    }
    None
}

fn reference_levels_error(filter: &str, offset: usize) -> Option<TopicError> {
    let levels: Vec<&str> = filter.split('/').collect();
    let mut position = offset;
    for (index, level) in levels.iter().enumerate() {
        for (i, byte) in level.bytes().enumerate() {
            let at = position + i;
            match byte {
                0 => return Some(TopicError::NullCharacter { position: at }),
                b'+' if level.len() != 1 => {
                    return Some(TopicError::MisplacedSingleLevelWildcard { position: at });
                }
                b'#' if level.len() != 1 || index + 1 != levels.len() => {
                    return Some(TopicError::MisplacedMultiLevelWildcard { position: at });
                }
                _ => {}
            }
        }
        position += level.len() + 1;
    }
    None
}

fn reference_filter_error(filter: &str) -> Option<TopicError> {
    if filter.is_empty() {
        return Some(TopicError::Empty);
    }
    if filter.len() > MAX_TOPIC_LEN {
        return Some(TopicError::TooLong { len: filter.len() });
    }
    let Some(rest) = filter.strip_prefix("$share/") else {
        return reference_levels_error(filter, 0);
    };
    let (name, inner) = match rest.split_once('/') {
        Some((name, inner)) => (name, Some(inner)),
        None => (rest, None),
    };
    if name.is_empty() {
        return Some(TopicError::EmptyShareName);
    }
    for (i, byte) in name.bytes().enumerate() {
        let position = 7 + i;
        match byte {
            0 => return Some(TopicError::NullCharacter { position }),
            b'+' | b'#' => return Some(TopicError::InvalidShareName { position }),
            _ => {}
        }
    }
    match inner {
        None | Some("") => Some(TopicError::MissingSharedFilter),
        Some(inner) => reference_levels_error(inner, 7 + name.len() + 1),
    }
}

fn reference_matches(topic: &str, filter: &str) -> bool {
    if reference_name_error(topic).is_some() || reference_filter_error(filter).is_some() {
        return false;
    }
    let filter = match filter.strip_prefix("$share/") {
        Some(rest) => rest.split_once('/').map_or(rest, |(_, inner)| inner),
        None => filter,
    };
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let topic_levels: Vec<&str> = topic.split('/').collect();
    let filter_levels: Vec<&str> = filter.split('/').collect();
    for (index, level) in filter_levels.iter().enumerate() {
        if *level == "#" {
            // The parent level and any number of child levels.
            return true;
        }
        let Some(topic_level) = topic_levels.get(index) else {
            return false;
        };
        if *level != "+" && level != topic_level {
            return false;
        }
    }
    filter_levels.len() == topic_levels.len()
}

/// Input layout. Text mode (the default): lines separated by `\n`: `i FILTER` inserts, `r FILTER`
/// removes, `t TOPIC` is looked up in the set, any other line is both a topic and a filter, and
/// consecutive such lines are paired. Structured mode: a first byte `0x02`, then an [`Input`]
/// decoded with `arbitrary` from pieces such as `/`, `+`, `#`, `$SYS`, `$share/`.
fn input(data: &[u8]) -> Option<Input> {
    if let Some(rest) = data.strip_prefix(&[0x02]) {
        return Input::arbitrary_take_rest(Unstructured::new(rest)).ok();
    }
    let text = |s: &str| Topicish(vec![Piece::Text(s.to_owned())]);
    let mut input = Input {
        pairs: Vec::new(),
        ops: Vec::new(),
        topics: Vec::new(),
        depth: 0,
    };
    let mut plain: Vec<&str> = Vec::new();
    let data = String::from_utf8_lossy(data);
    for line in data.split('\n') {
        if let Some(filter) = line.strip_prefix("i ") {
            input
                .ops
                .push(Op::Insert(text(filter), input.ops.len() as u8));
        } else if let Some(filter) = line.strip_prefix("r ") {
            input.ops.push(Op::RemoveRaw(text(filter)));
        } else if let Some(topic) = line.strip_prefix("t ") {
            input.topics.push(text(topic));
        } else {
            plain.push(line);
        }
    }
    for pair in plain.windows(2) {
        input.pairs.push((text(pair[0]), text(pair[1])));
    }
    if let [one] = plain[..] {
        input.pairs.push((text(one), text(one)));
    }
    Some(input)
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = input(data) else { return };
    for (topic, filter) in &input.pairs {
        let (topic, filter) = (topic.build(), filter.build());
        for text in [&topic, &filter] {
            assert_eq!(
                validate_topic_name(text).err(),
                reference_name_error(text),
                "name {text:?}"
            );
            assert_eq!(
                validate_topic_filter(text).err(),
                reference_filter_error(text),
                "filter {text:?}"
            );
        }
        for (t, f) in [(&topic, &filter), (&filter, &topic), (&topic, &topic)] {
            assert_eq!(
                matches(t, f),
                reference_matches(t, f),
                "matches({t:?}, {f:?})"
            );
        }
    }

    // A filter set against a map model.
    let mut set = TopicFilterSet::new();
    let mut model: BTreeMap<String, u8> = BTreeMap::new();
    let mut inserted: Vec<String> = Vec::new();
    for op in &input.ops {
        match op {
            Op::Insert(filter, value) => {
                let filter = filter.build();
                let result = set.insert(&filter, *value);
                assert_eq!(
                    result.clone().err(),
                    reference_filter_error(&filter),
                    "{filter:?}"
                );
                if result.is_ok() {
                    model.insert(filter.clone(), *value);
                    inserted.push(filter);
                }
            }
            Op::Remove(index) => {
                if !inserted.is_empty() {
                    let filter = &inserted[usize::from(*index) % inserted.len()];
                    assert_eq!(
                        set.remove(filter),
                        model.remove(filter),
                        "remove {filter:?}"
                    );
                }
            }
            Op::RemoveRaw(filter) => {
                let filter = filter.build();
                assert_eq!(
                    set.remove(&filter),
                    model.remove(&filter),
                    "remove {filter:?}"
                );
            }
        }
        assert_eq!(set.len(), model.len());
    }
    for (filter, value) in &model {
        assert_eq!(set.get(filter), Some(value), "{filter:?}");
    }
    for filter in &inserted {
        assert_eq!(set.contains(filter), model.contains_key(filter));
    }
    let mut listed: Vec<(String, u8)> = set.iter().map(|(f, v)| (f.to_owned(), *v)).collect();
    listed.sort();
    assert_eq!(
        listed,
        model
            .iter()
            .map(|(f, v)| (f.clone(), *v))
            .collect::<Vec<_>>()
    );

    let deep = "a/".repeat(usize::from(input.depth));
    let mut topics: Vec<String> = input.topics.iter().map(Topicish::build).collect();
    topics.extend(input.topics.iter().map(|t| format!("{deep}{}", t.build())));
    topics.extend(input.pairs.iter().map(|(t, _)| t.build()));
    for topic in &topics {
        let mut found: Vec<(&str, u8)> = set
            .matches_with_filter(topic)
            .map(|(f, v)| (f, *v))
            .collect();
        found.sort();
        let expected: Vec<(&str, u8)> = model
            .iter()
            .filter(|(filter, _)| matches(topic, filter))
            .map(|(f, v)| (f.as_str(), *v))
            .collect();
        assert_eq!(found, expected, "topic {topic:?}");
        assert_eq!(set.matches(topic).count(), expected.len());
        for filter in model.keys() {
            assert_eq!(matches(topic, filter), reference_matches(topic, filter));
        }
    }
});
