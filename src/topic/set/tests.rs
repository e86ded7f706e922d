//! Unit tests of the filter trie: insertion, removal, node reuse, and matching by the rules of
//! MQTT section 4.7.

use super::*;
use crate::topic::matches;

fn sorted_hits<'a>(set: &'a TopicFilterSet<u32>, topic: &'a str) -> Vec<&'a str> {
    let mut hits: Vec<&str> = set.matches_with_filter(topic).map(|(f, _)| f).collect();
    hits.sort_unstable();
    hits
}

#[test]
fn empty_set() {
    let set: TopicFilterSet<u32> = TopicFilterSet::default();
    assert!(set.is_empty());
    assert_eq!(set.matches("a").count(), 0);
    assert_eq!(set.get("a"), None);
    assert_eq!(format!("{set:?}"), "{}");
}

#[test]
fn insert_replace_remove_prunes() {
    let mut set = TopicFilterSet::new();
    set.insert("a/b/c", 1).unwrap();
    set.insert("a/b/c", 2).unwrap();
    assert_eq!(set.len(), 1);
    assert_eq!(set.get("a/b/c"), Some(&2));
    set.insert("a/+/#", 3).unwrap();
    set.insert("$share/g/a/b/c", 4).unwrap();
    assert_eq!(set.len(), 3);
    assert_eq!(
        sorted_hits(&set, "a/b/c"),
        ["$share/g/a/b/c", "a/+/#", "a/b/c"]
    );
    assert_eq!(set.remove("a/b"), None);
    assert_eq!(set.remove("a/b/c/#"), None);
    assert_eq!(set.remove("a/b/c"), Some(2));
    assert_eq!(set.remove("a/b/c"), None);
    assert_eq!(sorted_hits(&set, "a/b/c"), ["$share/g/a/b/c", "a/+/#"]);
    assert_eq!(set.remove("$share/g/a/b/c"), Some(4));
    // only the path of `a/+/#` is left: root, `a`, `+`
    let live = set.nodes.len() - set.free.len();
    assert_eq!(live, 3);
    assert_eq!(set.remove("a/+/#"), Some(3));
    assert!(set.is_empty());
    assert!(set.nodes.is_empty());
}

#[test]
fn freed_nodes_are_reused() {
    let mut set = TopicFilterSet::new();
    set.insert("keep", 0).unwrap();
    for i in 0..100 {
        let filter = format!("x/{i}/y");
        set.insert(&filter, i).unwrap();
        assert_eq!(set.remove(&filter), Some(i));
    }
    assert!(set.nodes.len() <= 5, "{}", set.nodes.len());
}

#[test]
fn invalid_filters_rejected() {
    let mut set = TopicFilterSet::new();
    assert_eq!(set.insert("", 1), Err(TopicError::Empty));
    assert!(set.insert("a/#/b", 1).is_err());
    assert!(set.insert("a+", 1).is_err());
    assert!(set.is_empty());
    assert_eq!(set.remove("a+"), None);
}

#[test]
fn dollar_rule_at_root_only() {
    let mut set = TopicFilterSet::new();
    for f in ["#", "+/x", "$SYS/#", "$SYS/+", "+", "$share/g/#"] {
        set.insert(f, 0).unwrap();
    }
    assert_eq!(sorted_hits(&set, "$SYS/x"), ["$SYS/#", "$SYS/+"]);
    assert_eq!(sorted_hits(&set, "$SYS"), ["$SYS/#"]);
    assert_eq!(sorted_hits(&set, "a/x"), ["#", "$share/g/#", "+/x"]);
    assert_eq!(sorted_hits(&set, "a"), ["#", "$share/g/#", "+"]);
    assert!(sorted_hits(&set, "a/+").is_empty());
}

#[test]
fn deep_topics_spill_and_agree() {
    let mut set = TopicFilterSet::new();
    let levels = 40;
    // `+` and literal at every level: the walk keeps one pending sibling per level.
    let mut filters = Vec::new();
    for depth in 1..=levels {
        let a = vec!["a"; depth].join("/");
        filters.push(vec!["+"; depth].join("/"));
        filters.push(format!("{a}/#"));
        filters.push(format!("{a}/+"));
        filters.push(a);
    }
    for (i, f) in filters.iter().enumerate() {
        set.insert(f, u32::try_from(i).unwrap()).unwrap();
    }
    let topic = vec!["a"; levels].join("/");
    let mut it = set.matches_with_filter(&topic);
    let mut hits: Vec<&str> = it.by_ref().map(|(f, _)| f).collect();
    hits.sort_unstable();
    assert!(it.stack.spill.capacity() > 0, "the inline stack overflowed");
    let mut expected: Vec<&str> = filters
        .iter()
        .map(String::as_str)
        .filter(|f| matches(&topic, f))
        .collect();
    expected.sort_unstable();
    assert_eq!(hits, expected);
}

#[test]
fn very_deep_filter_has_no_recursion() {
    let mut set = TopicFilterSet::new();
    let filter = "/".repeat(30_000);
    set.insert(&filter, 1).unwrap();
    assert_eq!(set.matches(&filter).count(), 1);
    let copy = set.clone();
    drop(set);
    assert_eq!(copy.get(&filter), Some(&1));
}

#[test]
fn debug_lists_entries() {
    let mut set = TopicFilterSet::new();
    set.insert("a/#", 1).unwrap();
    assert_eq!(format!("{set:?}"), r#"{"a/#": 1}"#);
    assert_eq!(set.iter().count(), 1);
    assert!(set.contains("a/#"));
    assert!(!set.contains("a/+"));
    assert!(format!("{:?}", set.matches("a")).contains("Matches"));
}
