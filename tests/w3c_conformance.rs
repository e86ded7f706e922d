//! The official W3C Trace Context test suite (`tests/w3c-trace-context`, upstream commit
//! acab820) against this crate's propagation, at Level 1 and Level 2, `STRICT_LEVEL=2`.
//!
//! The suite is a Python harness: it POSTs to a test service with `traceparent`/`tracestate`
//! headers and a JSON list of callbacks, and checks the headers of the callbacks the service
//! makes. The services here are Rust, on the crate's public propagation API:
//!
//! - through MQTT 5 user properties over mosquitto, as a new user would wire it: the service's
//!   HTTP side is a plain rumqttc v5 client that publishes each request with its headers as user
//!   properties (several `tracestate` headers stay several properties, in order); a
//!   `rumqttc_opentelemetry::v5::TracedSubscriber` receives it, and its handler makes the
//!   callbacks with the headers the crate's injector writes for the handler's context;
//! - directly, HTTP headers -> one of the crate's carriers (MQTT 5 user properties, MQTT 3.1.1
//!   envelope headers, JSON fields) -> `W3CPropagator` -> the carrier -> callback headers;
//! - for comparison, opentelemetry_sdk's own `TraceContextPropagator` on plain HTTP headers.
//!
//! Each callback is an outgoing HTTP request, so it gets a CLIENT span of its own, a child of
//! the context being continued, as an instrumented HTTP client makes (the suite asks for a new
//! parent-id per callback). The tracer records every span (`Sampler::AlwaysOn`): the SDK's
//! non-recording spans reset the trace flags to `00` (opentelemetry_sdk 0.33), which would
//! lose Level 2's `random-trace-id` flag on an unsampled trace before the crate's injector sees
//! it.
//!
//! Needs Python 3 with `aiohttp` (`scripts/test.sh` installs it); fails with a message saying so
//! when they are missing.

mod common;
#[path = "w3c_conformance/http.rs"]
mod http;
#[path = "w3c_conformance/suite.rs"]
mod suite;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::carriers::{Carrier, Fields};
use common::{Broker, unique_client_id};
use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanKind, TraceContextExt, Tracer, TracerProvider};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use rumqttc::v5::{AsyncClient, MqttOptions};
use rumqttc_opentelemetry::Instrumentation;
use rumqttc_opentelemetry::propagation::{TRACESTATE, UserPropertiesInjector, W3CPropagator};
use rumqttc_opentelemetry::v5::{Message, TracedSubscriber};
use suite::{Level, Verdict};
use tokio::sync::oneshot;

/// What opentelemetry_sdk 0.33's `TraceContextPropagator` passes on plain HTTP headers (Level 1
/// of 40, Level 2 of 41): the README's conformance line states these numbers.
const SDK_PASSES: (usize, usize) = (28, 28);

/// How long the MQTT 5 bridge waits for the handler to make the callbacks.
const HANDLER_DEADLINE: Duration = Duration::from_secs(4);

fn tracer() -> SdkTracer {
    SdkTracerProvider::builder()
        .with_sampler(Sampler::AlwaysOn)
        .build()
        .tracer("w3c-conformance")
}

/// HTTP names are case-insensitive, MQTT user property names and the crate's carriers are not:
/// the HTTP side hands them on in their canonical lowercase form (as HTTP/2 always does).
fn carrier_fields(headers: &[(String, String)]) -> Fields {
    headers
        .iter()
        .map(|(name, value)| (name.to_ascii_lowercase(), value.clone()))
        .collect()
}

/// A callback the harness asks for: where to POST, and the body to send.
struct Callback {
    url: String,
    body: String,
}

fn callbacks(body: &[u8]) -> Vec<Callback> {
    let actions: Vec<serde_json::Value> = serde_json::from_slice(body).unwrap_or_default();
    actions
        .iter()
        .filter_map(|action| {
            Some(Callback {
                url: action.get("url")?.as_str()?.to_owned(),
                body: action
                    .get("arguments")
                    .cloned()
                    .unwrap_or_else(|| serde_json::json!([]))
                    .to_string(),
            })
        })
        .collect()
}

/// Makes every callback in a CLIENT span of its own, a child of `parent`, with the headers
/// `inject` writes for that span's context.
async fn call_back(
    tracer: &SdkTracer,
    parent: &Context,
    body: &[u8],
    inject: impl Fn(&Context) -> Fields,
) -> http::Response {
    for callback in callbacks(body) {
        let span = tracer
            .span_builder("POST")
            .with_kind(SpanKind::Client)
            .start_with_context(tracer, parent);
        let cx = parent.with_span(span);
        let headers = inject(&cx);
        if let Err(error) = http::post(&callback.url, &headers, &callback.body).await {
            return http::Response::json(502, serde_json::json!(error.to_string()).to_string());
        }
        cx.span().end();
    }
    http::Response::json(200, "{}")
}

/// Plain HTTP headers for opentelemetry's propagator API, as HTTP frameworks hand them over:
/// names case-insensitive, `get` the first field of a name.
struct HttpHeaders<'a>(&'a [(String, String)]);

