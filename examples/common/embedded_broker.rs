//! An MQTT broker inside the demo's process: rumqttd 0.20 (feature `embedded-broker`), so the
//! demo needs nothing installed.
//!
//! rumqttd cannot listen on port 0 and has no shutdown: a free port is found by binding
//! 127.0.0.1:0 first, rumqttd is started on it in a thread of its own, and it lives until the
//! process exits (the demo ends with `std::process::exit`). Should another program take the
//! port in between, the start is retried on a new one.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use rumqttd::{Config, ConnectionSettings, RouterConfig, ServerSettings};

use super::Result;
use super::mqtt::Version;

/// How long rumqttd gets to accept connections after it was started.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

fn config(address: SocketAddr, version: Version) -> Config {
    let server = ServerSettings {
        name: "demo".to_owned(),
        listen: address,
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
    let servers = HashMap::from([("1".to_owned(), server)]);
    let (v4, v5) = match version {
        Version::V5 => (None, Some(servers)),
        Version::V4 { .. } => (Some(servers), None),
    };
    Config {
        id: 0,
        router: RouterConfig {
            max_connections: 64,
            max_outgoing_packet_count: 200,
            max_segment_size: 1024 * 1024,
            max_segment_count: 10,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4,
        v5,
        ..Config::default()
    }
}

/// Starts rumqttd on a free loopback port for `version` (rumqttd serves MQTT 3.1.1 and MQTT 5
/// on different listeners) and returns its address once it accepts connections.
pub fn start(version: Version) -> Result<SocketAddr> {
    let mut last_error = String::new();
    for _ in 0..5 {
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
        let mut broker = rumqttd::Broker::new(config(address, version));
        let server = thread::Builder::new()
            .name("rumqttd".to_owned())
            .spawn(move || {
                // Returns only when its listener threads end (a failed bind).
                if let Err(error) = broker.start() {
                    tracing::error!(%error, "rumqttd stopped");
                }
            })?;
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline && !server.is_finished() {
            if TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
                return Ok(address);
            }
            thread::sleep(Duration::from_millis(20));
        }
        last_error = format!("rumqttd did not accept connections on {address}");
    }
    Err(last_error.into())
}
