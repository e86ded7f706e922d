//! A set of topic filters, stored as a trie of topic levels.

use std::fmt;
use std::iter::FusedIterator;
use std::slice;

use super::validate::{TopicError, matching_filter, validate_topic_filter, validate_topic_name};

/// Index of the root node in [`TopicFilterSet::nodes`]; the root is never freed.
const ROOT: usize = 0;

/// Up to this many literal children, a node is searched linearly rather than by binary search.
const LINEAR_SEARCH_MAX: usize = 8;

/// A filter string and its value.
#[derive(Clone)]
struct Entry<T> {
    /// The filter exactly as inserted, `$share/` prefix included.
    filter: Box<str>,
    value: T,
}

/// One trie node. A node stands for a filter prefix made of whole levels; the root stands for the
/// empty prefix (no level consumed yet).
#[derive(Clone)]
struct Node<T> {
    /// Children for literal levels, sorted by level for binary search.
    literal: Vec<(Box<str>, usize)>,
    /// Child for a `+` level.
    plus: Option<usize>,
    /// Filters that end exactly here (their last level led to this node).
    exact: Vec<Entry<T>>,
    /// Filters that end with `#` right after this node's prefix (`{prefix}/#`, or `#` at the root).
    multi: Vec<Entry<T>>,
}

impl<T> Node<T> {
    const fn new() -> Self {
        Self {
            literal: Vec::new(),
            plus: None,
            exact: Vec::new(),
            multi: Vec::new(),
        }
    }

    fn is_unused(&self) -> bool {
        self.literal.is_empty()
            && self.plus.is_none()
            && self.exact.is_empty()
            && self.multi.is_empty()
    }

    #[inline]
    fn literal_child(&self, level: &str) -> Option<usize> {
        // Few children: comparing lengths first rejects most keys without touching their bytes.
        if self.literal.len() <= LINEAR_SEARCH_MAX {
            return self
                .literal
                .iter()
                .find(|(key, _)| **key == *level)
                .map(|&(_, child)| child);
        }
        self.literal
            .binary_search_by(|(key, _)| (**key).cmp(level))
            .ok()
            .map(|i| self.literal[i].1)
    }
}

/// A set of MQTT topic filters, each with a value, that finds every filter matching a topic name.
///
/// Filters are stored in a trie keyed by topic level, so a lookup visits only the levels of the
/// topic (and at most one `+` branch per level), whatever the number of filters. Matching follows
/// [`matches`](super::matches) exactly: a filter's value is yielded for a topic if and only if
/// `matches(topic, filter)` is true.
///
/// - Filters are validated on [`insert`](Self::insert) with
///   [`validate_topic_filter`](super::validate_topic_filter).
/// - A shared subscription `$share/{group}/{filter}` is stored under `{filter}` and matched as
///   `{filter}`, but keeps its own entry: a set may hold `home/#`, `$share/a/home/#` and
///   `$share/b/home/#` at once, and all three match `home/x`. Entries are identified by the exact
///   filter string that was inserted.
/// - Inserting a filter string that is already present replaces its value: there is one value
///   per filter string, as a subscriber routes each filter to one handler.
///
/// # Examples
///
/// ```
/// use rumqttc_opentelemetry::topic::TopicFilterSet;
///
/// let mut routes = TopicFilterSet::new();
/// routes.insert("home/+/temperature", 1)?;
/// routes.insert("home/#", 2)?;
/// routes.insert("$share/loggers/home/#", 3)?;
/// routes.insert("office/#", 4)?;
///
/// let mut hits: Vec<(&str, i32)> = routes
///     .matches_with_filter("home/kitchen/temperature")
///     .map(|(filter, value)| (filter, *value))
///     .collect();
/// hits.sort_unstable();
/// assert_eq!(
///     hits,
///     [("$share/loggers/home/#", 3), ("home/#", 2), ("home/+/temperature", 1)]
/// );
///
/// // `#` matches the parent level; wildcards at the start do not match `$` topics.
/// assert_eq!(routes.matches("home").count(), 2);
/// assert!(routes.insert("home/#/x", 5).is_err());
/// assert_eq!(routes.remove("office/#"), Some(4));
/// assert_eq!(routes.len(), 3);
/// # Ok::<(), rumqttc_opentelemetry::topic::TopicError>(())
/// ```
#[derive(Clone)]
pub struct TopicFilterSet<T> {
    /// Arena of nodes; `nodes[ROOT]` is the root. Freed nodes are empty and listed in `free`.
    nodes: Vec<Node<T>>,
    free: Vec<usize>,
    len: usize,
}

