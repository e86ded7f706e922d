//! The collector: subscribes the readings (`home/+/temperature` straight from the sensors, or
//! `cloud/+/telemetry` behind a gateway) and stores each in SQLite, inside a CLIENT database span
//! that is a child of the message's `process` span.
//!
//! The database span follows the OpenTelemetry database semantic conventions (checked against
//! `opentelemetry-semantic-conventions` 0.33): name `INSERT readings` (`{db.operation.name}
//! {db.collection.name}`), `db.system.name = sqlite`, `db.operation.name = INSERT`,
//! `db.collection.name = readings`, `db.query.summary`, and `db.query.text` as the parameterised
//! statement, never the values. Its duration goes to `db.client.operation.duration`.
//!
//! A message that is not a reading (not JSON, or without `sensor_id`, `temperature`,
//! `timestamp`) fails its handler: its `process` span ends as an error, it is counted
//! (`collector.readings{outcome=rejected}` and `messaging.process.duration` with `error.type`),
//! nothing is stored, and the collector goes on with the next message.
//!
//! Handlers run concurrently (`SubscriberBuilder::concurrency`, [`DEFAULT_CONCURRENCY`] by
//! default, `--concurrency` on the command line): while one waits for its insert, the others
//! parse and queue theirs. SQLite takes one writer at a time and rusqlite blocks, so the inserts
//! go to one writer thread that owns the connection; it commits every insert waiting at that
//! moment in one transaction (group commit, at most [`MAX_BATCH`] rows), and each handler returns
//! only once its row is committed, so a reading is acknowledged only once stored. The more
//! handlers wait, the more rows share one commit.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use opentelemetry::metrics::{Counter, Histogram};
use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt as _, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::SdkTracer;
use opentelemetry_semantic_conventions::attribute as semconv;
use rumqttc_opentelemetry::Instrumentation;
use serde_json::Value;
use tokio::sync::{oneshot, watch};

use super::Result;
use super::mqtt::{Connection, Handler, HandlerError, Incoming, Subscriber};

/// The table the readings go to.
pub const TABLE: &str = "readings";

/// The statement of one insert, as recorded in `db.query.text` (parameters, no values).
pub const INSERT: &str = "INSERT INTO readings (sensor_id, room, temperature, humidity, timestamp, \
                          topic, trace_id, stored_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";

const CREATE: &str = "CREATE TABLE IF NOT EXISTS readings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sensor_id TEXT NOT NULL,
    room TEXT,
    temperature REAL NOT NULL,
    humidity REAL,
    timestamp INTEGER NOT NULL,
    topic TEXT NOT NULL,
    trace_id TEXT NOT NULL,
    stored_at_ms INTEGER NOT NULL
)";

/// How many readings the collector handles at the same time by default.
pub const DEFAULT_CONCURRENCY: usize = 16;

/// The most inserts the writer commits in one transaction.
pub const MAX_BATCH: usize = 64;

/// Semconv's bucket boundaries for `db.client.operation.duration` (seconds).
const DB_DURATION_BUCKETS: [f64; 9] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0];

/// What the collector does.
#[derive(Debug, Clone)]
pub struct CollectorConfig {
    /// The connection.
    pub connection: Connection,
    /// What it subscribes.
    pub filter: String,
    /// The SQLite database file (`:memory:` for a database that lives as long as the process).
    pub db: String,
    /// How many readings are handled at the same time (at least 1).
    pub concurrency: usize,
}

/// The instrumentation of the collector: the version's propagation (the envelope is always
/// recognised on receipt).
pub fn instrumentation(
    config: &CollectorConfig,
    builder: rumqttc_opentelemetry::InstrumentationBuilder,
) -> Instrumentation {
    config.connection.version.configure(builder).build()
}

/// One stored row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The sensor.
    pub sensor_id: String,
    /// The room (set by the gateway; none for readings taken straight from a sensor).
    pub room: Option<String>,
    /// Degrees Celsius.
    pub temperature: f64,
    /// Relative humidity, percent.
    pub humidity: Option<f64>,
    /// Unix seconds of the measurement.
    pub timestamp: i64,
    /// The topic it arrived on.
    pub topic: String,
    /// The trace id of the message (hex), to find its trace.
    pub trace_id: String,
}

