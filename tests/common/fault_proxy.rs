//! A TCP fault proxy between an MQTT client and a broker, for network-fault tests.
//!
//! [`FaultProxy::start`] listens on a free loopback port (port 0) and forwards every connection
//! to the broker. While it runs, a test switches faults on and off:
//!
//! * [`pass`](FaultProxy::pass): forward everything (the default);
//! * [`blackhole`](FaultProxy::blackhole): a silent partition. Sockets stay open, nothing is
//!   forwarded in either direction (bytes already read wait in the proxy), and a close by
//!   either side is held back; connections accepted meanwhile are never forwarded. When
//!   [`pass`](FaultProxy::pass) ends the partition, every connection that lived through it is
//!   closed (as a NAT or firewall that lost its state would), and new ones are forwarded again;
//! * [`reset`](FaultProxy::reset): every open connection is aborted with a TCP RST on both
//!   sides (`SO_LINGER` 0, then close);
//! * [`cut_next_publish`](FaultProxy::cut_next_publish): the next client-to-broker PUBLISH is
//!   forwarded only up to its first K bytes, then both sides are closed;
//! * [`set_latency`](FaultProxy::set_latency): every chunk is held for a fixed time per
//!   direction before it is written (pipelined: throughput stays, only delay is added).
//!
//! The proxy also reads the MQTT fixed header (MQTT 3.1.1 and 5, section 2.2: packet type and
//! flags in the first byte, then the Remaining Length varint) of the client-to-broker stream and
//! records each CONNECT and each PUBLISH it forwarded completely, with its DUP flag (section
//! 3.3.1.1), QoS, packet identifier, topic and payload; see [`FaultProxy::publishes`].
//!
//! Determinism: faults are switched synchronously from the test; the proxy never sleeps on its
//! own. Tests wait on conditions (counters, records, spans) with deadlines. Every task of the
//! proxy ends when it is dropped (the accept task owns the connection tasks, which own their
//! pumps).
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// MQTT control packet types (section 2.2.1) the proxy looks at.
const CONNECT: u8 = 1;
const PUBLISH: u8 = 3;

/// What the proxy does to the traffic; every connection watches it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Control {
    blackhole: bool,
    /// Bumped by each [`FaultProxy::reset`].
    reset_epoch: u64,
    /// Client to broker.
    latency_up: Duration,
    /// Broker to client.
    latency_down: Duration,
}

/// A CONNECT the client sent through the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRecord {
    /// The proxied connection (0, 1, 2, ... in accept order).
    pub connection: usize,
    /// 4 for MQTT 3.1.1, 5 for MQTT 5 (section 3.1.2.2).
    pub protocol_level: u8,
    pub client_id: String,
    /// Clean Session (3.1.1) / Clean Start (5), section 3.1.2.4.
    pub clean: bool,
}

/// A PUBLISH the client sent through the proxy, forwarded to the broker completely.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishRecord {
    /// The proxied connection it was sent on (0, 1, 2, ... in accept order).
    pub connection: usize,
    /// The DUP flag, bit 3 of the fixed header (section 3.3.1.1).
    pub dup: bool,
    pub qos: u8,
    pub retain: bool,
    /// The Packet Identifier (section 2.3.1); 0 for QoS 0, which has none.
    pub pkid: u16,
    pub topic: String,
    pub payload: Vec<u8>,
}

#[derive(Debug, Default)]
struct Records {
    connects: Vec<ConnectRecord>,
    publishes: Vec<PublishRecord>,
}

#[derive(Debug)]
struct Shared {
    upstream: SocketAddr,
    control: watch::Sender<Control>,
    /// An armed cut: K bytes of the next client-to-broker PUBLISH.
    cut: Mutex<Option<usize>>,
    records: Mutex<Records>,
    accepted: AtomicUsize,
    open: AtomicUsize,
    cuts_done: AtomicUsize,
}

