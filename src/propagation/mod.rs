//! Context propagation over MQTT: MQTT 5 user properties, the MQTT 3.1.1 envelope, and JSON
//! fields, with strict W3C Trace Context validation.
//!
//! # MQTT 5
//!
//! The W3C "Trace Context: MQTT" draft carries the trace context in user properties named exactly
//! [`TRACEPARENT`] and [`TRACESTATE`]; with the baggage propagator on, [`BAGGAGE`] rides along.
//! [`UserPropertiesInjector`] and [`UserPropertiesExtractor`] adapt a message's
//! `Vec<(String, String)>` to the OpenTelemetry propagator API, and [`W3CPropagator`] is a
//! `TextMapPropagator` that formats and parses `traceparent` directly and validates it by every
//! rule of W3C Trace Context (the SDK's parser accepts values W3C rejects).
//!
//! What extraction does (section names are those of the current W3C Trace Context text):
//!
//! | input | result |
//! |---|---|
//! | a malformed `traceparent` (length, case, delimiters, all-zero ids, version `ff`) | new trace; [`Extracted::traceparent_error`] says why |
//! | two or more `traceparent`s | new trace ([`TraceparentError::Duplicate`]) |
//! | trace flags | `sampled` and `random-trace-id` kept and sent on; reserved bits cleared ("Other Flags") |
//! | a value longer than [`MAX_PROPAGATION_VALUE_LEN`] | dropped, never forwarded |
//! | a `tracestate` without a valid `traceparent` | ignored ("Tracestate Header") |
//! | several `tracestate`s | one list, combined in order ("tracestate Header Field Values") |
//! | a `tracestate` key | current grammar: `(lcalpha / DIGIT) 0*255(keychar)`, `@` anywhere after the first character ("Key") |
//! | a duplicated `tracestate` key | the left-most member kept, the state kept ("Mutating the tracestate Field") |
//! | a malformed `tracestate` member, or more than 32 members all fields together | trace kept, trace state dropped |
//! | a combined `tracestate` longer than [`MAX_PROPAGATION_VALUE_LEN`] as one header | truncated by whole entries, those over 128 characters first, then from the end ("tracestate Limits") |
//! | a `baggage` over 8,192 bytes | dropped; past 64 members, the rest ignored |
//!
//! The SDK's `TraceState` (opentelemetry 0.33) refuses some valid keys; the whole list then
//! travels next to the extracted context and is written on by [`W3CPropagator`] (see
//! [`parse_tracestate`]).
//!
//! # MQTT 3.1.1
//!
//! MQTT 3.1.1 has no properties: see [`envelope`] for the opt-in binary envelope and
//! [`json_fields`] for fields inside JSON-object payloads. Extraction follows the table above
//! for both (several `tracestate` envelope headers or JSON members are one list, in order).
//!
//! ```
//! use opentelemetry::propagation::TextMapPropagator;
//! use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
//! use opentelemetry::Context;
//! use rumqttc_opentelemetry::propagation::{
//!     UserPropertiesExtractor, UserPropertiesInjector, W3CPropagator,
//! };
//!
//! let sent = SpanContext::new(
//!     TraceId::from(0x4bf92f3577b34da6a3ce929d0e0e4736),
//!     SpanId::from(0x00f067aa0ba902b7),
//!     TraceFlags::SAMPLED,
//!     false,
//!     TraceState::NONE,
//! );
//! let propagator = W3CPropagator::new();
//! let mut properties = Vec::new();
//! propagator.inject_context(
//!     &Context::new().with_remote_span_context(sent.clone()),
//!     &mut UserPropertiesInjector::new(&mut properties),
//! );
//! assert_eq!(properties[0].0, "traceparent");
//!
//! let received = propagator.extract(&UserPropertiesExtractor::new(&properties));
//! assert_eq!(received.span().span_context().trace_id(), sent.trace_id());
//! ```

mod baggage;
mod carrier;
pub mod envelope;
mod global;
pub mod json_fields;
mod sdk_state;
mod traceparent;
mod tracestate;

use std::sync::OnceLock;

use opentelemetry::Context;
use opentelemetry::baggage::BaggageExt;
use opentelemetry::propagation::text_map_propagator::FieldIter;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt};

