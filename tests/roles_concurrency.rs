//! `TracedSubscriber` with concurrent handlers against a real mosquitto, the same tests for
//! MQTT 3.1.1 (`v4`) and MQTT 5 (`v5`): the bound on runs in flight, per-topic order (and
//! `unordered()`), acknowledgements in arrival order when handlers finish out of order
//! ([MQTT-4.6.0-2] for PUBACK, [MQTT-4.6.0-3] for PUBREC), `AckPolicy::AfterSuccess` with a
//! failed message in the middle, back-pressure with a slow handler (QoS 1 waits at the broker,
//! keep-alive flows, QoS 0 is shed and counted), and a draining `shutdown()`.
//!
//! Deterministic: handlers block on gates the test opens, the order the broker saw is read from
//! its log (`log_type all`), and every wait has a deadline; nothing sleeps for a fixed time.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::telemetry::{Telemetry, assert_error, assert_success, destination};
use common::traced::wait_until;
use common::{Broker, unique_client_id};
use opentelemetry::trace::SpanKind;
use opentelemetry_sdk::trace::SpanData;
use tokio::sync::oneshot;
use tokio::time::timeout;

/// Bound on a wait that is not a condition (the end of a shutdown).
const DEADLINE: Duration = Duration::from_secs(30);

/// Gates that handler runs wait at, by payload; a payload without a gate passes at once.
#[derive(Clone, Default)]
struct Gates(Arc<Mutex<HashMap<String, oneshot::Receiver<()>>>>);

impl Gates {
    /// Closes the gate of `payload`: its run waits until the returned sender is used or
    /// dropped.
    fn close(&self, payload: &str) -> oneshot::Sender<()> {
        let (open, gate) = oneshot::channel();
        self.0
            .lock()
            .expect("gates")
            .insert(payload.to_owned(), gate);
        open
    }

    /// Closes the gates of all `payloads`, by payload.
    fn close_all<'a>(
        &self,
        payloads: impl IntoIterator<Item = &'a String>,
    ) -> BTreeMap<String, oneshot::Sender<()>> {
        payloads
            .into_iter()
            .map(|payload| (payload.clone(), self.close(payload)))
            .collect()
    }

    async fn pass(&self, payload: &str) {
        let gate = self.0.lock().expect("gates").remove(payload);
        if let Some(gate) = gate {
            let _ = gate.await;
        }
    }
}

#[derive(Default)]
struct ProbeState {
    active: usize,
    max_active: usize,
    /// Runs in flight per topic.
    per_topic: HashMap<String, usize>,
    /// Topics that had two runs in flight at once.
    overlapped: Vec<String>,
    /// Payloads in the order their runs started, per topic.
    started: BTreeMap<String, Vec<String>>,
    /// Runs so far per payload.
    runs: HashMap<String, usize>,
    /// Every run's start, in order: payload and DUP flag.
    starts: Vec<(String, bool)>,
    /// Payloads whose run ended (returned), in order.
    ended: Vec<String>,
}

/// Counts what the handlers do: runs in flight (and the most at once), runs of one topic at
/// once, the order runs start in.
#[derive(Clone, Default)]
struct Probe {
    state: Arc<Mutex<ProbeState>>,
}

/// Leaves the run's place in the probe when the run ends, also by a panic.
struct Running {
    state: Arc<Mutex<ProbeState>>,
    topic: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(mut state) = self.state.lock() {
            state.active -= 1;
            if let Some(count) = state.per_topic.get_mut(&self.topic) {
                *count -= 1;
            }
        }
    }
}

impl Probe {
    /// A run starts; returns how many runs of this payload started so far (1 for the first).
    fn start(&self, topic: &str, payload: &str, duplicate: bool) -> (Running, usize) {
        let mut state = self.state.lock().expect("probe");
        state.active += 1;
        state.max_active = state.max_active.max(state.active);
        let per_topic = state.per_topic.entry(topic.to_owned()).or_default();
        *per_topic += 1;
        if *per_topic > 1 {
            state.overlapped.push(topic.to_owned());
        }
        state
            .started
            .entry(topic.to_owned())
            .or_default()
            .push(payload.to_owned());
        let runs = state.runs.entry(payload.to_owned()).or_default();
        *runs += 1;
        let runs = *runs;
        state.starts.push((payload.to_owned(), duplicate));
        drop(state);
        (
            Running {
                state: Arc::clone(&self.state),
                topic: topic.to_owned(),
            },
            runs,
        )
    }

