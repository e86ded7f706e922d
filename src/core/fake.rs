//! A scripted fake of [`Protocol`] for unit tests of the generic event loop: each poll runs the
//! next step of a script that plays rumqttc's part (writes a request from `pending`, parks a
//! collision, acknowledges, breaks the connection and moves its channel into `pending` as
//! `clean()` does), so hold / feed / session loss / resend can be tested without a broker.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use opentelemetry::Context;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use rumqttc::Outgoing;

use super::consume::{Carrier, Delivery};
use super::correlation::Signal;
use super::protocol::{Attempt, EventView, Protocol, PublishRequest, PublishView, RequestKind};
use super::publish::OpenPublish;
use super::telemetry::Telemetry;
use crate::instrumentation::Instrumentation;
use crate::semconv::{ConnectionAttributes, MqttQoS, ProtocolVersion};

/// An instrumentation whose spans go to the returned in-memory exporter, one by one as they
/// end (keep the provider alive as long as spans are wanted).
pub(crate) fn recording() -> (Instrumentation, InMemorySpanExporter, SdkTracerProvider) {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let instrumentation = Instrumentation::builder()
        .tracer_provider(&provider)
        .build();
    (instrumentation, exporter, provider)
}

/// The script step of a CONNACK.
pub(crate) fn connack(session_present: bool) -> Result<FakeEvent, FakeError> {
    Ok(FakeEvent::ConnAck { session_present })
}

/// A fake client and its event loop after a CONNACK, with the exporter of their spans.
pub(crate) struct Setup {
    pub(crate) client: super::client::Client<Fake>,
    pub(crate) eventloop: super::event_loop::EventLoop<Fake>,
    pub(crate) exporter: InMemorySpanExporter,
    pub(crate) _provider: SdkTracerProvider,
}

/// A fake connection made with `options` and polled to its CONNACK (`session_present`), its
/// spans recorded.
pub(crate) async fn connected(options: FakeOptions, session_present: bool) -> Setup {
    let (instrumentation, exporter, provider) = recording();
    let (client, mut eventloop) = super::client::Client::<Fake>::new(options, 10, &instrumentation);
    eventloop
        .inner_mut()
        .then(move |_| connack(session_present));
    assert!(eventloop.poll().await.is_ok());
    Setup {
        client,
        eventloop,
        exporter,
        _provider: provider,
    }
}