/// The fault proxy; see the module docs. Its tasks end when it is dropped.
#[derive(Debug)]
pub struct FaultProxy {
    port: u16,
    shared: Arc<Shared>,
    accept_task: JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl FaultProxy {
    /// Listens on 127.0.0.1 on a free port and forwards to `upstream`. Call it inside a tokio
    /// runtime.
    pub fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = StdListener::bind(("127.0.0.1", 0)).expect("bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let port = listener.local_addr().expect("local_addr").port();
        let listener = TcpListener::from_std(listener).expect("inside a tokio runtime");
        let (control, _) = watch::channel(Control::default());
        let shared = Arc::new(Shared {
            upstream,
            control,
            cut: Mutex::new(None),
            records: Mutex::new(Records::default()),
            accepted: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            cuts_done: AtomicUsize::new(0),
        });
        let accept_task = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        FaultProxy {
            port,
            shared,
            accept_task,
        }
    }

    /// The proxy's port on 127.0.0.1: point the client here.
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// Forwards everything again; ends a blackhole (closing the connections it held).
    pub fn pass(&self) {
        self.shared.control.send_modify(|c| c.blackhole = false);
    }

    /// Starts a silent partition (see the module docs).
    pub fn blackhole(&self) {
        self.shared.control.send_modify(|c| c.blackhole = true);
    }

    /// Aborts every open connection with a TCP RST towards both the client and the broker.
    pub fn reset(&self) {
        self.shared.control.send_modify(|c| c.reset_epoch += 1);
    }

    /// Arms a cut: the next client-to-broker PUBLISH is forwarded up to its first `k` bytes
    /// (counted from its fixed header), then both sides of that connection are closed.
    pub fn cut_next_publish(&self, k: usize) {
        *self.shared.cut.lock().unwrap() = Some(k);
    }

    /// Whether an armed cut is still waiting for its PUBLISH.
    pub fn cut_armed(&self) -> bool {
        self.shared.cut.lock().unwrap().is_some()
    }

    /// How many connections were cut by [`cut_next_publish`](Self::cut_next_publish).
    pub fn cuts_done(&self) -> usize {
        self.shared.cuts_done.load(Ordering::SeqCst)
    }

    /// Delay added to every chunk, per direction (client to broker, broker to client).
    pub fn set_latency(&self, up: Duration, down: Duration) {
        self.shared.control.send_modify(|c| {
            c.latency_up = up;
            c.latency_down = down;
        });
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections currently open (accepted and not yet closed by the proxy).
    pub fn open(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }

    /// Every CONNECT forwarded so far, in order.
    pub fn connects(&self) -> Vec<ConnectRecord> {
        self.shared.records.lock().unwrap().connects.clone()
    }

    /// Every PUBLISH forwarded completely so far, client to broker, in order.
    pub fn publishes(&self) -> Vec<PublishRecord> {
        self.shared.records.lock().unwrap().publishes.clone()
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    // Dropping this future (the proxy's drop aborts it) drops the set, which aborts every
    // connection task.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                let id = shared.accepted.fetch_add(1, Ordering::SeqCst);
                shared.open.fetch_add(1, Ordering::SeqCst);
                let shared = Arc::clone(&shared);
                connections.spawn(async move {
                    connection(id, client, Arc::clone(&shared)).await;
                    shared.open.fetch_sub(1, Ordering::SeqCst);
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Why a pump stopped.
#[derive(Debug)]
enum PumpEnd {
    /// The source closed (or failed) and everything read was written.
    Closed,
    /// The armed cut was reached.
    Cut,
}

async fn connection(id: usize, client: TcpStream, shared: Arc<Shared>) {
    let mut control = shared.control.subscribe();
    let initial = *control.borrow_and_update();
    let reset_epoch = initial.reset_epoch;
    let mut partitioned = initial.blackhole;
    if partitioned {
        // Accepted during a partition: held, never forwarded, closed when the partition ends.
        loop {
            if control.changed().await.is_err() {
                return;
            }
            let now = *control.borrow_and_update();
            if now.reset_epoch != reset_epoch {
                let _ = client.set_zero_linger();
                return;
            }
            if !now.blackhole {
                return;
            }
        }
    }
    let Ok(broker) = TcpStream::connect(shared.upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = broker.set_nodelay(true);
    let client = Arc::new(client);
    let broker = Arc::new(broker);
    let mut pumps = JoinSet::new();
    pumps.spawn(pump(
        Arc::clone(&client),
        Arc::clone(&broker),
        Some(Scanner::new(id)),
        Arc::clone(&shared),
    ));
    pumps.spawn(pump(
        Arc::clone(&broker),
        Arc::clone(&client),
        None,
        Arc::clone(&shared),
    ));
    loop {
        tokio::select! {
            changed = control.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = *control.borrow_and_update();
                if now.reset_epoch != reset_epoch {
                    pumps.shutdown().await;
                    let _ = client.set_zero_linger();
                    let _ = broker.set_zero_linger();
                    return;
                }
                if now.blackhole {
                    partitioned = true;
                } else if partitioned {
                    return;
                }
            }
            ended = pumps.join_next() => {
                if let Some(Ok(PumpEnd::Cut)) = ended {
                    shared.cuts_done.fetch_add(1, Ordering::SeqCst);
                }
                // One direction is over (close, error or cut): close both sides.
                return;
            }
        }
    }
}

/// Copies `src` to `dst` with the configured latency, pausing during a blackhole. The
/// client-to-broker pump has a `scanner` (records packets, applies an armed cut).
async fn pump(
    src: Arc<TcpStream>,
    dst: Arc<TcpStream>,
    mut scanner: Option<Scanner>,
    shared: Arc<Shared>,
) -> PumpEnd {
    let upstream = scanner.is_some();
    let mut control = shared.control.subscribe();
    let mut queue: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    let mut source_done = false;
    let mut cut_reached = false;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if source_done && queue.is_empty() {
            return if cut_reached {
                PumpEnd::Cut
            } else {
                PumpEnd::Closed
            };
        }
        let now = *control.borrow_and_update();
        let paused = now.blackhole;
        let due = queue.front().map(|(at, _)| *at);
        tokio::select! {
            readable = src.readable(), if !source_done && !paused => {
                if readable.is_err() {
                    source_done = true;
                    continue;
                }
                match src.try_read(&mut buf) {
                    Ok(0) => source_done = true,
                    Ok(n) => {
                        let mut chunk = buf[..n].to_vec();
                        if let Some(scanner) = scanner.as_mut() {
                            let forward = scanner.feed(&chunk, &shared);
                            if forward < chunk.len() || scanner.cut_reached() {
                                chunk.truncate(forward);
                                cut_reached = scanner.cut_reached();
                            }
                            if cut_reached {
                                source_done = true;
                            }
                        }
                        let latency = if upstream { now.latency_up } else { now.latency_down };
                        if !chunk.is_empty() {
                            queue.push_back((Instant::now() + latency, chunk));
                        }
                    }
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => source_done = true,
                }
            }
            _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() && !paused => {
                let (_, chunk) = queue.pop_front().expect("a due chunk");
                if write_all(&dst, &chunk).await.is_err() {
                    return PumpEnd::Closed;
                }
            }
            changed = control.changed() => {
                if changed.is_err() {
                    return PumpEnd::Closed;
                }
            }
        }
    }
}

async fn write_all(stream: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// Splits the client-to-broker byte stream into MQTT packets (fixed header, section 2.2),
/// records CONNECTs and PUBLISHes, and applies an armed cut.
#[derive(Debug)]
struct Scanner {
    connection: usize,
    /// Bytes from the start of the current (incomplete) packet on.
    buf: Vec<u8>,
    /// Whether the first byte of the packet at `buf[0]` was already looked at (for the cut).
    start_seen: bool,
    /// Bytes of the current packet still to forward before the cut, once a cut applies to it.
    cut_left: Option<usize>,
    cut_reached: bool,
    protocol_level: u8,
}

impl Scanner {
    fn new(connection: usize) -> Self {
        Scanner {
            connection,
            buf: Vec::new(),
            start_seen: false,
            cut_left: None,
            cut_reached: false,
            protocol_level: 4,
        }
    }

    fn cut_reached(&self) -> bool {
        self.cut_reached
    }

    /// Takes in a chunk read from the client; returns how many of its bytes may be forwarded
    /// (all, unless the cut falls inside it).
    fn feed(&mut self, chunk: &[u8], shared: &Shared) -> usize {
        let mut forwarded = 0;
        while forwarded < chunk.len() {
            if !self.start_seen && self.cut_left.is_none() {
                // `chunk[forwarded]` is the first byte of a packet when `buf` is empty.
                if self.buf.is_empty() {
                    self.start_seen = true;
                    if chunk[forwarded] >> 4 == PUBLISH
                        && let Some(k) = shared.cut.lock().unwrap().take()
                    {
                        self.cut_left = Some(k);
                    }
                }
            }
            // Forward up to the end of the current packet when its length is known, else the
            // rest of the chunk; never past the cut.
            let mut take = chunk.len() - forwarded;
            if let Some(total) = packet_len(&self.buf, &chunk[forwarded..]) {
                take = take.min(total - self.buf.len());
            }
            if let Some(left) = self.cut_left {
                if left <= take {
                    self.cut_reached = true;
                    return forwarded + left;
                }
                self.cut_left = Some(left - take);
            }
            self.buf
                .extend_from_slice(&chunk[forwarded..forwarded + take]);
            forwarded += take;
            if let Some(total) = packet_len(&self.buf, &[])
                && self.buf.len() == total
            {
                let packet = std::mem::take(&mut self.buf);
                self.start_seen = false;
                self.record(&packet, shared);
            }
        }
        forwarded
    }

    fn record(&mut self, packet: &[u8], shared: &Shared) {
        let Some((header_len, _)) = fixed_header(packet) else {
            return;
        };
        let kind = packet[0] >> 4;
        let flags = packet[0] & 0x0F;
        let body = &packet[header_len..];
        let mut records = shared.records.lock().unwrap();
        match kind {
            CONNECT => {
                if let Some(connect) = parse_connect(self.connection, body) {
                    self.protocol_level = connect.protocol_level;
                    records.connects.push(connect);
                }
            }
            PUBLISH => {
                if let Some(publish) =
                    parse_publish(self.connection, flags, body, self.protocol_level)
                {
                    records.publishes.push(publish);
                }
            }
            _ => {}
        }
    }
}

/// Total length of the packet whose bytes start with `head` followed by `tail`, once its
/// Remaining Length (a 1-4 byte varint, section 1.5.5) is complete.
fn packet_len(head: &[u8], tail: &[u8]) -> Option<usize> {
    let bytes = head
        .iter()
        .chain(tail.iter())
        .copied()
        .take(5)
        .collect::<Vec<u8>>();
    fixed_header(&bytes).map(|(header_len, remaining)| header_len + remaining)
}

/// (fixed header length, Remaining Length) of a packet, when complete.
fn fixed_header(packet: &[u8]) -> Option<(usize, usize)> {
    let mut remaining = 0usize;
    for (i, byte) in packet.iter().skip(1).take(4).enumerate() {
        remaining |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((2 + i, remaining));
        }
    }
    None
}

fn read_u16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]))
}

fn read_string(bytes: &[u8], at: usize) -> Option<(String, usize)> {
    let len = usize::from(read_u16(bytes, at)?);
    let text = bytes.get(at + 2..at + 2 + len)?;
    Some((String::from_utf8_lossy(text).into_owned(), at + 2 + len))
}

/// A variable byte integer (section 1.5.5): (value, bytes used).
fn read_varint(bytes: &[u8], at: usize) -> Option<(usize, usize)> {
    let mut value = 0usize;
    for i in 0..4 {
        let byte = *bytes.get(at + i)?;
        value |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// CONNECT (section 3.1): protocol name, level, flags, keep-alive, [v5 properties], client id.
fn parse_connect(connection: usize, body: &[u8]) -> Option<ConnectRecord> {
    let (_name, at) = read_string(body, 0)?;
    let protocol_level = *body.get(at)?;
    let flags = *body.get(at + 1)?;
    let mut at = at + 4;
    if protocol_level == 5 {
        let (len, used) = read_varint(body, at)?;
        at += used + len;
    }
    let (client_id, _) = read_string(body, at)?;
    Some(ConnectRecord {
        connection,
        protocol_level,
        client_id,
        clean: flags & 0x02 != 0,
    })
}

/// PUBLISH (section 3.3): flags DUP (bit 3), QoS (bits 2-1), RETAIN (bit 0); topic, packet id
/// when QoS > 0, [v5 properties], payload.
fn parse_publish(
    connection: usize,
    flags: u8,
    body: &[u8],
    protocol_level: u8,
) -> Option<PublishRecord> {
    let qos = (flags >> 1) & 0x03;
    let (topic, mut at) = read_string(body, 0)?;
    let mut pkid = 0;
    if qos > 0 {
        pkid = read_u16(body, at)?;
        at += 2;
    }
    if protocol_level == 5 {
        let (len, used) = read_varint(body, at)?;
        at += used + len;
    }
    Some(PublishRecord {
        connection,
        dup: flags & 0x08 != 0,
        qos,
        retain: flags & 0x01 != 0,
        pkid,
        topic,
        payload: body.get(at..)?.to_vec(),
    })
}