    /// A run returned.
    fn end(&self, payload: &str) {
        self.state
            .lock()
            .expect("probe")
            .ended
            .push(payload.to_owned());
    }

    /// The starts of `payload` so far, each with its DUP flag.
    fn starts_of(&self, payload: &str) -> Vec<bool> {
        let state = self.state.lock().expect("probe");
        state
            .starts
            .iter()
            .filter(|(started, _)| started == payload)
            .map(|(_, duplicate)| *duplicate)
            .collect()
    }

    fn has_started(&self, payload: &str) -> bool {
        !self.starts_of(payload).is_empty()
    }

    fn ended_count(&self, payload: &str) -> usize {
        let state = self.state.lock().expect("probe");
        state.ended.iter().filter(|ended| *ended == payload).count()
    }

    fn active(&self) -> usize {
        self.state.lock().expect("probe").active
    }

    fn max_active(&self) -> usize {
        self.state.lock().expect("probe").max_active
    }

    fn overlapped(&self) -> Vec<String> {
        self.state.lock().expect("probe").overlapped.clone()
    }

    fn started(&self) -> BTreeMap<String, Vec<String>> {
        self.state.lock().expect("probe").started.clone()
    }
}

/// Waits until the runs of all `payloads` have ended at least once.
async fn until_ended<S: AsRef<str>>(probe: &Probe, payloads: &[S]) {
    let names: Vec<&str> = payloads.iter().map(AsRef::as_ref).collect();
    wait_until(&format!("the end of {names:?}"), || {
        names.iter().all(|payload| probe.ended_count(payload) > 0)
    })
    .await;
}

/// Waits until the runs of all `payloads` have started.
async fn until_started(probe: &Probe, payloads: &[&str]) {
    wait_until(&format!("the start of {payloads:?}"), || {
        payloads.iter().all(|payload| probe.has_started(payload))
    })
    .await;
}

/// One PUBLISH mosquitto sent to a client, from its log.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sent {
    mid: u16,
    qos: u8,
    duplicate: bool,
    topic: String,
}

/// The PUBLISH packets mosquitto sent to `client`, in order (its log line is `Sending PUBLISH
/// to ID (d0, q1, r0, m3, 'topic', ... (N bytes))`).
fn sent_to(log: &str, client: &str) -> Vec<Sent> {
    let prefix = format!("Sending PUBLISH to {client} (");
    log.lines()
        .filter_map(|line| {
            let rest = &line[line.find(&prefix)? + prefix.len()..];
            let mut fields = rest.split(", ");
            let duplicate = fields.next()? == "d1";
            let qos = fields.next()?.strip_prefix('q')?.parse().ok()?;
            let _retain = fields.next()?;
            let mid = fields.next()?.strip_prefix('m')?.parse().ok()?;
            let quoted = &rest[rest.find('\'')? + 1..];
            let topic = quoted[..quoted.find('\'')?].to_owned();
            Some(Sent {
                mid,
                qos,
                duplicate,
                topic,
            })
        })
        .collect()
}

/// The packet ids of the `packet`s (`PUBACK`, `PUBREC`) mosquitto received from `client`, in
/// order (`Received PUBACK from ID (Mid: 3, RC:0)`; no reason code for MQTT 3.1.1).
fn acks_from(log: &str, client: &str, packet: &str) -> Vec<u16> {
    let prefix = format!("Received {packet} from {client} (Mid: ");
    log.lines()
        .filter_map(|line| {
            let rest = &line[line.find(&prefix)? + prefix.len()..];
            let end = rest.find(|c: char| !c.is_ascii_digit())?;
            rest[..end].parse().ok()
        })
        .collect()
}

/// The process spans of a topic.
fn process_spans(telemetry: &Telemetry, topic: &str) -> Vec<SpanData> {
    telemetry
        .spans_of(SpanKind::Consumer)
        .into_iter()
        .filter(|span| destination(span).as_deref() == Some(topic))
        .collect()
}