/// A message that is not a reading.
#[derive(Debug)]
pub struct MalformedReading(pub String);

impl std::fmt::Display for MalformedReading {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for MalformedReading {}

/// Reads a reading out of a JSON payload.
pub fn parse_reading(topic: &str, payload: &[u8]) -> Result<Row, MalformedReading> {
    let value: Value = serde_json::from_slice(payload)
        .map_err(|error| MalformedReading(format!("not JSON: {error}")))?;
    let field = |name: &str| value.get(name);
    let sensor_id = field("sensor_id")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
        .ok_or_else(|| MalformedReading("no `sensor_id` string".into()))?;
    let temperature = field("temperature")
        .and_then(Value::as_f64)
        .filter(|t| t.is_finite())
        .ok_or_else(|| MalformedReading("no `temperature` number".into()))?;
    let timestamp = field("timestamp")
        .and_then(Value::as_i64)
        .ok_or_else(|| MalformedReading("no `timestamp` integer".into()))?;
    Ok(Row {
        sensor_id: sensor_id.to_owned(),
        room: field("room").and_then(Value::as_str).map(str::to_owned),
        temperature,
        humidity: field("humidity").and_then(Value::as_f64),
        timestamp,
        topic: topic.to_owned(),
        trace_id: String::new(),
    })
}

/// A row to store inside a database span, child of `parent` (the `process` span); `done` is
/// answered once the row is committed (or failed).
struct Insert {
    row: Row,
    parent: Context,
    done: oneshot::Sender<Result<(), HandlerError>>,
}

/// What a handler asks of the database writer.
enum Request {
    Insert(Insert),
    /// Every row of the table, oldest first.
    Rows(oneshot::Sender<Result<Vec<Row>, String>>),
}

/// The one thread that writes to SQLite: it owns the connection and serves requests in the
/// order they come, committing the inserts waiting at the same time in one transaction.
struct Writer {
    db: rusqlite::Connection,
    tracer: SdkTracer,
    duration: Histogram<f64>,
}

impl Writer {
    fn open(path: &str, service: &super::telemetry::Service) -> Result<Self> {
        let db = if path == ":memory:" {
            rusqlite::Connection::open_in_memory()?
        } else {
            rusqlite::Connection::open(Path::new(path))
                .map_err(|error| format!("cannot open the database {path}: {error}"))?
        };
        db.pragma_update(None, "journal_mode", "WAL").ok();
        db.pragma_update(None, "synchronous", "NORMAL")?;
        db.execute(CREATE, [])?;
        use opentelemetry::metrics::MeterProvider as _;
        use opentelemetry::trace::TracerProvider as _;
        Ok(Self {
            db,
            tracer: service.tracer_provider.tracer("collector"),
            duration: service
                .meter_provider
                .meter("collector")
                .f64_histogram("db.client.operation.duration")
                .with_unit("s")
                .with_description("Duration of database client operations.")
                .with_boundaries(DB_DURATION_BUCKETS.to_vec())
                .build(),
        })
    }

    /// Serves requests until every sender is gone.
    fn run(mut self, requests: mpsc::Receiver<Request>) {
        while let Ok(first) = requests.recv() {
            let mut inserts = Vec::new();
            let mut queries = Vec::new();
            let mut next = Some(first);
            while let Some(request) = next {
                match request {
                    Request::Insert(insert) => inserts.push(insert),
                    Request::Rows(reply) => queries.push(reply),
                }
                next = (inserts.len() < MAX_BATCH)
                    .then(|| requests.try_recv().ok())
                    .flatten();
            }
            self.commit(inserts);
            for reply in queries {
                let _ = reply.send(self.rows().map_err(|error| error.to_string()));
            }
        }
    }

