//! What a `TracedSubscriber` handler may return, for MQTT 3.1.1 and MQTT 5: each shape compiles
//! without naming an error type (`Ok(())`, nothing, `?` on any error, `Err(e.into())`, a named
//! `-> HandlerResult`, a function with an error type of its own through a closure), and, run
//! against mosquitto, each failure keeps the name of its error's type as `error.type` on the
//! `process` span (`std::any::type_name` of the error before the conversion into
//! `HandlerError`), with its `Display` text as the status message. The shape that does not
//! compile (a function returning `Result<(), std::io::Error>` registered directly) is pinned by
//! the `compile_fail` doc test of `SubscriberBuilder::route`.

mod common;

use std::fmt;

use common::Broker;
use common::telemetry::{Telemetry, assert_unique_attribute_keys, error_type};
use opentelemetry::trace::{SpanKind, Status};
use opentelemetry_sdk::trace::SpanData;

/// An error type that displays but is no `std::error::Error`, as `anyhow::Error` and
/// `eyre::Report` are.
#[derive(Debug)]
struct Report(&'static str);

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn write_to_a_full_disk() -> std::io::Result<()> {
    Err(std::io::Error::other("disk full"))
}

/// The routes, each a shape, and what its `process` span records: `None` for success, else
/// (`error.type`, status message).
const EXPECTED: [(&str, Option<(&str, &str)>); 8] = [
    ("ok", None),
    ("unit", None),
    ("io", Some(("std::io::error::Error", "disk full"))),
    ("into", Some(("&str", "a bad reading"))),
    ("named", Some(("core::str::error::Utf8Error", ""))),
    ("typed", Some(("std::io::error::Error", "typed failure"))),
    (
        "boxed",
        Some((
            "alloc::boxed::Box<dyn core::error::Error + core::marker::Send + core::marker::Sync>",
            "boxed failure",
        )),
    ),
    ("report", Some(("handler_shapes::Report", "reported"))),
];

/// The `process` span of the route on `shapes/{name}`.
fn process_span<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    spans
        .iter()
        .find(|s| s.span_kind == SpanKind::Consumer && s.name == format!("process shapes/{name}"))
        .unwrap_or_else(|| panic!("the process span of {name}: {spans:#?}"))
}

macro_rules! shapes {
    () => {
        use super::*;

        async fn named(message: Message) -> HandlerResult {
            // Invalid UTF-8 on purpose: `?` converts the `Utf8Error`.
            let text = std::str::from_utf8(&message.payload()[..1])?;
            println!("{text}");
            Ok(())
        }

        async fn typed(_message: Message) -> Result<(), std::io::Error> {
            Err(std::io::Error::other("typed failure"))
        }

        async fn boxed(_message: Message) -> Result<(), BoxError> {
            Err("boxed failure".into())
        }

        async fn report(_message: Message) -> Result<(), Report> {
            Err(Report("reported"))
        }

        /// Every shape on one builder: a compile test, run against mosquitto.
        fn routes(builder: SubscriberBuilder) -> SubscriberBuilder {
            builder
                .route("shapes/ok", QOS1, |_message| async move { Ok(()) })
                .and_then(|b| {
                    b.route("shapes/unit", QOS1, |message: Message| async move {
                        let _ = message.topic();
                    })
                })
                .and_then(|b| {
                    b.route("shapes/io", QOS1, |_message| async move {
                        write_to_a_full_disk()?;
                        Ok(())
                    })
                })
                .and_then(|b| {
                    b.route("shapes/into", QOS1, |_message| async move {
                        Err("a bad reading".into())
                    })
                })
                .and_then(|b| b.route("shapes/named", QOS1, named))
                .and_then(|b| b.route("shapes/typed", QOS1, |m| async move { Ok(typed(m).await?) }))
                .and_then(|b| b.route("shapes/boxed", QOS1, |m| async move { Ok(boxed(m).await?) }))
                .and_then(|b| {
                    b.route(
                        "shapes/report",
                        QOS1,
                        |m| async move { Ok(report(m).await?) },
                    )
                })
                .expect("valid filters")
        }

        /// Each shape's outcome on its `process` span: success, or `error.type` = the
        /// error's type name before the conversion, with its text as the status message.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn every_shape_records_its_outcome() {
            let broker = Broker::start();
            let telemetry = Telemetry::new();
            let subscriber = routes(TracedSubscriber::builder_with_instrumentation(
                MqttOptions::new(
                    common::unique_client_id("shapes"),
                    broker.host(),
                    broker.port(),
                ),
                10,
                telemetry.instrumentation(),
            ))
            .start();
            subscriber.subscribed().await.expect("subscribed");
            for (name, _) in EXPECTED {
                let topic = format!("shapes/{name}");
                // 0xff is no UTF-8 (the `named` handler fails on it).
                let args = [
                    PROTOCOL[0],
                    PROTOCOL[1],
                    "-q",
                    "1",
                    "-t",
                    &topic,
                    "-m",
                    "\u{ff}",
                ];
                let output = tokio::task::block_in_place(|| broker.mosquitto_pub(&args));
                assert!(output.status.success(), "{output:?}");
            }
            common::traced::wait_until("a process span per route", || {
                telemetry.spans_of(SpanKind::Consumer).len() >= EXPECTED.len()
            })
            .await;
            subscriber.shutdown().await;
            let spans = telemetry.spans();
            for (name, expected) in EXPECTED {
                let span = process_span(&spans, name);
                match expected {
                    None => {
                        assert_eq!(span.status, Status::Unset, "{name}: {span:#?}");
                        assert_eq!(error_type(span), None, "{name}");
                    }
                    Some((kind, message)) => {
                        assert_eq!(error_type(span).as_deref(), Some(kind), "{name}");
                        let Status::Error { description } = &span.status else {
                            panic!("{name}: {span:#?}");
                        };
                        assert!(description.contains(message), "{name}: {description}");
                    }
                }
            }
            assert_unique_attribute_keys(&spans);
        }
    };
}

mod v4 {
    use rumqttc::{MqttOptions, QoS};
    use rumqttc_opentelemetry::v4::{HandlerResult, Message, SubscriberBuilder, TracedSubscriber};

    const QOS1: QoS = QoS::AtLeastOnce;
    const PROTOCOL: [&str; 2] = ["-V", "mqttv311"];

    shapes!();
}

mod v5 {
    use rumqttc::v5::MqttOptions;
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc_opentelemetry::v5::{HandlerResult, Message, SubscriberBuilder, TracedSubscriber};

    const QOS1: QoS = QoS::AtLeastOnce;
    const PROTOCOL: [&str; 2] = ["-V", "mqttv5"];

    shapes!();
}
