//! The crate's three propagation carriers behind one interface, for tests that check they behave
//! alike: a list of (name, value) fields goes in through a carrier and is extracted with
//! [`W3CPropagator`]; a context is injected into a carrier and read back as fields.

use bytes::Bytes;
use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use rumqttc_opentelemetry::propagation::json_fields::{JsonFields, JsonFieldsInjector};
use rumqttc_opentelemetry::propagation::{
    BAGGAGE, Extracted, TRACEPARENT, TRACESTATE, UserPropertiesExtractor, UserPropertiesInjector,
    W3CPropagator, envelope,
};

/// Ordered (name, value) fields; a name may repeat.
pub type Fields = Vec<(String, String)>;

const NAMES: [&str; 3] = [TRACEPARENT, TRACESTATE, BAGGAGE];

/// Owned fields from borrowed pairs.
pub fn fields(pairs: &[(&str, &str)]) -> Fields {
    pairs
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect()
}

/// The values of `name` in `fields`, in order.
pub fn values_of<'a>(fields: &'a Fields, name: &str) -> Vec<&'a str> {
    fields
        .iter()
        .filter(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
        .collect()
}

/// A carrier of the crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carrier {
    /// MQTT 5 user properties.
    UserProperties,
    /// MQTT 3.1.1 envelope headers.
    Envelope,
    /// MQTT 3.1.1 JSON fields (one string member per field, duplicates included).
    JsonFields,
}

/// Every carrier.
pub const CARRIERS: [Carrier; 3] = [
    Carrier::UserProperties,
    Carrier::Envelope,
    Carrier::JsonFields,
];

/// A JSON object with one string member per field, in order, duplicates included.
fn json_object(fields: &Fields) -> Vec<u8> {
    let quote = |text: &str| serde_json::Value::from(text).to_string();
    let members: Vec<String> = fields
        .iter()
        .map(|(name, value)| format!("{}:{}", quote(name), quote(value)))
        .collect();
    format!("{{{},\"t\":21.5}}", members.join(",")).into_bytes()
}

impl Carrier {
    /// Receives `fields` through this carrier, with `W3CPropagator::new()`.
    pub fn extract(self, fields: &Fields) -> Extracted {
        let propagator = W3CPropagator::new();
        let extract =
            |extractor: &dyn Extractor| propagator.extract_checked(&Context::new(), extractor);
        match self {
            Carrier::UserProperties => extract(&UserPropertiesExtractor::new(fields)),
            Carrier::Envelope => {
                let wire = Bytes::from(envelope::encode(fields, b"21.5").expect("fits"));
                let decoded = envelope::decode(&wire)
                    .expect("well-formed")
                    .expect("an envelope");
                assert_eq!(decoded.payload(), &b"21.5"[..]);
                extract(&decoded)
            }
            Carrier::JsonFields => {
                let payload = json_object(fields);
                extract(&JsonFields::parse(&payload, &NAMES).expect("a JSON object"))
            }
        }
    }

    /// What this carrier holds after `cx` is injected into it with `W3CPropagator::new()`.
    pub fn inject(self, cx: &Context) -> Fields {
        let propagator = W3CPropagator::new();
        let mut properties = Vec::new();
        match self {
            Carrier::UserProperties => {
                propagator.inject_context(cx, &mut UserPropertiesInjector::new(&mut properties));
                properties
            }
            Carrier::Envelope => {
                propagator.inject_context(cx, &mut UserPropertiesInjector::new(&mut properties));
                let wire = Bytes::from(envelope::encode(&properties, b"x").expect("fits"));
                let decoded = envelope::decode(&wire)
                    .expect("well-formed")
                    .expect("an envelope");
                let pairs: Vec<(&str, &str)> = decoded.headers().collect();
                fields(&pairs)
            }
            Carrier::JsonFields => {
                let mut injector = JsonFieldsInjector::new();
                propagator.inject_context(cx, &mut injector);
                let payload = injector.apply(br#"{"t":21.5}"#).expect("a JSON object");
                let parsed = JsonFields::parse(&payload, &NAMES).expect("a JSON object");
                let pairs: Vec<(&str, &str)> = parsed.iter().collect();
                fields(&pairs)
            }
        }
    }
}