/// The fake protocol.
#[derive(Debug)]
pub(crate) struct Fake;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FakePublish {
    pub(crate) topic: String,
    pub(crate) qos: MqttQoS,
    pub(crate) pkid: u16,
    pub(crate) dup: bool,
    pub(crate) payload: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FakeRequest {
    Publish(FakePublish),
    PubRel(u16),
    PubAck(u16),
    Subscribe(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FakeEvent {
    ConnAck { session_present: bool },
    Outgoing(Outgoing),
    PubAck(u16),
    PubRec(u16),
    PubComp(u16),
    Publish(FakePublish),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FakeError(pub(crate) &'static str);

impl std::fmt::Display for FakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// rumqttc's request channel.
pub(crate) type Channel = Arc<Mutex<VecDeque<FakeRequest>>>;

#[derive(Debug, Clone)]
pub(crate) struct FakeClient {
    channel: Channel,
}

impl FakeClient {
    fn push(&self, request: FakeRequest) -> Result<(), FakeError> {
        self.channel
            .lock()
            .map_err(|_| FakeError("poisoned"))?
            .push_back(request);
        Ok(())
    }
}

/// One poll: what rumqttc does in it.
pub(crate) type Step = Box<dyn FnOnce(&mut FakeEventLoop) -> Result<FakeEvent, FakeError> + Send>;

/// The fake's event loop: rumqttc's state that the traced event loop reads, and the script.
pub(crate) struct FakeEventLoop {
    pub(crate) channel: Channel,
    pub(crate) pending: VecDeque<FakeRequest>,
    pub(crate) collision: Option<FakePublish>,
    pub(crate) inflight: u16,
    pub(crate) limit: u16,
    pub(crate) events: VecDeque<FakeEvent>,
    script: VecDeque<Step>,
    next_pkid: u16,
}

impl FakeEventLoop {
    /// Adds a step to the script.
    pub(crate) fn then(
        &mut self,
        step: impl FnOnce(&mut FakeEventLoop) -> Result<FakeEvent, FakeError> + Send + 'static,
    ) -> &mut Self {
        self.script.push_back(Box::new(step));
        self
    }

    /// What rumqttc sends next: `pending` first, then the channel.
    fn next_request(&mut self) -> Option<FakeRequest> {
        self.pending.pop_front().or_else(|| {
            self.channel
                .lock()
                .ok()
                .and_then(|mut channel| channel.pop_front())
        })
    }

    /// rumqttc writes its next request, a publish: a fresh packet id unless it has one.
    pub(crate) fn write(&mut self) -> Result<FakeEvent, FakeError> {
        match self.next_request() {
            Some(FakeRequest::Publish(mut publish)) => {
                if publish.qos != MqttQoS::AtMostOnce && publish.pkid == 0 {
                    self.next_pkid += 1;
                    publish.pkid = self.next_pkid;
                }
                if publish.pkid != 0 {
                    self.inflight += 1;
                }
                Ok(FakeEvent::Outgoing(Outgoing::Publish(publish.pkid)))
            }
            other => panic!("the script expected a publish to write, found {other:?}"),
        }
    }

    /// The broker acknowledges `pkid` (QoS 1).
    pub(crate) fn puback(&mut self, pkid: u16) -> Result<FakeEvent, FakeError> {
        self.inflight -= 1;
        Ok(FakeEvent::PubAck(pkid))
    }

    /// The connection breaks: like rumqttc's `clean()`, the requests still in the channel move
    /// into `pending` (written publishes are the script's to put there).
    pub(crate) fn break_connection(&mut self) -> Result<FakeEvent, FakeError> {
        if let Ok(mut channel) = self.channel.lock() {
            self.pending.extend(channel.drain(..));
        }
        self.inflight = 0;
        Err(FakeError("connection_reset"))
    }

    /// The requests in `pending`, as (kind, payload) for assertions.
    pub(crate) fn pending_payloads(&self) -> Vec<String> {
        self.pending.iter().map(describe).collect()
    }
}

/// A short description of a request: `payload@pkid` for a publish.
pub(crate) fn describe(request: &FakeRequest) -> String {
    match request {
        FakeRequest::Publish(publish) => format!(
            "{}@{}{}",
            String::from_utf8_lossy(&publish.payload),
            publish.pkid,
            if publish.dup { "d" } else { "" }
        ),
        other => format!("{other:?}"),
    }
}

/// A written publish as rumqttc keeps it for replay.
pub(crate) fn written(payload: &'static str, pkid: u16) -> FakeRequest {
    FakeRequest::Publish(FakePublish {
        topic: "t".to_owned(),
        qos: MqttQoS::AtLeastOnce,
        pkid,
        dup: false,
        payload: Bytes::from_static(payload.as_bytes()),
    })
}

/// The options of a fake connection: its in-flight limit, and whether the application
/// acknowledges incoming messages itself.
pub(crate) struct FakeOptions {
    pub(crate) limit: u16,
    pub(crate) manual_acks: bool,
}

impl Protocol for Fake {
    type Options = FakeOptions;
    type AsyncClient = FakeClient;
    type EventLoop = FakeEventLoop;
    type Event = FakeEvent;
    type Request = FakeRequest;
    type Publish = FakePublish;
    type QoS = MqttQoS;
    type Filter = String;
    type Properties = ();
    type ConnectionError = FakeError;
    type ClientError = FakeError;

    const SUBSCRIPTION_IDS: bool = false;

    fn new_client(options: FakeOptions, _cap: usize) -> (FakeClient, FakeEventLoop) {
        let channel = Channel::default();
        let eventloop = FakeEventLoop {
            channel: Arc::clone(&channel),
            pending: VecDeque::new(),
            collision: None,
            inflight: 0,
            limit: options.limit,
            events: VecDeque::new(),
            script: VecDeque::new(),
            next_pkid: 0,
        };
        (FakeClient { channel }, eventloop)
    }

    fn connection(_options: &FakeOptions) -> ConnectionAttributes {
        ConnectionAttributes::new("fake", "broker.test", 1883, ProtocolVersion::V5)
    }

    fn enable_manual_acks(options: &mut FakeOptions) {
        options.manual_acks = true;
    }

    fn manual_acks(options: &FakeOptions) -> bool {
        options.manual_acks
    }

    /// A client that takes incoming Topic Aliases up to 10, as an MQTT 5 client may announce.
    fn incoming_alias_maximum(_options: &FakeOptions) -> u16 {
        10
    }

    /// A broker that takes Topic Aliases up to 5.
    fn topic_alias_maximum(event: &FakeEvent) -> Option<u16> {
        matches!(event, FakeEvent::ConnAck { .. }).then_some(5)
    }

    fn carry(_: &Telemetry, _: &mut OpenPublish, _: &Context, _: &mut PublishRequest<Self>) {}

    async fn send(client: &FakeClient, request: PublishRequest<Self>) -> Result<(), FakeError> {
        Self::try_send(client, request)
    }

    fn try_send(client: &FakeClient, request: PublishRequest<Self>) -> Result<(), FakeError> {
        client.push(FakeRequest::Publish(FakePublish {
            topic: request.topic,
            qos: request.qos,
            pkid: 0,
            dup: false,
            payload: request.payload,
        }))
    }

    fn refused(_request: PublishRequest<Self>, _attempt: Attempt) -> FakeError {
        FakeError("refused")
    }

    fn filter_path(filter: &String) -> &str {
        filter
    }

    async fn ack(client: &FakeClient, publish: &FakePublish) -> Result<(), FakeError> {
        Self::try_ack(client, publish)
    }

    fn try_ack(client: &FakeClient, publish: &FakePublish) -> Result<(), FakeError> {
        client.push(FakeRequest::PubAck(publish.pkid))
    }

    async fn subscribe(
        client: &FakeClient,
        filters: Vec<(String, MqttQoS)>,
        _id: Option<usize>,
    ) -> Result<(), FakeError> {
        for (filter, _) in filters {
            client.push(FakeRequest::Subscribe(filter))?;
        }
        Ok(())
    }

    async fn disconnect(_client: &FakeClient) -> Result<(), FakeError> {
        Ok(())
    }

    async fn poll(inner: &mut FakeEventLoop) -> Result<FakeEvent, FakeError> {
        match inner.script.pop_front() {
            Some(step) => step(inner),
            None => Err(FakeError("the script has ended")),
        }
    }

    fn pending(inner: &mut FakeEventLoop) -> &mut VecDeque<FakeRequest> {
        &mut inner.pending
    }

    fn collision(inner: &mut FakeEventLoop) -> &mut Option<FakePublish> {
        &mut inner.collision
    }

    fn inflight(inner: &FakeEventLoop) -> u16 {
        inner.inflight
    }

    fn inflight_limit(inner: &FakeEventLoop) -> u16 {
        inner.limit
    }

    fn queued_events(inner: &FakeEventLoop) -> &VecDeque<FakeEvent> {
        &inner.events
    }

    fn error_type(error: &FakeError) -> &'static str {
        error.0
    }

    fn requests_done(error: &FakeError) -> bool {
        error.0 == "requests_done"
    }

    fn event(event: &FakeEvent) -> EventView<'_> {
        match event {
            FakeEvent::ConnAck { session_present } => EventView::ConnAck {
                session_present: *session_present,
                receive_maximum: None,
                subscription_ids: false,
            },
            FakeEvent::Outgoing(outgoing) => EventView::Outgoing(outgoing),
            FakeEvent::PubAck(pkid) => EventView::Ack(Signal::PubAck(*pkid, None)),
            FakeEvent::PubRec(pkid) => EventView::Ack(Signal::PubRec(*pkid, None)),
            FakeEvent::PubComp(pkid) => EventView::Ack(Signal::PubComp(*pkid, None)),
            FakeEvent::Publish(_) => EventView::Publish,
        }
    }

    fn incoming_publish(event: &mut FakeEvent) -> Option<&mut FakePublish> {
        match event {
            FakeEvent::Publish(publish) => Some(publish),
            _ => None,
        }
    }

    fn into_incoming_publish(event: FakeEvent) -> Option<FakePublish> {
        match event {
            FakeEvent::Publish(publish) => Some(publish),
            _ => None,
        }
    }

    fn receive(telemetry: &Telemetry, publish: &mut FakePublish) -> Delivery {
        let carrier = Carrier {
            extractor: None,
            envelope_size: None,
            problem: None,
        };
        telemetry.receive(Self::view(publish).facts(), carrier)
    }

    fn request_kind(request: &FakeRequest) -> RequestKind {
        match request {
            FakeRequest::Publish(_) => RequestKind::Publish,
            FakeRequest::PubRel(_) => RequestKind::Release,
            FakeRequest::PubAck(_) => RequestKind::SessionBound,
            FakeRequest::Subscribe(_) => RequestKind::Other,
        }
    }

    fn publish_of(request: &FakeRequest) -> Option<&FakePublish> {
        match request {
            FakeRequest::Publish(publish) => Some(publish),
            _ => None,
        }
    }

    fn into_publish(request: FakeRequest) -> Result<FakePublish, FakeRequest> {
        match request {
            FakeRequest::Publish(publish) => Ok(publish),
            other => Err(other),
        }
    }

    fn publish_request(publish: FakePublish) -> FakeRequest {
        FakeRequest::Publish(publish)
    }

    fn view(publish: &FakePublish) -> PublishView<'_> {
        PublishView {
            topic: std::borrow::Cow::Borrowed(&publish.topic),
            qos: publish.qos,
            retain: false,
            dup: publish.dup,
            pkid: publish.pkid,
            payload: &publish.payload,
            correlation_data: None,
        }
    }

    fn set_packet(publish: &mut FakePublish, pkid: u16, dup: bool) {
        publish.pkid = pkid;
        publish.dup = dup;
    }

    fn subscription_ids(_publish: &FakePublish) -> &[usize] {
        &[]
    }
}