    /// Inserts the rows in one transaction and tells each handler how its row went.
    fn commit(&mut self, inserts: Vec<Insert>) {
        if inserts.is_empty() {
            return;
        }
        let (tracer, duration) = (&self.tracer, &self.duration);
        let outcome = self.db.transaction().and_then(|transaction| {
            let outcomes: Vec<Result<(), HandlerError>> = inserts
                .iter()
                .map(|request| insert(&transaction, tracer, duration, request))
                .collect();
            transaction.commit().map(|()| outcomes)
        });
        match outcome {
            Ok(outcomes) => {
                for (request, outcome) in inserts.into_iter().zip(outcomes) {
                    let _ = request.done.send(outcome);
                }
            }
            Err(error) => {
                for request in inserts {
                    let failure = HandlerError(format!("commit failed: {error}"));
                    let _ = request.done.send(Err(failure));
                }
            }
        }
    }

    fn rows(&self) -> rusqlite::Result<Vec<Row>> {
        let mut statement = self.db.prepare(
            "SELECT sensor_id, room, temperature, humidity, timestamp, topic, trace_id \
             FROM readings ORDER BY id",
        )?;
        statement
            .query_map([], |row| {
                Ok(Row {
                    sensor_id: row.get(0)?,
                    room: row.get(1)?,
                    temperature: row.get(2)?,
                    humidity: row.get(3)?,
                    timestamp: row.get(4)?,
                    topic: row.get(5)?,
                    trace_id: row.get(6)?,
                })
            })?
            .collect()
    }
}

/// Inserts the request's row inside a database span, child of its `process` span.
fn insert(
    db: &rusqlite::Connection,
    tracer: &SdkTracer,
    duration: &Histogram<f64>,
    Insert { row, parent, .. }: &Insert,
) -> Result<(), HandlerError> {
    let attributes = vec![
        KeyValue::new(semconv::DB_SYSTEM_NAME, "sqlite"),
        KeyValue::new(semconv::DB_OPERATION_NAME, "INSERT"),
        KeyValue::new(semconv::DB_COLLECTION_NAME, TABLE),
    ];
    let mut span = tracer
        .span_builder(format!("INSERT {TABLE}"))
        .with_kind(SpanKind::Client)
        .with_attributes(
            attributes
                .iter()
                .cloned()
                .chain([
                    KeyValue::new(semconv::DB_QUERY_SUMMARY, format!("INSERT {TABLE}")),
                    KeyValue::new(semconv::DB_QUERY_TEXT, INSERT),
                ])
                .collect::<Vec<_>>(),
        )
        .start_with_context(tracer, parent);
    let started = Instant::now();
    let outcome = db
        .prepare_cached(INSERT)
        .and_then(|mut statement| {
            statement.execute(rusqlite::params![
                row.sensor_id,
                row.room,
                row.temperature,
                row.humidity,
                row.timestamp,
                row.topic,
                row.trace_id,
                super::unix_millis(),
            ])
        })
        .map_err(|error| HandlerError(format!("insert failed: {error}")));
    let mut metric_attributes = attributes;
    if let Err(error) = &outcome {
        let error_type = "sqlite_error";
        span.set_attribute(KeyValue::new(semconv::ERROR_TYPE, error_type));
        span.set_status(Status::error(error.to_string()));
        metric_attributes.push(KeyValue::new(semconv::ERROR_TYPE, error_type));
    }
    duration.record(started.elapsed().as_secs_f64(), &metric_attributes);
    span.end();
    outcome.map(|_| ())
}

/// The writer's queue and the counters of a running collector.
struct Store {
    writer: mpsc::Sender<Request>,
    stored: watch::Sender<u64>,
    rejected: AtomicU64,
    readings: Counter<u64>,
}

impl Store {
    /// Opens the database and starts the writer thread (it ends when the store is dropped).
    fn open(path: &str, service: &super::telemetry::Service) -> Result<Self> {
        let writer = Writer::open(path, service)?;
        let (requests, queue) = mpsc::channel();
        std::thread::Builder::new()
            .name("sqlite-writer".to_owned())
            .spawn(move || writer.run(queue))?;
        use opentelemetry::metrics::MeterProvider as _;
        Ok(Self {
            writer: requests,
            stored: watch::Sender::new(0),
            rejected: AtomicU64::new(0),
            readings: service
                .meter_provider
                .meter("collector")
                .u64_counter("collector.readings")
                .with_unit("{reading}")
                .with_description("Messages the collector handled, by outcome (stored, rejected).")
                .build(),
        })
    }