pub use baggage::{MAX_BAGGAGE_LEN, MAX_BAGGAGE_MEMBERS};
pub use carrier::{MAX_PROPAGATION_VALUE_LEN, UserPropertiesExtractor, UserPropertiesInjector};
pub use global::GlobalPropagator;
pub(crate) use global::{GlobalChoice, default_propagator};
pub use sdk_state::parse_tracestate;
pub use traceparent::{
    KNOWN_TRACE_FLAGS, MAX_TRACEPARENT_LEN, RANDOM_TRACE_ID_FLAG, Traceparent, TraceparentError,
    format_traceparent, parse_traceparent,
};
pub use tracestate::{MAX_TRACESTATE_LEN, MAX_TRACESTATE_MEMBERS, TracestateError};

use sdk_state::{Built, FullTracestate};
use tracestate::Members;

/// The user-property (or envelope header, or JSON field) name of the W3C `traceparent`.
pub const TRACEPARENT: &str = "traceparent";
/// The name of the W3C `tracestate`.
pub const TRACESTATE: &str = "tracestate";
/// The name of the W3C `baggage`.
pub const BAGGAGE: &str = "baggage";

/// What [`W3CPropagator::extract_checked`] found: the context to use as parent, and what was
/// wrong with the carrier, if anything.
#[derive(Debug, Clone)]
pub struct Extracted {
    /// The extracted context: the remote span context and baggage, layered on the context given.
    pub context: Context,
    /// Why the `traceparent` was rejected; `None` when it was valid or simply absent.
    pub traceparent_error: Option<TraceparentError>,
    /// Why the `tracestate` was dropped; `None` when it was valid, absent or not looked at.
    pub tracestate_error: Option<TracestateError>,
}

/// Reads the remote span context from a carrier by the rules of W3C Trace Context.
///
/// The `traceparent` must appear once and be valid ([`parse_traceparent`]); the `tracestate` is
/// read only then: all its fields as one list, in order, parsed as [`parse_tracestate`] does.
/// A `tracestate` that cannot be parsed is dropped while the trace is kept; the second element
/// says why.
///
/// The span context's `TraceState` lacks the members the SDK's `TraceState` refuses (see
/// [`parse_tracestate`]); [`W3CPropagator`] keeps them.
pub fn extract_span_context(
    extractor: &dyn Extractor,
) -> Result<(SpanContext, Option<TracestateError>), TraceparentError> {
    extract_parts(extractor).map(|found| (found.remote, found.tracestate_error))
}

/// What a carrier holds, in the SDK's terms plus what they cannot express.
struct Found {
    remote: SpanContext,
    /// The whole `tracestate` when `remote`'s `TraceState` lacks members.
    full_tracestate: Option<String>,
    tracestate_error: Option<TracestateError>,
}

fn extract_parts(extractor: &dyn Extractor) -> Result<Found, TraceparentError> {
    let value = match extractor.get(TRACEPARENT) {
        Some(value) => value,
        None => return Err(why_absent(extractor)),
    };
    let parent = parse_traceparent(value)?;
    let (built, tracestate_error) = match read_tracestate(extractor) {
        Ok(built) => (built, None),
        Err(error) => (Built::default(), Some(error)),
    };
    let remote = SpanContext::new(
        parent.trace_id,
        parent.span_id,
        parent.flags,
        true,
        built.state,
    );
    Ok(Found {
        remote,
        full_tracestate: built.full,
        tracestate_error,
    })
}

/// The `tracestate` fields of a carrier, as one list. One field is read without allocating;
/// several (or one the carrier hides because it is too long) through `get_all`.
fn read_tracestate(extractor: &dyn Extractor) -> Result<Built, TracestateError> {
    match extractor.get(TRACESTATE) {
        Some(value) => parse_fields(&[value]),
        None => match extractor.get_all(TRACESTATE) {
            Some(fields) => parse_fields(&fields),
            None => Ok(Built::default()),
        },
    }
}

fn parse_fields(fields: &[&str]) -> Result<Built, TracestateError> {
    // Carrier rule, as for every propagation value: an oversized field is dropped, and with it
    // the list it belonged to (what is left would not be the list the sender meant).
    if let Some(long) = fields
        .iter()
        .find(|field| field.len() > MAX_PROPAGATION_VALUE_LEN)
    {
        return Err(TracestateError::Oversized(long.len()));
    }
    let mut members = Members::parse(fields)?;
    members.truncate_for_propagation();
    Ok(sdk_state::build(&members))
}