impl<T> TopicFilterSet<T> {
    /// An empty set. Does not allocate until the first insert.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            nodes: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }

    /// Number of filters in the set.
    #[must_use]
    pub const fn len(&self) -> usize {
        self.len
    }

    /// Whether the set holds no filter.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Removes every filter.
    pub fn clear(&mut self) {
        self.nodes.clear();
        self.free.clear();
        self.len = 0;
    }

    /// Adds `filter` with `value`.
    ///
    /// If the set already holds this exact filter string, its value is replaced (and dropped):
    /// the set keeps one value per filter string. `home/#` and `$share/g/home/#` are different
    /// strings and get separate entries.
    ///
    /// # Errors
    ///
    /// The [`TopicError`] from [`validate_topic_filter`](super::validate_topic_filter) if `filter`
    /// is not a valid topic filter; the set is then unchanged.
    pub fn insert(&mut self, filter: &str, value: T) -> Result<(), TopicError> {
        validate_topic_filter(filter)?;
        if self.nodes.is_empty() {
            self.nodes.push(Node::new());
        }
        let mut node = ROOT;
        for level in matching_filter(filter).split('/') {
            if level == "#" {
                // Validated: `#` is the last level.
                self.put(node, true, filter, value);
                return Ok(());
            }
            node = self.child_or_insert(node, level);
        }
        self.put(node, false, filter, value);
        Ok(())
    }

    /// Removes `filter` (the exact string given to [`insert`](Self::insert)) and returns its
    /// value, or `None` if the set does not hold it. Trie nodes left empty are pruned.
    ///
    /// Allocates a small vector for the path to the filter.
    pub fn remove(&mut self, filter: &str) -> Option<T> {
        validate_topic_filter(filter).ok()?;
        // (parent, level, child) for each step down from the root.
        let mut path: Vec<(usize, &str, usize)> = Vec::new();
        let mut node = ROOT;
        let mut multi = false;
        for level in matching_filter(filter).split('/') {
            if level == "#" {
                multi = true;
                break;
            }
            let child = self.child(node, level)?;
            path.push((node, level, child));
            node = child;
        }
        let entries = if multi {
            &mut self.nodes.get_mut(node)?.multi
        } else {
            &mut self.nodes.get_mut(node)?.exact
        };
        let index = entries.iter().position(|e| *e.filter == *filter)?;
        let removed = entries.swap_remove(index);
        self.len -= 1;

        for &(parent, level, child) in path.iter().rev() {
            if !self.nodes[child].is_unused() {
                break;
            }
            let parent_node = &mut self.nodes[parent];
            if level == "+" {
                parent_node.plus = None;
            } else if let Ok(i) = parent_node
                .literal
                .binary_search_by(|(key, _)| (**key).cmp(level))
            {
                parent_node.literal.remove(i);
            }
            self.nodes[child] = Node::new();
            self.free.push(child);
        }
        if self.len == 0 {
            self.clear();
        }
        Some(removed.value)
    }

    /// The value stored for exactly the filter string `filter`, if any.
    ///
    /// This is a lookup by filter, not matching: `get("a/+")` finds the entry inserted as `a/+`.
    #[must_use]
    pub fn get(&self, filter: &str) -> Option<&T> {
        self.entries_for(filter)?
            .iter()
            .find(|e| *e.filter == *filter)
            .map(|e| &e.value)
    }

    /// Whether the set holds exactly the filter string `filter`.
    #[must_use]
    pub fn contains(&self, filter: &str) -> bool {
        self.get(filter).is_some()
    }