    fn reject(&self, reason: &MalformedReading) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        self.readings
            .add(1, &[KeyValue::new("outcome", "rejected")]);
        tracing::warn!(%reason, "message rejected");
    }

    /// Parses the reading and waits until the writer has committed it.
    async fn handle(&self, message: Incoming, cx: Context) -> Result<(), HandlerError> {
        let mut row = match parse_reading(&message.topic, &message.payload) {
            Ok(row) => row,
            Err(reason) => {
                self.reject(&reason);
                return Err(HandlerError(format!(
                    "malformed reading on {}: {reason}",
                    message.topic
                )));
            }
        };
        row.trace_id = cx.span().span_context().trace_id().to_string();
        let (sensor, temperature, trace_id) =
            (row.sensor_id.clone(), row.temperature, row.trace_id.clone());
        let (done, committed) = oneshot::channel();
        self.writer
            .send(Request::Insert(Insert {
                row,
                parent: cx,
                done,
            }))
            .map_err(|_| HandlerError("the database writer has stopped".into()))?;
        committed
            .await
            .map_err(|_| HandlerError("the database writer has stopped".into()))??;
        self.readings.add(1, &[KeyValue::new("outcome", "stored")]);
        self.stored.send_modify(|stored| *stored += 1);
        tracing::info!(sensor = %sensor, temperature, trace_id = %trace_id, "stored");
        Ok(())
    }
}

fn handler(store: Arc<Store>) -> Handler {
    Arc::new(move |message: Incoming| {
        let store = store.clone();
        // The handler runs with its `process` span current: the insert's span is its child.
        let cx = Context::current();
        Box::pin(async move { store.handle(message, cx).await })
    })
}

/// A running collector.
pub struct Collector {
    subscriber: Subscriber,
    store: Arc<Store>,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector")
            .field("stored", &self.stored())
            .field("rejected", &self.rejected())
            .finish_non_exhaustive()
    }
}

impl Collector {
    /// Readings stored so far.
    pub fn stored(&self) -> u64 {
        *self.store.stored.borrow()
    }

    /// Messages rejected so far.
    pub fn rejected(&self) -> u64 {
        self.store.rejected.load(Ordering::Relaxed)
    }

    /// Waits until at least `n` readings are stored, at most `timeout`; says whether they are.
    pub async fn wait_stored(&self, n: u64, timeout: Duration) -> bool {
        let mut stored = self.store.stored.subscribe();
        tokio::time::timeout(timeout, stored.wait_for(|stored| *stored >= n))
            .await
            .is_ok_and(|waited| waited.is_ok())
    }

    /// Every row of the table, oldest first (read by the writer thread, after the inserts
    /// queued before this call).
    pub async fn rows(&self) -> Result<Vec<Row>> {
        let (reply, rows) = oneshot::channel();
        self.store
            .writer
            .send(Request::Rows(reply))
            .map_err(|_| "the database writer has stopped")?;
        Ok(rows
            .await
            .map_err(|_| "the database writer has stopped")??)
    }

    /// Processes what was received, disconnects.
    pub async fn shutdown(self) {
        self.subscriber.shutdown().await;
    }
}

/// Opens the database, starts the collector and waits until it is subscribed. Database spans and
/// metrics go to `service`'s providers.
pub async fn start(
    config: &CollectorConfig,
    instrumentation: Instrumentation,
    service: &super::telemetry::Service,
) -> Result<Collector> {
    let store = Arc::new(Store::open(&config.db, service)?);
    let subscriber = Subscriber::start(
        &config.connection,
        instrumentation,
        &config.filter,
        config.concurrency,
        |_publisher| handler(store.clone()),
    )?;
    subscriber.ready(&config.connection).await?;
    tracing::info!(
        broker = %config.connection.broker,
        filter = %config.filter,
        db = %config.db,
        concurrency = config.concurrency,
        "collector subscribed ({})",
        config.connection.version
    );
    Ok(Collector { subscriber, store })
}