impl Extractor for HttpHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(key))
            .map(|(_, value)| value.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_str()).collect()
    }
}

/// Outgoing HTTP headers, exactly as a propagator sets them.
struct OutgoingHeaders(Fields);

impl Injector for OutgoingHeaders {
    fn set(&mut self, key: &str, value: String) {
        self.0.push((key.to_owned(), value));
    }
}

/// A service that continues the trace in process, through `Carrier` or the SDK's propagator.
#[derive(Debug, Clone, Copy)]
enum Direct {
    Crate(Carrier),
    Sdk,
}

async fn direct_service(how: Direct) -> http::Server {
    let tracer = tracer();
    http::Server::start(move |request| {
        let tracer = tracer.clone();
        async move {
            match how {
                Direct::Crate(carrier) => {
                    let extracted = carrier.extract(&carrier_fields(&request.headers));
                    call_back(&tracer, &extracted.context, &request.body, |cx| {
                        carrier.inject(cx)
                    })
                    .await
                }
                Direct::Sdk => {
                    let sdk = TraceContextPropagator::new();
                    let parent = sdk.extract(&HttpHeaders(&request.headers));
                    call_back(&tracer, &parent, &request.body, |cx| {
                        let mut headers = OutgoingHeaders(Vec::new());
                        sdk.inject_context(cx, &mut headers);
                        headers.0
                    })
                    .await
                }
            }
        }
    })
    .await
}

/// An HTTP header value as an MQTT user property value. mosquitto refuses a TAB (a control
/// character) in an MQTT string, so HTTP white space becomes spaces where that means the same:
/// around the members of a `tracestate` list, where SP and HTAB are both optional white space
/// (the value's own ends are already trimmed by HTTP). A TAB anywhere else in a `tracestate` or
/// `traceparent` is inside a member or field, where it makes the value invalid: it becomes
/// U+FFFD, which is just as invalid there (not printable ASCII), so the receiver still rejects
/// it. In other headers, which nothing here reads, a TAB becomes a space.
fn mqtt_value(name: &str, value: &str) -> String {
    let is_ows = |c: char| c == ' ' || c == '\t';
    match name {
        TRACESTATE => value
            .split(',')
            .map(|member| {
                let trimmed = member.trim_matches(is_ows);
                let start = member.len() - member.trim_start_matches(is_ows).len();
                let end = start + trimmed.len();
                format!(
                    "{}{}{}",
                    " ".repeat(start),
                    trimmed.replace('\t', "\u{fffd}"),
                    " ".repeat(member.len() - end)
                )
            })
            .collect::<Vec<_>>()
            .join(","),
        "traceparent" => value.replace('\t', "\u{fffd}"),
        _ => value.replace('\t', " "),
    }
}

/// Requests waiting for the handler, by message number.
type Waiting = Arc<Mutex<HashMap<u64, oneshot::Sender<http::Response>>>>;

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The MQTT 5 service: an HTTP front that publishes, a traced subscriber that calls back.
struct Mqtt5Service {
    http: http::Server,
    subscriber: TracedSubscriber,
    _publisher_connection: AbortOnDrop,
}

async fn mqtt5_service(broker: &Broker) -> Mqtt5Service {
    let waiting: Waiting = Arc::default();
    let prefix = unique_client_id("w3c");

    // The subscriber: the crate's TracedSubscriber, its handler continues the message's trace.
    let provider = SdkTracerProvider::builder()
        .with_sampler(Sampler::AlwaysOn)
        .build();
    let instrumentation = Instrumentation::builder()
        .tracer_provider(&provider)
        .build();
    let tracer = provider.tracer("w3c-conformance-handler");
    let handler_waiting = Arc::clone(&waiting);
    let subscriber = TracedSubscriber::builder_with_instrumentation(
        MqttOptions::new(unique_client_id("w3c-sub"), broker.host(), broker.port()),
        64,
        instrumentation,
    )
    .route(
        &format!("{prefix}/+"),
        QoS::AtLeastOnce,
        move |message: Message| {
            let tracer = tracer.clone();
            let waiting = Arc::clone(&handler_waiting);
            async move {
                let handler_context = Context::current();
                let response = call_back(&tracer, &handler_context, message.payload(), |cx| {
                    let mut properties = Vec::new();
                    W3CPropagator::new()
                        .inject_context(cx, &mut UserPropertiesInjector::new(&mut properties));
                    properties
                })
                .await;
                let number = message
                    .topic()
                    .rsplit('/')
                    .next()
                    .and_then(|n| n.parse().ok());
                let sender = number.and_then(|n: u64| waiting.lock().ok()?.remove(&n));
                if let Some(sender) = sender {
                    let _ = sender.send(response);
                }
                Ok(())
            }
        },
    )
    .expect("a valid filter")
    .start();
    tokio::time::timeout(Duration::from_secs(30), subscriber.subscribed())
        .await
        .expect("subscribed within 30 s")
        .expect("the broker accepts the subscription");

    // The HTTP front: a plain rumqttc v5 client, the headers as user properties.
    let (client, mut eventloop) = AsyncClient::new(
        MqttOptions::new(unique_client_id("w3c-bridge"), broker.host(), broker.port()),
        64,
    );
    let driver = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let counter = Arc::new(AtomicU64::new(0));
    let http = http::Server::start(move |request| {
        let (client, waiting, counter) =
            (client.clone(), Arc::clone(&waiting), Arc::clone(&counter));
        let topic_prefix = prefix.clone();
        async move {
            let number = counter.fetch_add(1, Ordering::Relaxed);
            let (done, answer) = oneshot::channel();
            waiting.lock().expect("not poisoned").insert(number, done);
            let user_properties = carrier_fields(&request.headers)
                .into_iter()
                .map(|(name, value)| {
                    let value = mqtt_value(&name, &value);
                    (name, value)
                })
                .collect();
            let properties = PublishProperties {
                user_properties,
                ..PublishProperties::default()
            };
            let topic = format!("{topic_prefix}/{number}");
            if let Err(error) = client
                .publish_with_properties(topic, QoS::AtLeastOnce, false, request.body, properties)
                .await
            {
                return http::Response::json(502, serde_json::json!(error.to_string()).to_string());
            }
            match tokio::time::timeout(HANDLER_DEADLINE, answer).await {
                Ok(Ok(response)) => response,
                _ => http::Response::json(504, "\"the handler made no callbacks in time\""),
            }
        }
    })
    .await;
    Mqtt5Service {
        http,
        subscriber,
        _publisher_connection: AbortOnDrop(driver),
    }
}

