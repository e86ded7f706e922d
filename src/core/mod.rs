//! The traced client and event loop, written once over [`Protocol`], the trait that
//! `crate::v4` and `crate::v5` implement for rumqttc's two protocol versions.
//!
//! - `protocol`: the trait, and the version-independent views of events, requests and
//!   publishes it hands out.
//! - `client`, `event_loop`: the generic [`Client`] and [`EventLoop`] that the public
//!   `TracedClient` / `TracedEventLoop` of each version wrap.
//! - `shared`: [`Core`], what a client and its event loop share: `telemetry` (settings,
//!   connection attributes, subscriptions, cached metric attributes) and `tracking` (the open
//!   publish spans, in the order of rumqttc's request channel).
//! - `publish`: one publish span's life (start, inject, count, finish); `correlation`: the table
//!   that matches rumqttc's events to open publishes.
//! - `consume`: receive and process spans, and the [`Delivery`] of a message; `settle`: the
//!   settle span of a manual acknowledgement, and the messages that wait for one.
//! - `aliases`: MQTT 5 Topic Alias mappings, sent and received; `conversations`: MQTT 5
//!   requests waiting for replies, which the receive spans of the replies link to.
//! - `recovery`: what the event loop does around reconnects; `connection`: connection health.
//! - `blocking`: the blocking adapter the `TracedSyncClient` / `TracedConnection` of each
//!   version wrap: requests run to their end on the calling thread, the event loop driven by a
//!   runtime of the connection's own.

mod aliases;
mod blocking;
mod client;
mod connection;
mod consume;
mod conversations;
mod correlation;
mod event_loop;
#[cfg(test)]
mod event_loop_tests;
#[cfg(test)]
mod fake;
pub(crate) mod logs;
mod protocol;
mod publish;
mod recovery;
mod settle;
mod shared;
mod telemetry;
mod tracking;

#[cfg(test)]
pub(crate) use aliases::TopicAliases;
pub(crate) use aliases::{Address, Outbound, Refusal};
pub(crate) use blocking::{Connection, Iter, Wait, wait};
pub(crate) use client::Client;
pub(crate) use connection::{feature_error_type, io_error_type};
pub use consume::Delivery;
pub(crate) use consume::{Carrier, Processing, Reception};
pub(crate) use correlation::{Failure, Signal};
pub(crate) use event_loop::EventLoop;
#[cfg(test)]
pub(crate) use fake::recording;
pub(crate) use protocol::{Attempt, EventView, Protocol, PublishRequest, PublishView, RequestKind};
pub(crate) use publish::OpenPublish;
pub(crate) use settle::SettleParent;
pub(crate) use shared::Core;
pub(crate) use telemetry::{MetricSlots, Telemetry};