/// What the tests need of MQTT 3.1.1 beyond the shared kit.
mod v4_kit {
    use super::common::Broker;
    pub use super::common::kit::v4::*;

    /// rumqttc's shortest keep-alive for MQTT 3.1.1.
    pub fn short_keep_alive(options: &mut MqttOptions) {
        options.set_keep_alive(std::time::Duration::from_secs(1));
    }

    /// A broker that has at most `window` QoS 1 and 2 messages unacknowledged at a client:
    /// MQTT 3.1.1 clients cannot announce a window, the broker's `max_inflight_messages`
    /// decides.
    pub fn broker_with_window(window: u32) -> Broker {
        Broker::builder().max_inflight(window).start()
    }
}

/// What the tests need of MQTT 5 beyond the shared kit.
mod v5_kit {
    use super::common::Broker;
    pub use super::common::kit::v5::*;

    /// rumqttc's shortest keep-alive for MQTT 5.
    pub fn short_keep_alive(options: &mut MqttOptions) {
        options.set_keep_alive(std::time::Duration::from_secs(5));
    }

    /// A broker with its default window (mosquitto: 20): the MQTT 5 subscriber announces its
    /// own, smaller one as its Receive Maximum.
    pub fn broker_with_window(_window: u32) -> Broker {
        Broker::start()
    }
}