    /// Every `(filter, value)` in the set, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &T)> + '_ {
        self.nodes.iter().flat_map(|node| {
            node.multi
                .iter()
                .chain(node.exact.iter())
                .map(|e| (&*e.filter, &e.value))
        })
    }

    /// The values of every filter that matches the topic name `topic`, each matching filter once,
    /// in no particular order.
    ///
    /// Yields nothing if `topic` is not a valid topic name. See
    /// [`matches_with_filter`](Self::matches_with_filter) for the cost.
    ///
    /// # Examples
    ///
    /// ```
    /// use rumqttc_opentelemetry::topic::TopicFilterSet;
    ///
    /// let mut set = TopicFilterSet::new();
    /// set.insert("$SYS/#", "sys")?;
    /// set.insert("#", "all")?;
    /// assert_eq!(set.matches("$SYS/broker/uptime").collect::<Vec<_>>(), [&"sys"]);
    /// assert_eq!(set.matches("home/x").collect::<Vec<_>>(), [&"all"]);
    /// # Ok::<(), rumqttc_opentelemetry::topic::TopicError>(())
    /// ```
    #[must_use = "iterators are lazy and do nothing unless consumed"]
    pub fn matches<'a>(&'a self, topic: &'a str) -> Matches<'a, T> {
        Matches {
            inner: self.matches_with_filter(topic),
        }
    }

    /// Like [`matches`](Self::matches), but yields `(filter, value)`, where `filter` is the
    /// filter string as inserted (`$share/` prefix included).
    ///
    /// The topic is validated first (one pass over it), then the trie is walked depth first,
    /// lazily, with one search among the literal children per visited node (linear for up to
    /// eight children, binary beyond). The cost depends on the topic's levels and on how many
    /// filters match, not on the size of the set. The pending
    /// nodes are kept in an inline stack of 16 entries; only a topic with more than about 15
    /// levels that also meets `+` filters at many levels can overflow it, and then one vector,
    /// sized for the topic's level count, is allocated once for the lookup.
    #[must_use = "iterators are lazy and do nothing unless consumed"]
    pub fn matches_with_filter<'a>(&'a self, topic: &'a str) -> MatchesWithFilter<'a, T> {
        let mut it = MatchesWithFilter {
            nodes: &self.nodes,
            topic,
            stack: Stack::new(),
            multi: [].iter(),
            exact: [].iter(),
        };
        if !self.nodes.is_empty() && validate_topic_name(topic).is_ok() {
            it.stack.push((ROOT, 0), topic);
        }
        it
    }

    fn child(&self, node: usize, level: &str) -> Option<usize> {
        let node = self.nodes.get(node)?;
        if level == "+" {
            node.plus
        } else {
            node.literal_child(level)
        }
    }

    fn child_or_insert(&mut self, node: usize, level: &str) -> usize {
        if level == "+" {
            if let Some(child) = self.nodes[node].plus {
                return child;
            }
            let child = self.alloc();
            self.nodes[node].plus = Some(child);
            return child;
        }
        match self.nodes[node]
            .literal
            .binary_search_by(|(key, _)| (**key).cmp(level))
        {
            Ok(i) => self.nodes[node].literal[i].1,
            Err(i) => {
                let child = self.alloc();
                self.nodes[node].literal.insert(i, (level.into(), child));
                child
            }
        }
    }

    fn alloc(&mut self) -> usize {
        match self.free.pop() {
            Some(id) => id,
            None => {
                self.nodes.push(Node::new());
                self.nodes.len() - 1
            }
        }
    }

    fn put(&mut self, node: usize, multi: bool, filter: &str, value: T) {
        let node = &mut self.nodes[node];
        let entries = if multi {
            &mut node.multi
        } else {
            &mut node.exact
        };
        match entries.iter_mut().find(|e| *e.filter == *filter) {
            Some(entry) => entry.value = value,
            None => {
                entries.push(Entry {
                    filter: filter.into(),
                    value,
                });
                self.len += 1;
            }
        }
    }

    /// The entry list where `filter` would be stored, if the trie path exists.
    fn entries_for(&self, filter: &str) -> Option<&[Entry<T>]> {
        validate_topic_filter(filter).ok()?;
        let mut node = ROOT;
        for level in matching_filter(filter).split('/') {
            if level == "#" {
                return Some(&self.nodes.get(node)?.multi);
            }
            node = self.child(node, level)?;
        }
        Some(&self.nodes.get(node)?.exact)
    }
}

impl<T> Default for TopicFilterSet<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: fmt::Debug> fmt::Debug for TopicFilterSet<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// Iterator over the values of the filters matching a topic; see [`TopicFilterSet::matches`].
pub struct Matches<'a, T> {
    inner: MatchesWithFilter<'a, T>,
}

