//! The second broker of the test suite: rumqttd 0.20, the broker of the rumqtt project (the
//! same project as rumqttc), in a child process.
//!
//! rumqttd has no shutdown API and cannot listen on port 0, so it cannot live inside a test
//! process that starts many brokers. [`Rumqttd::start`] picks two free loopback ports (rumqttd
//! serves MQTT 3.1.1 and MQTT 5 on separate listeners), re-executes the current test binary with
//! [`RUMQTTD_ENV`] set, running only the test named [`ENTRY_TEST`], which calls
//! [`serve_from_env`] and serves until it is killed. The child is SIGKILLed when the
//! [`Rumqttd`] is dropped (also when the test panics).
//!
//! A test file includes it with `#[path = "common/rumqttd.rs"] mod rumqttd_broker;` (after `mod
//! common;`), so that only that test binary links rumqttd, and declares the entry point:
//!
//! ```ignore
//! #[test]
//! #[ignore = "the rumqttd child process of tests/common/rumqttd.rs"]
//! fn rumqttd_broker_process() {
//!     rumqttd_broker::serve_from_env();
//! }
//! ```
//!
//! [`AnyBroker`] and [`BrokerKind`] let one scenario run on mosquitto and on rumqttd.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use ::rumqttd::{Config, ConnectionSettings, RouterConfig, ServerSettings};

use crate::common::broker::{Broker, HOST};

/// Set in the child's environment: `v4-port v5-port`.
pub const RUMQTTD_ENV: &str = "RUMQTTC_OTEL_TEST_RUMQTTD";
/// The name of the test that is the child's entry point.
pub const ENTRY_TEST: &str = "rumqttd_broker_process";
/// Bound on waiting for the child to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
const START_ATTEMPTS: usize = 5;

fn free_port() -> u16 {
    let listener = TcpListener::bind((HOST, 0)).expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

fn server(name: &str, port: u16) -> HashMap<String, ServerSettings> {
    let settings = ServerSettings {
        name: name.to_owned(),
        listen: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        tls: None,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 10_000,
            max_payload_size: 256 * 1024,
            max_inflight_count: 100,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    HashMap::from([("1".to_owned(), settings)])
}

/// The broker configuration: both listeners, rumqttd's router defaults otherwise.
fn config(v4_port: u16, v5_port: u16) -> Config {
    Config {
        id: 0,
        router: RouterConfig {
            max_connections: 1024,
            max_outgoing_packet_count: 200,
            max_segment_size: 1024 * 1024,
            max_segment_count: 10,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(server("v4", v4_port)),
        v5: Some(server("v5", v5_port)),
        ..Config::default()
    }
}

/// The child's entry point: serves on the ports of [`RUMQTTD_ENV`] until killed. Without the
/// variable (a plain `cargo test -- --ignored` run) it returns at once.
pub fn serve_from_env() {
    let Ok(ports) = std::env::var(RUMQTTD_ENV) else {
        return;
    };
    let (v4, v5) = ports.split_once(' ').expect("`v4-port v5-port`");
    let mut broker = ::rumqttd::Broker::new(config(
        v4.parse().expect("v4 port"),
        v5.parse().expect("v5 port"),
    ));
    // Returns only when its listeners end (a failed bind): the parent sees the exit and retries.
    let outcome = broker.start();
    eprintln!("rumqttd stopped: {outcome:?}");
    std::process::exit(1);
}

/// A rumqttd child process, SIGKILLed on drop.
#[derive(Debug)]
pub struct Rumqttd {
    child: Child,
    v4_port: u16,
    v5_port: u16,
}

impl Drop for Rumqttd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Rumqttd {
    /// Starts rumqttd on two free loopback ports and waits until both accept connections.
    pub fn start() -> Rumqttd {
        let exe = std::env::current_exe().expect("the test binary");
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let (v4_port, v5_port) = (free_port(), free_port());
            if v4_port == v5_port {
                continue;
            }
            let child = Command::new(&exe)
                .args([ENTRY_TEST, "--exact", "--ignored", "--nocapture"])
                .env(RUMQTTD_ENV, format!("{v4_port} {v5_port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn the rumqttd child");
            let mut broker = Rumqttd {
                child,
                v4_port,
                v5_port,
            };
            match broker.wait_ready() {
                Ok(()) => return broker,
                Err(error) => failures.push(error),
            }
        }
        panic!(
            "rumqttd did not start after {START_ATTEMPTS} attempts: {}",
            failures.join("; ")
        );
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("the child exited ({status})"));
            }
            let up = |port: u16| {
                let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            };
            if up(self.v4_port) && up(self.v5_port) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("no listener within {READY_TIMEOUT:?}"));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The pid of the child process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Which broker implementation a scenario runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    Mosquitto,
    Rumqttd,
}

/// A running broker of either kind.
#[derive(Debug)]
pub enum AnyBroker {
    Mosquitto(Box<Broker>),
    Rumqttd(Rumqttd),
}

impl AnyBroker {
    pub fn start(kind: BrokerKind) -> AnyBroker {
        match kind {
            BrokerKind::Mosquitto => AnyBroker::Mosquitto(Box::new(Broker::start())),
            BrokerKind::Rumqttd => AnyBroker::Rumqttd(Rumqttd::start()),
        }
    }

    pub fn kind(&self) -> BrokerKind {
        match self {
            AnyBroker::Mosquitto(_) => BrokerKind::Mosquitto,
            AnyBroker::Rumqttd(_) => BrokerKind::Rumqttd,
        }
    }

    pub fn host(&self) -> &'static str {
        HOST
    }

    /// The port for MQTT `version` 4 (3.1.1) or 5 (mosquitto serves both on one).
    pub fn port(&self, version: u8) -> u16 {
        match (self, version) {
            (AnyBroker::Mosquitto(broker), _) => broker.port(),
            (AnyBroker::Rumqttd(broker), 4) => broker.v4_port,
            (AnyBroker::Rumqttd(broker), 5) => broker.v5_port,
            (_, other) => panic!("MQTT version {other}?"),
        }
    }
}
