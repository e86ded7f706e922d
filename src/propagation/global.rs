//! [`GlobalPropagator`]: the application's global text-map propagator, as a value that can be
//! handed to [`InstrumentationBuilder::propagator`](crate::InstrumentationBuilder::propagator),
//! and the rule by which an instrumentation follows the global propagator by default.

use opentelemetry::Context;
use opentelemetry::global;
use opentelemetry::propagation::text_map_propagator::FieldIter;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};

use super::{BAGGAGE, TRACEPARENT, TRACESTATE, W3CPropagator};

/// The propagator installed with `opentelemetry::global::set_text_map_propagator`, looked up at
/// every use, so that it stays whatever the application installs.
///
/// `global::get_text_map_propagator` lends a `&dyn TextMapPropagator`, which
/// [`InstrumentationBuilder::propagator`](crate::InstrumentationBuilder::propagator) cannot take;
/// this forwards to it:
///
/// ```
/// use rumqttc_opentelemetry::Instrumentation;
/// use rumqttc_opentelemetry::propagation::GlobalPropagator;
///
/// let instrumentation = Instrumentation::builder()
///     .propagator(GlobalPropagator::new())
///     .build();
/// ```
#[derive(Debug, Clone)]
pub struct GlobalPropagator {
    /// The global propagator's fields when this was made (`fields` lends them out).
    fields: Vec<String>,
}

impl Default for GlobalPropagator {
    fn default() -> Self {
        Self::new()
    }
}

impl GlobalPropagator {
    /// Forwards to the global propagator.
    pub fn new() -> Self {
        let fields = global::get_text_map_propagator(|propagator| {
            propagator.fields().map(str::to_owned).collect()
        });
        Self { fields }
    }
}

impl TextMapPropagator for GlobalPropagator {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        global::get_text_map_propagator(|propagator| propagator.inject_context(cx, injector));
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        global::get_text_map_propagator(|propagator| propagator.extract_with_context(cx, extractor))
    }

    fn fields(&self) -> FieldIter<'_> {
        FieldIter::new(&self.fields)
    }
}

/// What an instrumentation propagates with by default, given the global propagator now.
#[derive(Debug)]
pub(crate) enum GlobalChoice {
    /// The built-in strict W3C propagator (with or without baggage).
    W3C(W3CPropagator),
    /// The global propagator, which writes other fields.
    Global(GlobalPropagator),
}

/// The default follows the application's global propagator: when none is installed (the no-op
/// propagator has no fields) or it writes exactly the W3C fields (`traceparent`, `tracestate`,
/// and perhaps `baggage`), the built-in strict propagator does the same faster (with baggage
/// when there is none or the global writes it); any other global propagator (B3, Jaeger, one of
/// the application's) is used as it is.
pub(crate) fn default_propagator() -> GlobalChoice {
    let fields: Vec<String> = global::get_text_map_propagator(|propagator| {
        propagator.fields().map(str::to_owned).collect()
    });
    if fields.is_empty() {
        return GlobalChoice::W3C(W3CPropagator::new());
    }
    let w3c_only = fields
        .iter()
        .all(|field| [TRACEPARENT, TRACESTATE, BAGGAGE].contains(&field.as_str()));
    if w3c_only && fields.iter().any(|field| field == TRACEPARENT) {
        let baggage = fields.iter().any(|field| field == BAGGAGE);
        return GlobalChoice::W3C(if baggage {
            W3CPropagator::new()
        } else {
            W3CPropagator::without_baggage()
        });
    }
    GlobalChoice::Global(GlobalPropagator { fields })
}
