//! Turning a parsed `tracestate` into the SDK's `TraceState` without losing members it refuses
//! (and [`parse_tracestate`], the public parser into that form), and choosing the `tracestate` to
//! write for a span context.
//!
//! opentelemetry 0.33's `TraceState::from_key_value` checks keys by a reading of Trace Context
//! Level 1 (`tenant@system`, at most one `@`), and off by one at that: it refuses a key with 14
//! characters after the `@` (`t` x 241, `@`, `v` x 14), which is valid under Level 1 and under the
//! current grammar. Nothing else in the SDK builds a `TraceState`, so such a member cannot live
//! in one. Instead of dropping the whole state (what the SDK's own propagator does), the state is
//! kept in two parts:
//!
//! - the SDK `TraceState` holds every member it accepts, in order; and
//! - only when it refused a member, the whole list, as a header, rides next to the remote span
//!   context as a context value ([`FullTracestate`]).
//!
//! The injector writes the whole list while the span being injected is in the same trace and
//! still has exactly the `TraceState` built here (the SDK's samplers copy the parent's): the
//! state came through unmodified, so it is forwarded unmodified. When an application or sampler
//! changed the `TraceState` through the SDK API, the SDK's state is written as it is.

use opentelemetry::Context;
use opentelemetry::trace::{SpanContext, TraceId, TraceState};

use super::tracestate::{Members, TracestateError, header_of};

/// A parsed `tracestate` in SDK form.
#[derive(Debug, Clone, Default)]
pub(crate) struct Built {
    /// Every member the SDK's `TraceState` accepts, in order.
    pub(crate) state: TraceState,
    /// The whole list, when `state` lacks a member.
    pub(crate) full: Option<String>,
}

/// Whether opentelemetry's `TraceState` accepts this member. The SDK itself is asked, so that
/// this follows its checks, whatever version of them is linked.
fn sdk_accepts(key: &str, value: &str) -> bool {
    TraceState::from_key_value([(key, value)]).is_ok()
}

/// Builds the SDK form of a parsed list: one `TraceState` when the SDK takes every member (the
/// common case: no allocation beyond the `TraceState`'s own), else the accepted members and the
/// whole list.
pub(crate) fn build(members: &Members<'_>) -> Built {
    if members.is_empty() {
        return Built::default();
    }
    match TraceState::from_key_value(members.iter()) {
        Ok(state) => Built { state, full: None },
        Err(_) => {
            let accepted = members
                .iter()
                .filter(|(key, value)| sdk_accepts(key, value));
            Built {
                state: TraceState::from_key_value(accepted).unwrap_or_default(),
                full: Some(members.header()),
            }
        }
    }
}

/// The whole `tracestate` of an extracted remote span context whose SDK `TraceState` lacks
/// members, stored in the extracted [`Context`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FullTracestate {
    trace_id: TraceId,
    state: TraceState,
    header: String,
}

impl FullTracestate {
    /// The whole list `header` of the remote span context `remote`, whose `TraceState` holds the
    /// members the SDK accepted.
    pub(crate) fn new(remote: &SpanContext, header: String) -> Self {
        Self {
            trace_id: remote.trace_id(),
            state: remote.trace_state().clone(),
            header,
        }
    }
}

/// The `tracestate` to write for `span_context`, which is injected from `cx`: the whole
/// extracted list when `cx` carries one for this trace and the span's `TraceState` is the one
/// built from it, else the span's own `TraceState` (truncated by the spec's rule if it is too
/// long to propagate). Empty when there is none.
pub(crate) fn header_for(span_context: &SpanContext, cx: &Context) -> String {
    if let Some(full) = cx.get::<FullTracestate>()
        && full.trace_id == span_context.trace_id()
        && full.state == *span_context.trace_state()
    {
        return full.header.clone();
    }
    header_of(span_context.trace_state())
}

