//! Carriers: MQTT 5 user properties as an OpenTelemetry [`Injector`] and [`Extractor`].
//!
//! MQTT 5 user properties are an ordered list of UTF-8 string pairs in which a name may repeat
//! (MQTT 5, 3.3.2.3.7). The W3C "Trace Context: MQTT" draft puts `traceparent`, `tracestate` (and
//! here `baggage`) into that list under exactly those names.

use opentelemetry::propagation::{Extractor, Injector};

/// The longest propagation value read from, or written to, a carrier. A longer one is dropped,
/// never forwarded: a 64 KiB `baggage` must not ride along on every message of a fleet.
pub const MAX_PROPAGATION_VALUE_LEN: usize = 8192;

/// The one value of `values`, or `None` when there is none or more than one.
///
/// A name given twice is ambiguous; every extractor in this crate treats it as absent, so a
/// message with two `traceparent` properties starts a new trace instead of trusting either one.
pub(crate) fn unique<'a>(mut values: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let first = values.next()?;
    match values.next() {
        Some(_) => None,
        None => Some(first),
    }
}

/// Writes propagation fields into a message's user properties.
///
/// Properties the application set are kept, in their order; a field the propagator writes
/// replaces any property of the same name (so a forwarded message never carries two
/// `traceparent`s, nor the upstream `tracestate` next to a new `traceparent`), and is appended
/// after them. Empty values (the SDK's propagator writes an empty `tracestate`) and values longer
/// than [`MAX_PROPAGATION_VALUE_LEN`] are not written, but still remove a property of that name.
///
/// ```
/// use opentelemetry::propagation::Injector;
/// use rumqttc_opentelemetry::propagation::UserPropertiesInjector;
///
/// let mut properties = vec![("unit".to_owned(), "celsius".to_owned())];
/// let mut injector = UserPropertiesInjector::new(&mut properties);
/// injector.set("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
/// injector.set("tracestate", String::new());
/// assert_eq!(properties.len(), 2);
/// assert_eq!(properties[0].0, "unit");
/// ```
#[derive(Debug)]
pub struct UserPropertiesInjector<'a> {
    properties: &'a mut Vec<(String, String)>,
}

impl<'a> UserPropertiesInjector<'a> {
    /// An injector that writes into `properties`.
    pub fn new(properties: &'a mut Vec<(String, String)>) -> Self {
        Self { properties }
    }
}

impl Injector for UserPropertiesInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        // A stale value of a forwarded message goes even when there is nothing to replace it.
        if self.properties.iter().any(|(name, _)| name == key) {
            self.properties.retain(|(name, _)| name != key);
        }
        if value.is_empty() || value.len() > MAX_PROPAGATION_VALUE_LEN {
            return;
        }
        self.properties.push((key.to_owned(), value));
    }

    fn reserve(&mut self, additional: usize) {
        self.properties.reserve(additional);
    }
}

/// Reads propagation fields from a message's user properties.
///
/// Names match exactly (MQTT strings are case sensitive). A name that appears more than once,
/// or whose value is longer than [`MAX_PROPAGATION_VALUE_LEN`], reads as absent through
/// [`Extractor::get`]; [`Extractor::get_all`] still returns every value.
///
/// ```
/// use opentelemetry::propagation::Extractor;
/// use rumqttc_opentelemetry::propagation::UserPropertiesExtractor;
///
/// let properties = vec![
///     ("traceparent".to_owned(), "a".to_owned()),
///     ("traceparent".to_owned(), "b".to_owned()),
/// ];
/// let extractor = UserPropertiesExtractor::new(&properties);
/// assert_eq!(extractor.get("traceparent"), None);
/// assert_eq!(extractor.get_all("traceparent"), Some(vec!["a", "b"]));
/// ```
#[derive(Debug, Clone, Copy)]
pub struct UserPropertiesExtractor<'a> {
    properties: &'a [(String, String)],
}

impl<'a> UserPropertiesExtractor<'a> {
    /// An extractor that reads from `properties`.
    pub fn new(properties: &'a [(String, String)]) -> Self {
        Self { properties }
    }
}

impl Extractor for UserPropertiesExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        unique(
            self.properties
                .iter()
                .filter(|(name, _)| name == key)
                .map(|(_, value)| value.as_str()),
        )
        .filter(|value| value.len() <= MAX_PROPAGATION_VALUE_LEN)
    }

    fn keys(&self) -> Vec<&str> {
        self.properties
            .iter()
            .map(|(name, _)| name.as_str())
            .collect()
    }

    fn get_all(&self, key: &str) -> Option<Vec<&str>> {
        // The extraction asks for every `tracestate` whenever `get` finds none, so the common
        // absent case is one scan without building anything.
        let first = self.properties.iter().position(|(name, _)| name == key)?;
        Some(
            self.properties[first..]
                .iter()
                .filter(|(name, _)| name == key)
                .map(|(_, value)| value.as_str())
                .collect(),
        )
    }
}