/// Tells apart the reasons an extractor's `get` can come back empty.
fn why_absent(extractor: &dyn Extractor) -> TraceparentError {
    match extractor.get_all(TRACEPARENT).as_deref() {
        None | Some([]) => TraceparentError::Missing,
        Some([one]) => match parse_traceparent(one) {
            Err(error) => error,
            Ok(_) => TraceparentError::Oversized(one.len()),
        },
        Some(many) => TraceparentError::Duplicate(many.len()),
    }
}

/// The W3C Trace Context (and, by default, W3C Baggage) propagator, with strict validation and
/// a direct `traceparent` formatter and parser.
///
/// It is a drop-in `TextMapPropagator` for any carrier, and the default of this crate's
/// instrumentation, because the global propagator of OpenTelemetry is a no-op until the
/// application installs one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct W3CPropagator {
    baggage: bool,
}

impl Default for W3CPropagator {
    fn default() -> Self {
        Self::new()
    }
}

impl W3CPropagator {
    /// Trace context and baggage.
    pub const fn new() -> Self {
        Self { baggage: true }
    }

    /// Trace context only: `baggage` is neither written nor read.
    pub const fn without_baggage() -> Self {
        Self { baggage: false }
    }

    /// Whether `baggage` is propagated.
    pub const fn propagates_baggage(&self) -> bool {
        self.baggage
    }

    /// Like [`TextMapPropagator::extract_with_context`], and also says what was wrong with the
    /// carrier, so that the caller can record it.
    pub fn extract_checked(&self, cx: &Context, extractor: &dyn Extractor) -> Extracted {
        let (mut context, traceparent_error, tracestate_error) = match extract_parts(extractor) {
            Ok(found) => {
                let full = found
                    .full_tracestate
                    .map(|header| FullTracestate::new(&found.remote, header));
                let context = cx.with_remote_span_context(found.remote);
                let context = match full {
                    Some(full) => context.with_value(full),
                    None => context,
                };
                (context, None, found.tracestate_error)
            }
            Err(TraceparentError::Missing) => (cx.clone(), None, None),
            Err(error) => (cx.clone(), Some(error), None),
        };
        if self.baggage
            && let Some(value) = extractor.get(BAGGAGE)
        {
            let entries = baggage::decode(value);
            if !entries.is_empty() {
                context = context.with_baggage(entries);
            }
        }
        Extracted {
            context,
            traceparent_error,
            tracestate_error,
        }
    }
}

fn field_names(baggage: bool) -> &'static [String] {
    static FIELDS: OnceLock<[String; 3]> = OnceLock::new();
    let fields = FIELDS.get_or_init(|| {
        [
            TRACEPARENT.to_owned(),
            TRACESTATE.to_owned(),
            BAGGAGE.to_owned(),
        ]
    });
    if baggage { &fields[..] } else { &fields[..2] }
}

impl W3CPropagator {
    /// Injects `span_context` and, when baggage is on, the baggage of `baggage_from`, without
    /// building a context first: the fast path of the traced clients. `baggage_from` also
    /// holds the whole `tracestate` of an extracted context whose SDK `TraceState` lacks
    /// members; it is written while `span_context` carries that state unmodified.
    pub(crate) fn inject_parts(
        &self,
        span_context: &SpanContext,
        baggage_from: &Context,
        injector: &mut dyn Injector,
    ) {
        if span_context.is_valid() {
            injector.set(TRACEPARENT, format_traceparent(span_context));
            // Always set, empty when there is none: the carrier of a forwarded message must not
            // keep the upstream `tracestate` next to the new `traceparent`.
            injector.set(
                TRACESTATE,
                sdk_state::header_for(span_context, baggage_from),
            );
        }
        if self.baggage {
            injector.set(BAGGAGE, baggage::encode(baggage_from).unwrap_or_default());
        }
    }
}

impl TextMapPropagator for W3CPropagator {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        let span = cx.span();
        self.inject_parts(span.span_context(), cx, injector);
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        self.extract_checked(cx, extractor).context
    }

    fn fields(&self) -> FieldIter<'_> {
        FieldIter::new(field_names(self.baggage))
    }
}
