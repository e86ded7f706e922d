//! MQTT 5 request/response (section 4.10) end to end with mosquitto: a requester (`v5`
//! `TracedClient`) publishes a request with a Response Topic and Correlation Data; a responder
//! (`v5::TracedSubscriber`) answers from its handler, through `client()`, on the response topic
//! with the same Correlation Data.
//!
//! - `messaging.message.conversation_id` (semconv: "the conversation ID identifying the
//!   conversation to which the message belongs ... Sometimes called Correlation ID") is on the
//!   request's publish span, the responder's receive and process spans and the reply's publish
//!   span, and on the requester's receive span of the reply: UTF-8 text as it is, other bytes
//!   as lowercase hex, at most 128 bytes (Correlation Data is binary, section 3.3.2.3.6).
//! - The reply's publish span is a child of the responder's `process` span, so the reply
//!   continues the request's trace.
//! - The requester's receive span of each reply links to the request's publish span.
//! - Every span has each attribute key once.

mod common;

use bytes::Bytes;
use common::telemetry::{
    Telemetry, assert_success, assert_unique_attribute_keys, destination, string_attribute,
};
use common::traced::{DEADLINE, wait_until};
use common::{Broker, unique_client_id};
use opentelemetry::trace::{SpanId, SpanKind};
use opentelemetry_sdk::trace::SpanData;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::{Event, MqttOptions};
use rumqttc_opentelemetry::v5::{Message, TracedClient, TracedSubscriber};
use tokio::sync::mpsc;
use tokio::time::timeout;

const REQUESTS: &str = "services/clock/get";
/// A request with this payload is answered in two replies.
const TWO_PARTS: &str = "two parts";

/// rumqttc reads packets of at most 10 KiB by default; a request carries up to 64 KiB of
/// Correlation Data here (Maximum Packet Size, section 3.1.2.11.4).
fn options(broker: &Broker, prefix: &str) -> MqttOptions {
    let mut options = MqttOptions::new(unique_client_id(prefix), broker.host(), broker.port());
    options.set_max_packet_size(Some(256 * 1024));
    options
}

/// A responder: answers every request on [`REQUESTS`] on its response topic, with its
/// Correlation Data, from inside the handler.
async fn responder(broker: &Broker, telemetry: &Telemetry) -> TracedSubscriber {
    let options = options(broker, "responder");
    let builder =
        TracedSubscriber::builder_with_instrumentation(options, 10, telemetry.instrumentation());
    let client = builder.client().clone();
    let subscriber = builder
        .route(REQUESTS, QoS::AtLeastOnce, move |message: Message| {
            let client = client.clone();
            async move {
                let properties = message.properties().cloned().unwrap_or_default();
                let Some(response_topic) = properties.response_topic else {
                    return Ok(());
                };
                let parts = if message.payload() == TWO_PARTS { 2 } else { 1 };
                for part in 0..parts {
                    let reply = PublishProperties {
                        correlation_data: properties.correlation_data.clone(),
                        ..PublishProperties::default()
                    };
                    client
                        .publish_with_properties(
                            response_topic.clone(),
                            QoS::AtLeastOnce,
                            false,
                            format!("reply {part}"),
                            reply,
                        )
                        .await?;
                }
                Ok(())
            }
        })
        .expect("a valid filter")
        .start();
    subscriber.subscribed().await.expect("subscribed");
    subscriber
}

/// A requester subscribed to its response topic; its event loop runs in a task that hands
/// out the replies.
struct Requester {
    client: TracedClient,
    id: String,
    response_topic: String,
    replies: mpsc::UnboundedReceiver<Bytes>,
}