/// Runs both levels against `port` (on a blocking thread: the service keeps running).
async fn run_both_levels(port: u16) -> (Verdict, Verdict) {
    suite::require_python();
    let endpoint = format!("http://127.0.0.1:{port}/test");
    tokio::task::spawn_blocking(move || {
        (
            suite::run(&endpoint, Level::One),
            suite::run(&endpoint, Level::Two),
        )
    })
    .await
    .expect("the suite runner did not panic")
}

fn assert_counts(what: &str, level: Level, verdict: &Verdict, passed: usize, cases: usize) {
    eprintln!(
        "W3C Trace Context suite, {what}, {level:?}: {} of {} passed; failed: {:?}",
        verdict.passed(),
        verdict.cases(),
        verdict.failed
    );
    assert_eq!(
        (verdict.passed(), verdict.cases()),
        (passed, cases),
        "{what}, {level:?}: failed {:?}\n{}",
        verdict.failed,
        verdict.output
    );
}

fn assert_all_pass(what: &str, (one, two): &(Verdict, Verdict)) {
    assert_counts(what, Level::One, one, 40, 40);
    assert_counts(what, Level::Two, two, 41, 41);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_user_properties_through_mosquitto_pass_levels_1_and_2() {
    suite::require_python();
    let broker = Broker::start();
    let service = mqtt5_service(&broker).await;
    let verdicts = run_both_levels(service.http.port).await;
    assert_all_pass("MQTT 5 user properties through mosquitto", &verdicts);
    drop(service.http);
    service.subscriber.shutdown().await;
}

async fn carrier_passes(carrier: Carrier, what: &str) {
    let service = direct_service(Direct::Crate(carrier)).await;
    assert_all_pass(what, &run_both_levels(service.port).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_properties_pass_levels_1_and_2() {
    carrier_passes(Carrier::UserProperties, "MQTT 5 user properties").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelope_headers_pass_levels_1_and_2() {
    carrier_passes(Carrier::Envelope, "MQTT 3.1.1 envelope").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_fields_pass_levels_1_and_2() {
    carrier_passes(Carrier::JsonFields, "MQTT 3.1.1 JSON fields").await;
}

/// The comparison the README quotes; the failures are the SDK's (loose `traceparent` parsing,
/// one `tracestate` field only, Level 1 key checks, no `random-trace-id`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_trace_context_propagator_counts() {
    let service = direct_service(Direct::Sdk).await;
    let (one, two) = run_both_levels(service.port).await;
    let what = "opentelemetry_sdk TraceContextPropagator (update the README's conformance line)";
    assert_counts(what, Level::One, &one, SDK_PASSES.0, 40);
    assert_counts(what, Level::Two, &two, SDK_PASSES.1, 41);
}

/// The bridge's white-space mapping keeps each `tracestate` meaning what it meant.
#[test]
fn tabs_become_spaces_only_where_they_are_optional_white_space() {
    assert_eq!(
        mqtt_value(TRACESTATE, "foo=1\t \t,\t \tbar=2"),
        "foo=1   ,   bar=2"
    );
    assert_eq!(
        mqtt_value(TRACESTATE, "foo=1 \t , \t bar=2"),
        "foo=1   ,   bar=2"
    );
    assert_eq!(mqtt_value(TRACESTATE, "a=x\ty"), "a=x\u{fffd}y");
    assert_eq!(mqtt_value("traceparent", "00-1\t2"), "00-1\u{fffd}2");
    assert_eq!(mqtt_value("user-agent", "a\tb"), "a b");
}