impl<'a, T> Iterator for Matches<'a, T> {
    type Item = &'a T;

    fn next(&mut self) -> Option<&'a T> {
        self.inner.next().map(|(_, value)| value)
    }
}

impl<T> FusedIterator for Matches<'_, T> {}

impl<T> fmt::Debug for Matches<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Matches")
            .field("topic", &self.inner.topic)
            .finish_non_exhaustive()
    }
}

/// Iterator over `(filter, value)` for the filters matching a topic; see
/// [`TopicFilterSet::matches_with_filter`].
pub struct MatchesWithFilter<'a, T> {
    nodes: &'a [Node<T>],
    topic: &'a str,
    /// Nodes still to visit, with the byte offset of the topic level each one consumes next
    /// (`topic.len() + 1` once the topic has no level left).
    stack: Stack,
    /// Entries of the node being visited that are still to be yielded.
    multi: slice::Iter<'a, Entry<T>>,
    exact: slice::Iter<'a, Entry<T>>,
}

impl<'a, T> MatchesWithFilter<'a, T> {
    #[inline]
    fn visit(&mut self, id: usize, pos: usize) {
        let Some(node) = self.nodes.get(id) else {
            return;
        };
        // [MQTT-4.7.2-1]: filters starting with `#` or `+` do not match topics starting with `$`.
        let wildcards = id != ROOT || !self.topic.starts_with('$');
        if wildcards {
            // `{prefix}/#` matches the prefix itself and everything below it.
            self.multi = node.multi.iter();
        }
        let Some(rest) = self.topic.get(pos..) else {
            // No topic level left: filters ending here match.
            self.exact = node.exact.iter();
            return;
        };
        let (level, next) = match rest.bytes().position(|b| b == b'/') {
            Some(i) => (&rest[..i], pos + i + 1),
            None => (rest, self.topic.len() + 1),
        };
        if wildcards && let Some(plus) = node.plus {
            self.stack.push((plus, next), self.topic);
        }
        if let Some(child) = node.literal_child(level) {
            self.stack.push((child, next), self.topic);
        }
    }
}

impl<'a, T> Iterator for MatchesWithFilter<'a, T> {
    type Item = (&'a str, &'a T);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(entry) = self.multi.next().or_else(|| self.exact.next()) {
                return Some((&entry.filter, &entry.value));
            }
            let (id, pos) = self.stack.pop()?;
            self.visit(id, pos);
        }
    }
}

impl<T> FusedIterator for MatchesWithFilter<'_, T> {}

impl<T> fmt::Debug for MatchesWithFilter<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MatchesWithFilter")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

/// Number of pending nodes kept without allocating.
const INLINE_FRAMES: usize = 16;

/// A LIFO stack of `(node, topic offset)` with inline storage and a heap spill.
///
/// Frames go to the inline array until it is full, then to `spill`; pops take from `spill` first,
/// so the order stays LIFO.
struct Stack {
    inline: [(usize, usize); INLINE_FRAMES],
    len: usize,
    spill: Vec<(usize, usize)>,
}

impl Stack {
    const fn new() -> Self {
        Self {
            inline: [(0, 0); INLINE_FRAMES],
            len: 0,
            spill: Vec::new(),
        }
    }

    fn push(&mut self, frame: (usize, usize), topic: &str) {
        if self.len < INLINE_FRAMES && self.spill.is_empty() {
            self.inline[self.len] = frame;
            self.len += 1;
            return;
        }
        if self.spill.capacity() == 0 {
            // A depth-first walk keeps at most one pending sibling per level plus the two
            // children just pushed: `levels + 1` frames. Reserving that once means the spill
            // never reallocates.
            let levels = topic.bytes().filter(|&b| b == b'/').count() + 1;
            self.spill.reserve(levels + 2);
        }
        self.spill.push(frame);
    }

    fn pop(&mut self) -> Option<(usize, usize)> {
        if let Some(frame) = self.spill.pop() {
            return Some(frame);
        }
        if self.len == 0 {
            return None;
        }
        self.len -= 1;
        Some(self.inline[self.len])
    }
}

#[cfg(test)]
mod tests;