async fn requester(broker: &Broker, telemetry: &Telemetry) -> Requester {
    let options = options(broker, "requester");
    let id = options.client_id();
    let response_topic = format!("replies/{id}");
    let (client, mut eventloop) =
        TracedClient::with_instrumentation(options, 10, telemetry.instrumentation());
    client
        .subscribe(response_topic.clone(), QoS::AtLeastOnce)
        .await
        .expect("queued");
    let (tx, mut replies) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(event) = eventloop.poll().await {
            let item = match event {
                Event::Incoming(Packet::SubAck(_)) => Bytes::new(),
                Event::Incoming(Packet::Publish(publish)) => publish.payload,
                _ => continue,
            };
            if tx.send(item).is_err() {
                return;
            }
        }
    });
    // The SUBACK: replies cannot be missed.
    let suback = timeout(DEADLINE, replies.recv()).await;
    assert!(matches!(suback, Ok(Some(empty)) if empty.is_empty()));
    Requester {
        client,
        id,
        response_topic,
        replies,
    }
}

impl Requester {
    /// Sends a request with `correlation_data` and waits for `replies` replies.
    async fn request(&mut self, payload: &str, correlation_data: Bytes, replies: usize) {
        let properties = PublishProperties {
            response_topic: Some(self.response_topic.clone()),
            correlation_data: Some(correlation_data),
            ..PublishProperties::default()
        };
        self.client
            .publish_confirmed(
                REQUESTS,
                QoS::AtLeastOnce,
                false,
                payload.to_owned(),
                Some(properties),
            )
            .await
            .expect("the request is acknowledged");
        for n in 0..replies {
            let reply = timeout(DEADLINE, self.replies.recv()).await;
            assert!(
                matches!(&reply, Ok(Some(payload)) if payload.starts_with(b"reply")),
                "reply {n} to {payload:?}: {reply:?}"
            );
        }
    }
}

/// The spans of `kind` on `topic` by `client_id`.
fn spans(all: &[SpanData], kind: SpanKind, topic: &str, client_id: Option<&str>) -> Vec<SpanData> {
    all.iter()
        .filter(|span| span.span_kind == kind && destination(span).as_deref() == Some(topic))
        .filter(|span| {
            client_id.is_none_or(|id| {
                string_attribute(span, "messaging.client.id").as_deref() == Some(id)
            })
        })
        .cloned()
        .collect()
}

fn conversation_id(span: &SpanData) -> Option<String> {
    string_attribute(span, "messaging.message.conversation_id")
}

fn links(span: &SpanData) -> Vec<SpanId> {
    span.links
        .iter()
        .map(|link| link.span_context.span_id())
        .collect()
}

/// One request answered in two parts: the conversation is one trace, from the requester's
/// publish through the responder's receive and process spans and its two replies to the
/// requester's receive spans, each carrying the conversation id; each reply is a child of the
/// process span and links back to the request.
#[tokio::test(flavor = "multi_thread")]
async fn a_reply_continues_the_requests_trace_and_links_back_to_it() {
    let broker = Broker::start();
    let telemetry = Telemetry::new();
    let responder = responder(&broker, &telemetry).await;
    let mut requester = requester(&broker, &telemetry).await;
    requester
        .request(TWO_PARTS, Bytes::from_static(b"req-7f3c"), 2)
        .await;
    let reply_topic = requester.response_topic.clone();
    // The process span and the replies' publish spans may end after the replies are received.
    wait_until("the seven spans of the conversation", || {
        let all = telemetry.spans();
        spans(&all, SpanKind::Client, &reply_topic, None).len() == 2
            && all
                .iter()
                .filter(|span| conversation_id(span).is_some())
                .count()
                == 7
    })
    .await;
    let all = telemetry.spans();
    let request = spans(&all, SpanKind::Producer, REQUESTS, None);
    let received = spans(&all, SpanKind::Client, REQUESTS, None);
    let processed = spans(&all, SpanKind::Consumer, REQUESTS, None);
    let replies = spans(&all, SpanKind::Producer, &reply_topic, None);
    let answers = spans(&all, SpanKind::Client, &reply_topic, Some(&requester.id));
    assert_eq!(
        [
            request.len(),
            received.len(),
            processed.len(),
            replies.len(),
            answers.len()
        ],
        [1, 1, 1, 2, 2]
    );
    let (request, process) = (&request[0], &processed[0]);
    for span in [request, &received[0], process]
        .into_iter()
        .chain(&replies)
        .chain(&answers)
    {
        assert_eq!(
            conversation_id(span).as_deref(),
            Some("req-7f3c"),
            "{span:#?}"
        );
        assert_eq!(
            span.span_context.trace_id(),
            request.span_context.trace_id()
        );
        assert_success(span);
    }
    assert_eq!(process.parent_span_id, request.span_context.span_id());
    for reply in &replies {
        assert_eq!(
            reply.parent_span_id,
            process.span_context.span_id(),
            "a reply from the handler is a child of its process span"
        );
    }
    for answer in &answers {
        assert!(
            replies
                .iter()
                .any(|reply| reply.span_context.span_id() == answer.parent_span_id),
            "parent: the reply's publish span (ParentMode::CreationContext)"
        );
        assert_eq!(links(answer), [request.span_context.span_id()]);
    }
    // The responder's receive span of the request is not a reply to anything of its own.
    assert!(received[0].links.is_empty());
    assert_unique_attribute_keys(&all);
    responder.shutdown().await;
}