/// The tests, written once; `kit` is the version's module above.
macro_rules! concurrency_tests {
    () => {
        use super::*;
        use kit::{AckPolicy, Message, QoS, SubscriberBuilder, TracedPublisher, TracedSubscriber};

        type HandlerFuture = Pin<Box<dyn Future<Output = kit::HandlerResult> + Send>>;

        /// A handler that reports to `probe`, waits at its payload's gate, fails the first
        /// run of a payload starting with `fail` and panics on one starting with `panic`.
        fn handler(
            probe: &Probe,
            gates: &Gates,
        ) -> impl Fn(Message) -> HandlerFuture + Send + Sync + 'static {
            let (probe, gates) = (probe.clone(), gates.clone());
            move |message: Message| {
                let (probe, gates) = (probe.clone(), gates.clone());
                let topic = message.topic().to_string();
                let payload = String::from_utf8_lossy(message.payload()).into_owned();
                let duplicate = message.duplicate();
                Box::pin(async move {
                    let (running, runs) = probe.start(&topic, &payload, duplicate);
                    gates.pass(&payload).await;
                    if payload.starts_with("panic") {
                        panic!("handler panicked on {payload}");
                    }
                    drop(running);
                    probe.end(&payload);
                    if payload.starts_with("fail") && runs == 1 {
                        return Err(std::io::Error::other("refused the first time").into());
                    }
                    Ok(())
                })
            }
        }

        /// What every test sets up: the broker, the telemetry, the handlers' probe and gates.
        struct Scene {
            broker: Broker,
            telemetry: Telemetry,
            probe: Probe,
            gates: Gates,
            /// The subscriber's client id.
            id: String,
        }

        impl Scene {
            fn on(broker: Broker) -> Self {
                Self {
                    broker,
                    telemetry: Telemetry::new(),
                    probe: Probe::default(),
                    gates: Gates::default(),
                    id: unique_client_id("sub"),
                }
            }

            fn options(&self) -> kit::MqttOptions {
                kit::options(&self.id, self.broker.port())
            }

            /// A subscriber with `options`, set up by `configure`, whose one route runs
            /// [`handler`] for `filter` at `qos`; subscribed.
            async fn subscriber(
                &self,
                options: kit::MqttOptions,
                filter: &str,
                qos: QoS,
                configure: impl FnOnce(SubscriberBuilder) -> SubscriberBuilder,
            ) -> TracedSubscriber {
                let builder = TracedSubscriber::builder_with_instrumentation(
                    options,
                    10,
                    kit::instrumentation(&self.telemetry),
                );
                let subscriber = configure(builder)
                    .route(filter, qos, handler(&self.probe, &self.gates))
                    .expect("valid filter")
                    .start();
                subscriber.subscribed().await.expect("subscribed");
                subscriber
            }

            /// A publisher with the test instrumentation, connected.
            async fn publisher(&self) -> TracedPublisher {
                let publisher = TracedPublisher::with_instrumentation(
                    kit::options(&unique_client_id("pub"), self.broker.port()),
                    100,
                    kit::instrumentation(&self.telemetry),
                );
                assert!(publisher.wait_connected().await, "publisher connects");
                publisher
            }

            /// The PUBLISH packets the broker sent to the subscriber so far.
            fn sent(&self) -> Vec<Sent> {
                sent_to(&self.broker.log(), &self.id)
            }

            /// The packet ids of the `packet`s the broker received from the subscriber so far.
            fn acks(&self, packet: &str) -> Vec<u16> {
                acks_from(&self.broker.log(), &self.id, packet)
            }

            fn spans(&self, topic: &str) -> Vec<SpanData> {
                process_spans(&self.telemetry, topic)
            }
        }

        /// Publishes `(topic, payload)` in this order and waits until the broker has them all.
        async fn publish_all(publisher: &TracedPublisher, qos: QoS, messages: &[(String, String)]) {
            for (topic, payload) in messages {
                publisher
                    .publish(topic.clone(), qos, false, payload.clone())
                    .await
                    .expect("publish queued");
            }
            publisher.flush().await;
        }

        fn payloads(messages: &[(String, String)]) -> Vec<String> {
            messages.iter().map(|(_, payload)| payload.clone()).collect()
        }

        /// Issue 17, deliverable 1: at most `n` runs in flight, and each keeps its own
        /// `process` span, child of its message's publish span.
        #[tokio::test(flavor = "multi_thread")]
        async fn concurrency_bounds_the_runs_in_flight_and_each_run_keeps_its_span() {
            let scene = Scene::on(Broker::start());
            let subscriber = scene
                .subscriber(scene.options(), "load/+", QoS::AtLeastOnce, |b| b.concurrency(4))
                .await;
            let messages: Vec<(String, String)> = (0..12)
                .map(|i| (format!("load/{i}"), format!("load-{i}")))
                .collect();
            let open = scene.gates.close_all(&payloads(&messages));
            let publisher = scene.publisher().await;
            publish_all(&publisher, QoS::AtLeastOnce, &messages).await;

            // Four run, eight wait.
            wait_until("4 runs in flight and 8 waiting", || {
                scene.probe.active() == 4 && subscriber.queued() == 8
            })
            .await;
            for gate in open.into_values() {
                let _ = gate.send(());
            }
            until_ended(&scene.probe, &payloads(&messages)).await;
            assert_eq!(scene.probe.max_active(), 4, "the bound is reached, never exceeded");
            assert!(scene.probe.overlapped().is_empty());

            // One process span per run, each a child of its own message's publish span.
            wait_until("12 process spans", || {
                scene.telemetry.spans_of(SpanKind::Consumer).len() == 12
            })
            .await;
            let produced = scene.telemetry.spans_of(SpanKind::Producer);
            for (topic, _) in &messages {
                let process = scene.spans(topic);
                assert_eq!(process.len(), 1, "{topic}");
                assert_success(&process[0]);
                let publish = produced
                    .iter()
                    .find(|span| destination(span).as_deref() == Some(topic.as_str()))
                    .expect("publish span");
                assert_eq!(process[0].parent_span_id, publish.span_context.span_id());
                assert_eq!(
                    process[0].span_context.trace_id(),
                    publish.span_context.trace_id()
                );
            }
            subscriber.shutdown().await;
            publisher.shutdown().await;
        }

        /// Issue 17, deliverable 1: a panic ends its own run only; the runs beside it go on.
        #[tokio::test(flavor = "multi_thread")]
        async fn a_panic_in_one_of_the_concurrent_runs_ends_that_run_only() {
            let scene = Scene::on(Broker::start());
            let subscriber = scene
                .subscriber(scene.options(), "mixed/+", QoS::AtLeastOnce, |b| b.concurrency(3))
                .await;
            let messages: Vec<(String, String)> = ["ok-a", "panic-b", "ok-c"]
                .iter()
                .enumerate()
                .map(|(i, payload)| (format!("mixed/{i}"), payload.to_string()))
                .collect();
            let mut open = scene.gates.close_all(&payloads(&messages));
            let publisher = scene.publisher().await;
            publish_all(&publisher, QoS::AtLeastOnce, &messages).await;
            until_started(&scene.probe, &["ok-a", "panic-b", "ok-c"]).await;
            // The panic happens while the two others run.
            let _ = open.remove("panic-b").map(|gate| gate.send(()));
            wait_until("the panic's span", || !scene.spans("mixed/1").is_empty()).await;
            assert_error(&scene.spans("mixed/1")[0], "panic");
            assert_eq!(scene.probe.active(), 2, "the other runs go on");
            for gate in open.into_values() {
                let _ = gate.send(());
            }
            until_ended(&scene.probe, &["ok-a", "ok-c"]).await;
            wait_until("3 process spans", || {
                scene.telemetry.spans_of(SpanKind::Consumer).len() == 3
            })
            .await;
            for topic in ["mixed/0", "mixed/2"] {
                assert_success(&scene.spans(topic)[0]);
            }
            assert!(subscriber.is_connected());
            subscriber.shutdown().await;
            publisher.shutdown().await;
        }

        /// MQTT 3.1.1 and 5 section 4.6 (messages are ordered per topic): by default the
        /// messages of one topic never run at the same time and start in arrival order, while
        /// different topics run side by side.
        #[tokio::test(flavor = "multi_thread")]
        async fn one_topic_runs_in_arrival_order_while_topics_run_side_by_side() {
            let scene = Scene::on(Broker::start());
            let subscriber = scene
                .subscriber(scene.options(), "order/+", QoS::AtLeastOnce, |b| b.concurrency(8))
                .await;
            // a-0, b-0, c-0, a-1, b-1, c-1, ... (18 messages: within mosquitto's default
            // window of 20 for MQTT 3.1.1)
            let topics = ["a", "b", "c"];
            let messages: Vec<(String, String)> = (0..6)
                .flat_map(|i| {
                    topics
                        .iter()
                        .map(move |topic| (format!("order/{topic}"), format!("{topic}-{i}")))
                })
                .collect();
            let firsts: Vec<String> = topics.iter().map(|topic| format!("{topic}-0")).collect();
            let open = scene.gates.close_all(&firsts);
            let publisher = scene.publisher().await;
            publish_all(&publisher, QoS::AtLeastOnce, &messages).await;

            // The first message of every topic runs at once; the other 15 wait for them,
            // although 5 runs are free.
            until_started(&scene.probe, &["a-0", "b-0", "c-0"]).await;
            wait_until("15 waiting", || subscriber.queued() == 15).await;
            assert_eq!(scene.probe.active(), 3);
            for gate in open.into_values() {
                let _ = gate.send(());
            }
            until_ended(&scene.probe, &payloads(&messages)).await;

            assert!(scene.probe.overlapped().is_empty(), "{:?}", scene.probe.overlapped());
            let started = scene.probe.started();
            for topic in topics {
                let expected: Vec<String> = (0..6).map(|i| format!("{topic}-{i}")).collect();
                assert_eq!(started[&format!("order/{topic}")], expected, "arrival order");
            }
            subscriber.shutdown().await;
            publisher.shutdown().await;
        }

        /// `unordered()` lifts per-topic order: a later message of a topic runs (and finishes)
        /// while an earlier one still runs; the acknowledgements still go out in arrival order
        /// ([MQTT-4.6.0-2]).
        #[tokio::test(flavor = "multi_thread")]
        async fn unordered_lets_messages_of_one_topic_overlap_and_still_acknowledges_in_order() {
            let scene = Scene::on(Broker::start());
            let subscriber = scene
                .subscriber(scene.options(), "same/+", QoS::AtLeastOnce, |b| {
                    b.concurrency(2).unordered()
                })
                .await;
            let messages = vec![
                ("same/t".to_owned(), "first".to_owned()),
                ("same/t".to_owned(), "second".to_owned()),
            ];
            let first = scene.gates.close("first");
            let publisher = scene.publisher().await;
            publish_all(&publisher, QoS::AtLeastOnce, &messages).await;

            // The second runs to its end while the first has started and is held.
            until_started(&scene.probe, &["first"]).await;
            until_ended(&scene.probe, &["second"]).await;
            assert_eq!(scene.probe.active(), 1, "the first still runs");
            let _ = first.send(());
            until_ended(&scene.probe, &["first"]).await;

            wait_until("2 PUBACKs", || scene.acks("PUBACK").len() == 2).await;
            let sent: Vec<u16> = scene.sent().iter().map(|s| s.mid).collect();
            assert_eq!(scene.acks("PUBACK"), sent);
            subscriber.shutdown().await;
            publisher.shutdown().await;
        }

        /// Handlers on four topics finish in reverse order; the acknowledgements (`packet`)
        /// still go out in the order the PUBLISH packets arrived.
        async fn acknowledged_in_arrival_order(qos: QoS, packet: &str) {
            let scene = Scene::on(Broker::start());
            let subscriber = scene
                .subscriber(scene.options(), "acks/+", qos, |b| b.concurrency(4))
                .await;
            let messages: Vec<(String, String)> = (0..4)
                .map(|i| (format!("acks/{i}"), format!("m-{i}")))
                .collect();
            let mut open = scene.gates.close_all(&payloads(&messages));
            let publisher = scene.publisher().await;
            publish_all(&publisher, qos, &messages).await;
            until_started(&scene.probe, &["m-0", "m-1", "m-2", "m-3"]).await;

            // m-3 ends first, m-0 last.
            for (_, payload) in messages.iter().rev() {
                let _ = open.remove(payload).map(|gate| gate.send(()));
                until_ended(&scene.probe, std::slice::from_ref(payload)).await;
            }
            wait_until(&format!("4 {packet}s"), || scene.acks(packet).len() == 4).await;
            let sent = scene.sent();
            assert_eq!(
                sent.iter().map(|s| s.topic.as_str()).collect::<Vec<_>>(),
                ["acks/0", "acks/1", "acks/2", "acks/3"]
            );
            assert_eq!(
                scene.acks(packet),
                sent.iter().map(|s| s.mid).collect::<Vec<_>>(),
                "{packet}s in the order the PUBLISH packets arrived"
            );
            subscriber.shutdown().await;
            publisher.shutdown().await;
        }

        /// [MQTT-4.6.0-2]: PUBACK packets in the order the QoS 1 PUBLISH packets arrived.
        #[tokio::test(flavor = "multi_thread")]
        async fn pubacks_go_out_in_arrival_order_when_handlers_finish_out_of_order() {
            acknowledged_in_arrival_order(QoS::AtLeastOnce, "PUBACK").await;
        }

        /// [MQTT-4.6.0-3]: PUBREC packets in the order the QoS 2 PUBLISH packets arrived.
        #[tokio::test(flavor = "multi_thread")]
        async fn pubrecs_go_out_in_arrival_order_when_handlers_finish_out_of_order() {
            acknowledged_in_arrival_order(QoS::ExactlyOnce, "PUBREC").await;
        }

        /// [MQTT-4.6.0-2] with `AckPolicy::AfterSuccess`: a failed message in the middle is
        /// not acknowledged, the messages behind it are (in order, skipping it), and the failed
        /// one is delivered again, with DUP, when the session resumes on a new connection.
        #[tokio::test(flavor = "multi_thread")]
        async fn after_success_a_failed_message_is_skipped_in_order_and_redelivered_after_reconnect()
        {
            let mut scene = Scene::on(Broker::builder().persistence(true).start());
            let mut options = scene.options();
            kit::persistent(&mut options);
            let subscriber = scene
                .subscriber(options, "jobs/+", QoS::AtLeastOnce, |b| {
                    b.concurrency(4).ack_policy(AckPolicy::AfterSuccess)
                })
                .await;
            let messages: Vec<(String, String)> = ["ok-0", "fail-1", "ok-2", "ok-3"]
                .iter()
                .enumerate()
                .map(|(i, payload)| (format!("jobs/{i}"), payload.to_string()))
                .collect();
            let first = scene.gates.close("ok-0");
            let publisher = scene.publisher().await;
            publish_all(&publisher, QoS::AtLeastOnce, &messages).await;
            // The failure and the two behind it end while the first message still runs.
            until_ended(&scene.probe, &["fail-1", "ok-2", "ok-3"]).await;
            let _ = first.send(());
            until_ended(&scene.probe, &["ok-0"]).await;

            wait_until("3 PUBACKs", || scene.acks("PUBACK").len() == 3).await;
            let mids: Vec<u16> = scene.sent().iter().map(|s| s.mid).collect();
            assert_eq!(mids.len(), 4);
            assert_eq!(
                scene.acks("PUBACK"),
                [mids[0], mids[2], mids[3]],
                "in arrival order, without the failed message"
            );
            assert_error(&scene.spans("jobs/1")[0], "std::io::error::Error");

            // The failed message kept its place in the broker's in-flight window; after a
            // reconnect (the broker restarts, the session is present) it comes again.
            scene.broker.restart();
            wait_until("the redelivery", || scene.probe.ended_count("fail-1") == 2).await;
            assert_eq!(
                scene.probe.starts_of("fail-1"),
                [false, true],
                "redelivered with DUP [MQTT-3.3.1-1]"
            );
            wait_until("the redelivery's PUBACK", || scene.acks("PUBACK").len() == 4).await;
            assert_eq!(scene.acks("PUBACK")[3], mids[1]);
            wait_until("its successful span", || scene.spans("jobs/1").len() == 2).await;
            assert_success(&scene.spans("jobs/1")[1]);
            subscriber.shutdown().await;
            publisher.shutdown().await;
        }

        /// Back-pressure: with the runs busy and the queue full, QoS 1 messages wait at the
        /// broker (its in-flight window: MQTT 5 the Receive Maximum the subscriber announces,
        /// [MQTT-3.3.4-9]; MQTT 3.1.1 the broker's limit) while keep-alive still flows; none is
        /// dropped. QoS 0 messages beyond the queue are shed and recorded (`queue_full`).
        #[tokio::test(flavor = "multi_thread")]
        async fn a_slow_handler_keeps_qos1_at_the_broker_while_keep_alive_flows() {
            const CONCURRENCY: usize = 2;
            const CAPACITY: usize = 3;
            const WINDOW: usize = CONCURRENCY + CAPACITY;
            let scene = Scene::on(kit::broker_with_window(WINDOW as u32));
            let mut options = scene.options();
            kit::short_keep_alive(&mut options);
            let subscriber = scene
                .subscriber(options, "flow/+", QoS::AtLeastOnce, |b| {
                    b.concurrency(CONCURRENCY).queue_capacity(CAPACITY)
                })
                .await;
            let messages: Vec<(String, String)> = (0..30)
                .map(|i| (format!("flow/{}", i % 3), format!("q1-{i}")))
                .collect();
            let open = scene.gates.close_all(&payloads(&messages));
            let publisher = scene.publisher().await;
            publish_all(&publisher, QoS::AtLeastOnce, &messages).await;

            wait_until("2 runs and 3 waiting", || {
                scene.probe.active() == CONCURRENCY && subscriber.queued() == CAPACITY
            })
            .await;
            // A whole keep-alive round trip while the window is full: the connection lives.
            let before = scene.broker.log().len();
            wait_until("a keep-alive round trip", || {
                let log = scene.broker.log();
                let since = &log[before.min(log.len())..];
                since.contains(&format!("Received PINGREQ from {}", scene.id))
                    && since.contains(&format!("Sending PINGRESP to {}", scene.id))
            })
            .await;
            assert!(subscriber.is_connected());
            assert_eq!(scene.sent().len(), WINDOW, "the other QoS 1 messages wait at the broker");
            assert_eq!(subscriber.queued(), CAPACITY, "the subscriber holds no more");

            // QoS 0 has no flow control: with the queue full, each is shed, visibly.
            for i in 0..3 {
                publisher
                    .publish_confirmed(format!("flow/{i}"), QoS::AtMostOnce, false, format!("q0-{i}"))
                    .await
                    .expect("publish");
            }
            wait_until("3 shed QoS 0 messages", || {
                scene
                    .telemetry
                    .spans_of(SpanKind::Consumer)
                    .iter()
                    .filter(|span| {
                        common::telemetry::error_type(span).as_deref() == Some("queue_full")
                    })
                    .count()
                    == 3
            })
            .await;

            for gate in open.into_values() {
                let _ = gate.send(());
            }
            until_ended(&scene.probe, &payloads(&messages)).await;
            assert_eq!(scene.probe.max_active(), CONCURRENCY);
            let started = scene.probe.started();
            assert_eq!(started.values().map(Vec::len).sum::<usize>(), 30, "each once");
            for topic in 0..3 {
                let expected: Vec<String> =
                    (0..30).filter(|i| i % 3 == topic).map(|i| format!("q1-{i}")).collect();
                assert_eq!(started[&format!("flow/{topic}")], expected);
            }
            wait_until("30 PUBACKs", || scene.acks("PUBACK").len() == 30).await;
            let sent = scene.sent();
            assert!(sent.iter().all(|s| !s.duplicate), "none sent twice");
            assert_eq!(
                scene.acks("PUBACK"),
                sent.iter().filter(|s| s.qos > 0).map(|s| s.mid).collect::<Vec<_>>()
            );
            subscriber.shutdown().await;
            publisher.shutdown().await;
        }

        /// Issue 17, deliverable 4: `shutdown()` stops taking messages, lets the runs in flight
        /// finish, runs what is queued, acknowledges all of it in arrival order
        /// ([MQTT-4.6.0-2]) before DISCONNECT, and records a message that arrives meanwhile.
        #[tokio::test(flavor = "multi_thread")]
        async fn shutdown_drains_the_runs_and_the_queue_and_records_late_arrivals() {
            let scene = Scene::on(Broker::start());
            let subscriber = scene
                .subscriber(scene.options(), "drain/+", QoS::AtLeastOnce, |b| b.concurrency(2))
                .await;
            let messages: Vec<(String, String)> = (0..6)
                .map(|i| (format!("drain/{}", i % 2), format!("d-{i}")))
                .collect();
            let open = scene.gates.close_all(&payloads(&messages));
            let publisher = scene.publisher().await;
            publish_all(&publisher, QoS::AtLeastOnce, &messages).await;
            wait_until("2 runs and 4 waiting", || {
                scene.probe.active() == 2 && subscriber.queued() == 4
            })
            .await;

            // One poll: the shutdown has begun (it then waits for the runs).
            let mut shutdown = std::pin::pin!(subscriber.shutdown());
            tokio::select! {
                biased;
                () = &mut shutdown => panic!("shutdown ended while runs were held"),
                () = std::future::ready(()) => {}
            }
            publisher
                .publish_confirmed("drain/late", QoS::AtLeastOnce, false, "late")
                .await
                .expect("publish");
            wait_until("the late message's span", || !scene.spans("drain/late").is_empty()).await;
            assert_error(&scene.spans("drain/late")[0], "shutting_down");

            for gate in open.into_values() {
                let _ = gate.send(());
            }
            timeout(DEADLINE, shutdown).await.expect("shutdown ends");
            until_ended(&scene.probe, &payloads(&messages)).await;
            let disconnect = format!("Received DISCONNECT from {}", scene.id);
            assert!(scene.broker.wait_for_log(&disconnect, DEADLINE), "DISCONNECT");

            let sent = scene.sent();
            assert_eq!(sent.len(), 7, "six and the late one");
            assert_eq!(
                scene.acks("PUBACK"),
                sent[..6].iter().map(|s| s.mid).collect::<Vec<_>>(),
                "every message received before the shutdown, in arrival order; not the late one"
            );
            let log = scene.broker.log();
            let last_ack = log
                .rfind(&format!("Received PUBACK from {}", scene.id))
                .expect("PUBACK");
            assert!(last_ack < log.find(&disconnect).expect("DISCONNECT"), "acknowledged first");
            let processed = scene.telemetry.spans_of(SpanKind::Consumer);
            assert_eq!(processed.len(), 7);
            assert_eq!(
                processed
                    .iter()
                    .filter(|span| span.status == opentelemetry::trace::Status::Unset)
                    .count(),
                6,
                "the six ran and succeeded"
            );
            publisher.shutdown().await;
        }
    };
}

mod v4 {
    use super::v4_kit as kit;
    concurrency_tests!();
}

mod v5 {
    use super::v5_kit as kit;
    concurrency_tests!();
}