/// Parses a `tracestate` value by the rules of the current W3C Trace Context text: at most 32
/// list-members, empty members (`a=1,,b=2`) and optional white space around members allowed,
/// keys by the current grammar, valid values; a duplicated key keeps its left-most member; a list
/// longer than the carrier limit is truncated by whole entries. Several fields are parsed as one
/// list by the extractors of this crate ([`super::extract_span_context`]).
///
/// The SDK's `TraceState` (opentelemetry 0.33) refuses some keys the grammar allows (two `@`,
/// more than 13 characters after an `@`, a character after `@` that is not a letter or digit):
/// those members are left out of the state returned here. [`super::W3CPropagator`] keeps them,
/// by carrying the whole list next to the context it extracts.
///
/// ```
/// use rumqttc_opentelemetry::propagation::parse_tracestate;
///
/// let state = parse_tracestate("rojo=00f067aa0ba902b7, congo=t61rcWkgMzE").unwrap();
/// assert_eq!(state.get("congo"), Some("t61rcWkgMzE"));
/// assert_eq!(parse_tracestate("a=1,a=2").unwrap().header(), "a=1");
/// assert!(parse_tracestate("Upper=1").is_err());
/// ```
pub fn parse_tracestate(value: &str) -> Result<TraceState, TracestateError> {
    let mut members = Members::parse(&[value])?;
    members.truncate_for_propagation();
    Ok(build(&members).state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanId, TraceContextExt, TraceFlags};

    use crate::propagation::carrier::MAX_PROPAGATION_VALUE_LEN;

    /// The key of the W3C suite's `test_tracestate_key_length_limit` that is valid under both
    /// grammars: Level 1 allows 241 characters before the `@` and 14 after it (section "Key" of
    /// Level 1), the current text allows any 256 `keychar`s.
    fn key_241_at_14() -> String {
        format!("{}@{}", "t".repeat(241), "v".repeat(14))
    }

    /// Reproduces the off-by-one of opentelemetry 0.33's `TraceState` key check: 14 characters
    /// after the `@` are refused, 13 accepted. When this test fails, the SDK has been fixed, and
    /// the `full` path above is needed only for keys of the current grammar that Level 1 did not
    /// allow (two `@`, more than 14 characters after one).
    #[test]
    fn sdk_trace_state_refuses_a_vendor_key_of_14_characters() {
        let fourteen = key_241_at_14();
        assert_eq!(fourteen.len(), 256);
        assert!(TraceState::from_key_value([(fourteen.as_str(), "1")]).is_err());
        assert!(TraceState::NONE.insert(fourteen.clone(), "1").is_err());
        assert!(format!("{fourteen}=1").parse::<TraceState>().is_err());
        let thirteen = format!("{}@{}", "t".repeat(242), "v".repeat(13));
        assert!(TraceState::from_key_value([(thirteen.as_str(), "1")]).is_ok());
        let short = format!("t@{}", "v".repeat(14));
        assert!(TraceState::from_key_value([(short.as_str(), "1")]).is_err());
    }

    fn members(fields: &[&'static str]) -> Members<'static> {
        Members::parse(fields).unwrap()
    }

    #[test]
    fn a_state_the_sdk_accepts_is_one_trace_state() {
        let built = build(&members(&["rojo=1,congo=2"]));
        assert_eq!(built.state.header(), "rojo=1,congo=2");
        assert_eq!(built.full, None);
        let built = build(&members(&[""]));
        assert_eq!(built.state, TraceState::NONE);
    }

    /// Spec section "Key" (current grammar): `foo@@bar`, `foo@bar@baz` and the 241@14 key are
    /// valid; the SDK refuses them, so they are kept in the whole list, and every member the SDK
    /// accepts stays in its `TraceState`.
    #[test]
    fn members_the_sdk_refuses_are_kept_in_the_whole_list() {
        let key = key_241_at_14();
        let fields = ["foo=1".to_owned(), format!("{key}=1")];
        let fields: Vec<&str> = fields.iter().map(String::as_str).collect();
        let built = build(&Members::parse(&fields).unwrap());
        assert_eq!(built.state.header(), "foo=1");
        assert_eq!(
            built.full.as_deref(),
            Some(format!("foo=1,{key}=1").as_str())
        );

        let built = build(&members(&["foo@@bar=1,bar=2,foo@bar@baz=3"]));
        assert_eq!(built.state.header(), "bar=2");
        assert_eq!(
            built.full.as_deref(),
            Some("foo@@bar=1,bar=2,foo@bar@baz=3")
        );
    }

    fn remote(trace_id: u128, state: TraceState) -> SpanContext {
        SpanContext::new(
            TraceId::from(trace_id),
            SpanId::from(1),
            TraceFlags::SAMPLED,
            true,
            state,
        )
    }

    #[test]
    fn the_whole_list_is_written_while_the_state_is_unmodified() {
        let built = build(&members(&["foo@@bar=1,bar=2"]));
        let parent = remote(7, built.state.clone());
        let cx = Context::new()
            .with_remote_span_context(parent.clone())
            .with_value(FullTracestate::new(&parent, built.full.clone().unwrap()));
        // A child span: same trace, same (copied) state, another span id.
        let child = SpanContext::new(
            TraceId::from(7),
            SpanId::from(2),
            TraceFlags::SAMPLED,
            false,
            built.state.clone(),
        );
        assert_eq!(header_for(&child, &cx), "foo@@bar=1,bar=2");
        // A sampler added a member: the SDK's state is what the application wants sent.
        let modified = remote(7, built.state.insert("mine", "x").unwrap());
        assert_eq!(header_for(&modified, &cx), "mine=x,bar=2");
        // Another trace: the list belongs to the extracted one only.
        assert_eq!(header_for(&remote(8, built.state.clone()), &cx), "bar=2");
        // No list in the context.
        assert_eq!(header_for(&child, &Context::new()), "bar=2");
        assert_eq!(
            header_for(&remote(7, TraceState::NONE), &Context::new()),
            ""
        );
    }

    /// The same rule keeps a valid 32-member list of 454-character entries within the carrier
    /// limit instead of losing it to the injector.
    #[test]
    fn a_list_too_long_to_propagate_is_truncated_not_dropped() {
        let entries: Vec<String> = (0..32)
            .map(|i| format!("k{i:02}{}={}", "x".repeat(200), "v".repeat(250)))
            .collect();
        let state = parse_tracestate(&entries.join(",")).unwrap();
        let header = state.header();
        assert!(
            header.len() <= MAX_PROPAGATION_VALUE_LEN,
            "{}",
            header.len()
        );
        let fit = (MAX_PROPAGATION_VALUE_LEN + 1) / (entries[0].len() + 1);
        assert_eq!(header, entries[..fit].join(","));
    }
}