/// Correlation Data is bytes (section 3.3.2.3.6): not UTF-8, it is recorded as lowercase hex;
/// 65,535 bytes of it (the most a Binary Data field holds) are cut to 128 bytes of attribute,
/// as text or as hex. A request whose Correlation Data is longer than 1,024 bytes is not
/// remembered, so its reply has no link; nothing fails.
#[tokio::test(flavor = "multi_thread")]
async fn conversation_ids_of_binary_and_oversized_correlation_data_are_bounded() {
    let broker = Broker::start();
    let telemetry = Telemetry::new();
    let responder = responder(&broker, &telemetry).await;
    let mut requester = requester(&broker, &telemetry).await;
    let cases: [(&str, Bytes, String, bool); 3] = [
        (
            "binary",
            Bytes::from_static(&[0x00, 0xff, 0x10, 0x80]),
            "00ff1080".to_owned(),
            true,
        ),
        (
            "long text",
            Bytes::from(vec![b'x'; 65_535]),
            "x".repeat(128),
            false,
        ),
        (
            "long binary",
            Bytes::from(vec![0xfe; 65_535]),
            "fe".repeat(64),
            false,
        ),
    ];
    for (payload, correlation, _, _) in &cases {
        requester.request(payload, correlation.clone(), 1).await;
    }
    let reply_topic = requester.response_topic.clone();
    // Five spans per exchange; the responder's process span and the reply's publish span may
    // end after the requester has received the reply.
    wait_until("every span of the three exchanges", || {
        let all = telemetry.spans();
        let conversation = all.iter().filter(|span| conversation_id(span).is_some());
        spans(&all, SpanKind::Client, &reply_topic, None).len() == 3 && conversation.count() == 15
    })
    .await;
    let all = telemetry.spans();
    let requests = spans(&all, SpanKind::Producer, REQUESTS, None);
    let answers = spans(&all, SpanKind::Client, &reply_topic, Some(&requester.id));
    for (payload, _, expected, linked) in &cases {
        let of = |list: &[SpanData]| -> Vec<SpanData> {
            list.iter()
                .filter(|span| conversation_id(span).as_deref() == Some(expected))
                .cloned()
                .collect()
        };
        let mine: Vec<SpanData> = of(&all);
        // Request publish, responder receive and process, reply publish, requester receive.
        assert_eq!(mine.len(), 5, "{payload}");
        let request = of(&requests);
        let answer = of(&answers);
        assert_eq!((request.len(), answer.len()), (1, 1), "{payload}");
        let want: Vec<SpanId> = if *linked {
            vec![request[0].span_context.span_id()]
        } else {
            Vec::new()
        };
        assert_eq!(links(&answer[0]), want, "{payload}");
    }
    for span in &all {
        if let Some(id) = conversation_id(span) {
            assert!(id.len() <= 128, "{}", id.len());
        }
    }
    assert_unique_attribute_keys(&all);
    responder.shutdown().await;
}
