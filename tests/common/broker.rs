//! A real mosquitto broker for integration tests (see DESIGN.md, "Real parts, not mocks").
//!
//! Every [`Broker`] owns one `mosquitto` process, listening on its own free port on
//! 127.0.0.1, with its own config file, log file and persistence directory in a fresh
//! temporary directory. The process is SIGKILLed and the directory removed when the
//! [`Broker`] is dropped, which also happens when the test panics (unwinding).
//!
//! The fixture is synchronous (std only). Its blocking calls (`start`, `restart`,
//! `mosquitto_sub`, the `wait_for_*` helpers) block the calling thread, so from async
//! tests drive rumqttc event loops in spawned tasks on a multi-thread runtime
//! (`#[tokio::test(flavor = "multi_thread")]`), or poll them inline between fixture calls.
//!
//! Logging: mosquitto writes its log with `log_dest stderr` (unbuffered), and both its
//! stdout and stderr are appended to `broker.log` in the temporary directory, so
//! [`Broker::log`] always shows everything up to now, across restarts.
//! (`log_dest stdout` is block-buffered by libc when stdout is a file: nothing would be
//! visible before the broker exits.)
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The loopback address every broker listens on.
pub const HOST: &str = "127.0.0.1";

/// Bound on waiting for the broker to accept TCP connections after a (re)start.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on waiting for the broker to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How many times a (re)start is retried when mosquitto exits during startup
/// (typically "Address already in use").
const START_ATTEMPTS: usize = 5;
/// Bound on waiting for mosquitto_sub's subscription to be acknowledged.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default bound for [`MosquittoSub::wait`].
const SUB_WAIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Interval of the readiness polls (each poll has a deadline, this only paces them).
const POLL_INTERVAL: Duration = Duration::from_millis(10);

const NOT_FOUND_HINT: &str = "install it with `apt-get install -y mosquitto mosquitto-clients` (the README's test command does this)";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Finds an executable: first in `dirs`, then in `PATH`.
fn find_executable(name: &str, dirs: &[&str]) -> Option<PathBuf> {
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    dirs.iter()
        .map(PathBuf::from)
        .chain(path_dirs)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Path of the `mosquitto` broker binary, or a panic telling how to install it.
pub fn mosquitto_binary() -> PathBuf {
    find_executable("mosquitto", &["/usr/sbin", "/usr/local/sbin"])
        .unwrap_or_else(|| panic!("mosquitto not found: {NOT_FOUND_HINT}"))
}

/// Path of one of the mosquitto client tools (`mosquitto_pub`, `mosquitto_sub`,
/// `mosquitto_passwd`), or a panic telling how to install it.
pub fn mosquitto_tool(name: &str) -> PathBuf {
    find_executable(name, &["/usr/bin", "/usr/local/bin", "/usr/sbin"])
        .unwrap_or_else(|| panic!("{name} not found: {NOT_FOUND_HINT}"))
}

/// A fresh, unique temporary directory (pid + process-wide counter + time).
fn unique_temp_dir(prefix: &str) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("{prefix}-{}-{n}-{nanos}", std::process::id()));
    fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create temp dir {}: {e}", dir.display()));
    dir
}

/// A unique MQTT client id, handy for tests (`prefix-pid-counter`).
pub fn unique_client_id(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// Asks the kernel for a currently free port on 127.0.0.1.
fn free_port() -> u16 {
    let listener = TcpListener::bind((HOST, 0)).expect("cannot bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
    // The listener is dropped here; mosquitto binds the port next (with a retry on a race).
}

/// Waits for `child` to exit, up to `timeout`. Returns `None` if it is still running.
fn wait_with_deadline(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() >= deadline => return None,
            Ok(None) => thread::sleep(POLL_INTERVAL),
            Err(e) => panic!("waiting for process {}: {e}", child.id()),
        }
    }
}

/// Sends SIGTERM (via `kill(1)`, std has no signal API and `libc` is no dependency).
fn send_sigterm(pid: u32) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Whether a process with this pid exists (and is not a zombie).
pub fn pid_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Field 3 (after "pid (comm)") is the state; 'Z' is a zombie, 'X' dead.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !matches!(rest.trim_start().chars().next(), Some('Z' | 'X')))
            .unwrap_or(true),
        Err(_) => false,
    }
}

/// Last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Strips mosquitto's `1700000000: ` timestamp prefix from a log line.
fn strip_timestamp(line: &str) -> &str {
    match line.split_once(": ") {
        Some((ts, rest)) if !ts.is_empty() && ts.bytes().all(|b| b.is_ascii_digit()) => rest,
        _ => line,
    }
}

/// Replays a mosquitto 2.0 log (`connection_messages true`) and returns the ids of the
/// clients connected at its end.
///
/// * `New client connected from ADDR as ID (p2, c1, k60...).` adds ID;
/// * `Client ID disconnected...`, `Client ID closed its connection.`,
///   `Client ID has exceeded timeout, disconnecting.`,
///   `Client ID already connected, closing old connection.` (session take-over, followed
///   by a `New client connected` line for the new connection),
///   `Socket error on client ID, disconnecting.`, `Bad socket read/write on client ID: ...`
///   remove ID;
/// * `mosquitto version X starting` (a restart) clears everything.
pub fn connected_clients_from_log(log: &str) -> BTreeSet<String> {
    const GONE_ENDINGS: [&str; 4] = [
        " disconnected",
        " closed its connection",
        " has exceeded timeout",
        " already connected, closing old connection",
    ];
    let mut clients = BTreeSet::new();
    for line in log.lines() {
        let msg = strip_timestamp(line);
        if msg.starts_with("mosquitto version ") && msg.ends_with(" starting") {
            clients.clear();
        } else if let Some(rest) = msg.strip_prefix("New client connected from ") {
            let id = rest
                .split_once(" as ")
                .and_then(|(_, id_and_flags)| id_and_flags.rsplit_once(" (p"))
                .map(|(id, _)| id);
            if let Some(id) = id {
                clients.insert(id.to_string());
            }
        } else {
            let gone = if let Some(rest) = msg.strip_prefix("Client ") {
                GONE_ENDINGS
                    .iter()
                    .find_map(|ending| rest.rfind(ending).map(|i| &rest[..i]))
            } else if let Some(rest) = msg.strip_prefix("Socket error on client ") {
                rest.rsplit_once(", disconnecting").map(|(id, _)| id)
            } else if let Some(rest) = msg.strip_prefix("Bad socket read/write on client ") {
                rest.rsplit_once(": ").map(|(id, _)| id)
            } else {
                None
            };
            if let Some(id) = gone {
                clients.remove(id);
            }
        }
    }
    clients
}

/// Options for a [`Broker`]; create with [`Broker::builder`].
#[derive(Debug, Clone)]
pub struct BrokerBuilder {
    persistence: bool,
    deny_topics: Option<Vec<String>>,
    users: Vec<(String, String)>,
    allow_anonymous: bool,
    extra_config: Vec<String>,
}

impl Default for BrokerBuilder {
    fn default() -> Self {
        Self {
            persistence: false,
            deny_topics: None,
            users: Vec::new(),
            allow_anonymous: true,
            extra_config: Vec::new(),
        }
    }
}

impl BrokerBuilder {
    /// `persistence true` with `persistence_location` in the broker's temp dir, saved on
    /// SIGTERM ([`Broker::stop`], [`Broker::restart`]) and after every change
    /// (`autosave_on_changes true`, `autosave_interval 1`), so sessions, subscriptions and
    /// queued QoS>0 messages also survive [`Broker::kill`] (a crash) most of the time.
    pub fn persistence(mut self, on: bool) -> Self {
        self.persistence = on;
        self
    }

    /// Writes an `acl_file` that allows everything (`topic readwrite #` and
    /// `topic read $SYS/#`) except the given topics (`topic deny TOPIC`, MQTT wildcards
    /// allowed). mosquitto answers an MQTT 5 QoS 1 publish there with PUBACK reason 0x87
    /// NotAuthorized (MQTT 3.1.1 has no such reason: the publish is acknowledged and
    /// dropped). The rules are written for anonymous clients and for every
    /// [`password`](Self::password) user.
    pub fn acl(mut self, deny_topics: &[&str]) -> Self {
        self.deny_topics = Some(deny_topics.iter().map(|t| t.to_string()).collect());
        self
    }

    /// Adds a user to a `password_file` (made with `mosquitto_passwd -b`). Anonymous
    /// clients stay allowed unless [`allow_anonymous(false)`](Self::allow_anonymous).
    pub fn password(mut self, user: &str, pass: &str) -> Self {
        self.users.push((user.to_string(), pass.to_string()));
        self
    }

    /// `allow_anonymous` (default `true`).
    pub fn allow_anonymous(mut self, allow: bool) -> Self {
        self.allow_anonymous = allow;
        self
    }

    /// Raw lines appended to the config file, e.g. `"max_inflight_messages 2"`,
    /// `"max_queued_messages 10"`, `"sys_interval 1"`.
    pub fn extra_config(mut self, lines: &str) -> Self {
        self.extra_config.push(lines.to_string());
        self
    }

    /// `max_inflight_messages N` (QoS 1/2 messages in flight per client, 0 = unlimited).
    pub fn max_inflight(self, n: u32) -> Self {
        self.extra_config(&format!("max_inflight_messages {n}"))
    }

    /// `max_queued_messages N` (messages queued per client beyond the in-flight ones).
    pub fn max_queued(self, n: u32) -> Self {
        self.extra_config(&format!("max_queued_messages {n}"))
    }

    /// A bridge (mosquitto.conf `connection`) from this broker to `remote`: this broker
    /// connects to `remote` as client `{name}` with `protocol` (`mqttv50`, `mqttv311`) and
    /// forwards `topic` in both directions at QoS 1 (`topic PATTERN both 1`). With `mqttv50`
    /// the bridge subscribes with No Local, so nothing loops back. Wait for it with
    /// [`Broker::wait_for_bridge`] on `remote`.
    pub fn bridge(self, name: &str, remote: &Broker, topic: &str, protocol: &str) -> Self {
        self.extra_config(&format!(
            "connection {name}\n\
             address {HOST}:{port}\n\
             remote_clientid {name}\n\
             bridge_protocol_version {protocol}\n\
             topic {topic} both 1\n\
             cleansession true\n\
             notifications false\n\
             start_type automatic\n\
             restart_timeout 1\n",
            port = remote.port()
        ))
    }

    /// Writes the files and starts the broker; panics (with the log tail) if it cannot.
    pub fn start(self) -> Broker {
        let binary = mosquitto_binary();
        let dir = unique_temp_dir("rumqttc-otel-mosquitto");
        let data_dir = dir.join("data");
        fs::create_dir_all(&data_dir).expect("create persistence dir");

        let acl_path = dir.join("acl");
        if let Some(deny) = &self.deny_topics {
            fs::write(&acl_path, acl_file(deny, &self.users)).expect("write acl file");
        }
        let passwd_path = dir.join("passwd");
        if !self.users.is_empty() {
            File::create(&passwd_path).expect("create password file");
            let tool = mosquitto_tool("mosquitto_passwd");
            for (user, pass) in &self.users {
                let out = Command::new(&tool)
                    .arg("-b")
                    .arg(&passwd_path)
                    .arg(user)
                    .arg(pass)
                    .output()
                    .expect("run mosquitto_passwd");
                assert!(
                    out.status.success(),
                    "mosquitto_passwd failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }

        let mut broker = Broker {
            binary,
            port: 0,
            conf_path: dir.join("mosquitto.conf"),
            log_path: dir.join("broker.log"),
            data_dir,
            acl_path: self.deny_topics.is_some().then_some(acl_path),
            passwd_path: (!self.users.is_empty()).then_some(passwd_path),
            dir,
            options: self,
            child: None,
        };

        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            broker.port = free_port();
            broker.write_config();
            match broker.spawn_and_wait_ready() {
                Ok(()) => return broker,
                Err(e) => failures.push(e),
            }
        }
        panic!(
            "mosquitto did not start after {START_ATTEMPTS} attempts:\n{}",
            failures.join("\n---\n")
        );
    }
}

/// The ACL file: rules for anonymous clients first (`topic` lines before any `user`
/// line), then the same rules for each password user.
fn acl_file(deny: &[String], users: &[(String, String)]) -> String {
    let rules = |out: &mut String| {
        out.push_str("topic readwrite #\n");
        out.push_str("topic read $SYS/#\n");
        for topic in deny {
            out.push_str(&format!("topic deny {topic}\n"));
        }
    };
    let mut out = String::from(
        "# written by tests/common/broker.rs\n\
         # anonymous clients: the topic lines before any user line\n",
    );
    rules(&mut out);
    for (user, _) in users {
        out.push_str(&format!("\nuser {user}\n"));
        rules(&mut out);
    }
    out
}

/// A running mosquitto broker, killed (SIGKILL) with its temp dir removed on drop.
#[derive(Debug)]
pub struct Broker {
    binary: PathBuf,
    port: u16,
    dir: PathBuf,
    conf_path: PathBuf,
    log_path: PathBuf,
    data_dir: PathBuf,
    acl_path: Option<PathBuf>,
    passwd_path: Option<PathBuf>,
    options: BrokerBuilder,
    child: Option<Child>,
}

impl Broker {
    /// A default broker: anonymous, no persistence, no ACL.
    pub fn start() -> Broker {
        Broker::builder().start()
    }

    pub fn builder() -> BrokerBuilder {
        BrokerBuilder::default()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Always `"127.0.0.1"`.
    pub fn host(&self) -> &'static str {
        HOST
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port))
    }

    /// The pid of the running mosquitto process, `None` after `stop`/`kill`.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The broker's temp dir (config, log, acl, passwd, `data/` persistence).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config_path(&self) -> &Path {
        &self.conf_path
    }

    pub fn config(&self) -> String {
        fs::read_to_string(&self.conf_path).unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The broker log so far (all starts of this broker, appended).
    pub fn log(&self) -> String {
        let mut bytes = Vec::new();
        if let Ok(mut f) = File::open(&self.log_path) {
            let _ = f.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log(), n)
    }

    fn log_len(&self) -> u64 {
        fs::metadata(&self.log_path).map(|m| m.len()).unwrap_or(0)
    }

    fn log_since(&self, offset: u64) -> String {
        let mut bytes = Vec::new();
        if let Ok(mut f) = File::open(&self.log_path) {
            let _ = f.read_to_end(&mut bytes);
        }
        let start = (offset as usize).min(bytes.len());
        String::from_utf8_lossy(&bytes[start..]).into_owned()
    }

    /// Waits until a log line contains `needle`; `false` on timeout.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().lines().any(|l| l.contains(needle)) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Waits until a line containing `then` follows a line containing `first` (e.g.
    /// `"Sending SUBACK to ID"` then `"Saving in-memory database"`, to know an autosave
    /// happened after a change); `false` on timeout.
    pub fn wait_for_log_after(&self, first: &str, then: &str, timeout: Duration) -> bool {
        self.wait_until(timeout, |b| {
            b.log()
                .lines()
                .skip_while(|l| !l.contains(first))
                .skip(1)
                .any(|l| l.contains(then))
        })
    }

    /// Waits until the bridge `name` (see [`BrokerBuilder::bridge`]) of another broker has
    /// connected to this one and its subscription is acknowledged, so that messages flow both
    /// ways; `false` on timeout.
    pub fn wait_for_bridge(&self, name: &str, timeout: Duration) -> bool {
        self.wait_for_log(&format!("Sending SUBACK to {name}"), timeout)
    }

    /// Ids of the currently connected clients, from the broker's connection log
    /// messages (see [`connected_clients_from_log`]). Immediate and exact, unlike
    /// `$SYS/broker/clients/connected` (published every `sys_interval` seconds, and
    /// counting the subscriber that reads it). Includes mosquitto_pub/mosquitto_sub
    /// clients started by the helpers below.
    pub fn connected_clients(&self) -> BTreeSet<String> {
        connected_clients_from_log(&self.log())
    }

    /// Number of currently connected clients (see [`Broker::connected_clients`]).
    pub fn client_count(&self) -> usize {
        self.connected_clients().len()
    }

    pub fn is_client_connected(&self, client_id: &str) -> bool {
        self.connected_clients().contains(client_id)
    }

    /// Waits until exactly `n` clients are connected; `false` on timeout.
    pub fn wait_for_client_count(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |b| b.client_count() == n)
    }

    /// Waits until the client is connected (`true`) or disconnected (`false`).
    pub fn wait_for_client(&self, client_id: &str, connected: bool, timeout: Duration) -> bool {
        self.wait_until(timeout, |b| b.is_client_connected(client_id) == connected)
    }

    fn wait_until(&self, timeout: Duration, mut cond: impl FnMut(&Self) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if cond(self) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Whether the mosquitto process is running.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Graceful stop: SIGTERM (mosquitto saves its persistence file), waits up to 10 s,
    /// then SIGKILL. No-op when not running.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            send_sigterm(child.id());
            if wait_with_deadline(&mut child, STOP_TIMEOUT).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// Crash: SIGKILL, nothing saved beyond what autosave already wrote.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the broker again after `stop`/`kill`, on the same port with the same config
    /// and persistence dir; retries while the port cannot be bound yet.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "broker is already running");
        let mut failures = Vec::new();
        for attempt in 0..START_ATTEMPTS {
            if attempt > 0 {
                thread::sleep(Duration::from_millis(200 * attempt as u64));
            }
            match self.spawn_and_wait_ready() {
                Ok(()) => return,
                Err(e) => failures.push(e),
            }
        }
        panic!(
            "mosquitto did not restart on port {} after {START_ATTEMPTS} attempts:\n{}",
            self.port,
            failures.join("\n---\n")
        );
    }

    /// `stop()` (SIGTERM, persistence saved) then `start_again()` on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    fn write_config(&self) {
        let mut conf = format!(
            "# written by tests/common/broker.rs\n\
             listener {port} {HOST}\n\
             allow_anonymous {anon}\n\
             # stay root, do not drop privileges to the `mosquitto` user\n\
             user root\n\
             # stderr is unbuffered; stdout would be block-buffered into the log file\n\
             log_dest stderr\n\
             log_type all\n\
             log_timestamp true\n\
             connection_messages true\n",
            port = self.port,
            anon = self.options.allow_anonymous,
        );
        if self.options.persistence {
            conf.push_str(&format!(
                "persistence true\n\
                 persistence_location {}/\n\
                 autosave_on_changes true\n\
                 autosave_interval 1\n",
                self.data_dir.display()
            ));
        } else {
            conf.push_str("persistence false\n");
        }
        if let Some(acl) = &self.acl_path {
            conf.push_str(&format!("acl_file {}\n", acl.display()));
        }
        if let Some(passwd) = &self.passwd_path {
            conf.push_str(&format!("password_file {}\n", passwd.display()));
        }
        for extra in &self.options.extra_config {
            conf.push_str(extra);
            if !extra.ends_with('\n') {
                conf.push('\n');
            }
        }
        fs::write(&self.conf_path, conf).expect("write mosquitto.conf");
    }

    /// Spawns mosquitto and waits until it logged "running" and accepts TCP connections.
    /// On failure the process is killed and the error (with the log) returned.
    fn spawn_and_wait_ready(&mut self) -> Result<(), String> {
        let offset = self.log_len();
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open broker.log");
        let _ = writeln!(
            log,
            "==== tests/common/broker.rs: starting {} -c {} (port {})",
            self.binary.display(),
            self.conf_path.display(),
            self.port
        );
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(&self.conf_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", self.binary.display()));
        self.child = Some(child);

        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let child = self.child.as_mut().expect("child");
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Err(format!(
                    "mosquitto exited during startup on port {} ({status}); log:\n{}",
                    self.port,
                    tail(&self.log_since(offset), 40)
                ));
            }
            let running = self
                .log_since(offset)
                .lines()
                .any(|l| l.contains("mosquitto version") && l.ends_with(" running"));
            if running
                && TcpStream::connect_timeout(&self.addr(), Duration::from_millis(200)).is_ok()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(format!(
                    "mosquitto did not accept connections on {} within {READY_TIMEOUT:?}; log:\n{}",
                    self.addr(),
                    tail(&self.log_since(offset), 40)
                ));
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Runs `mosquitto_pub -h 127.0.0.1 -p PORT ARGS...` to completion.
    pub fn mosquitto_pub(&self, args: &[&str]) -> Output {
        Command::new(mosquitto_tool("mosquitto_pub"))
            .arg("-h")
            .arg(HOST)
            .arg("-p")
            .arg(self.port.to_string())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run mosquitto_pub")
    }

    /// Spawns `mosquitto_sub -h 127.0.0.1 -p PORT -i ID ARGS...` and returns once the
    /// broker has sent its SUBACK (the broker logs `Sending SUBACK to ID`), so a publish
    /// made after this call is routed to it. A unique `-i` client id is added unless
    /// `args` has `-i`/`--id`. Pass `-C count` and/or `-W seconds` so it exits by itself.
    pub fn mosquitto_sub(&self, args: &[&str]) -> MosquittoSub {
        let sub = self.spawn_mosquitto_sub(args);
        sub.wait_subscribed(self, SUBSCRIBE_TIMEOUT);
        sub
    }

    /// Like [`Broker::mosquitto_sub`] but does not wait for the SUBACK.
    pub fn spawn_mosquitto_sub(&self, args: &[&str]) -> MosquittoSub {
        let given_id = args
            .windows(2)
            .find(|w| w[0] == "-i" || w[0] == "--id")
            .map(|w| w[1].to_string());
        assert!(
            given_id.is_some() || !args.iter().any(|a| *a == "-I" || *a == "--id-prefix"),
            "use -i, not -I/--id-prefix, so the fixture knows the client id"
        );
        let client_id = given_id
            .clone()
            .unwrap_or_else(|| unique_client_id("mosquitto-sub"));
        // Before spawning, so the SUBACK line cannot precede the offset.
        let log_offset = self.log_len();
        let mut cmd = Command::new(mosquitto_tool("mosquitto_sub"));
        cmd.arg("-h").arg(HOST).arg("-p").arg(self.port.to_string());
        if given_id.is_none() {
            cmd.arg("-i").arg(&client_id);
        }
        let mut child = cmd
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mosquitto_sub");

        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("stdout");
        let lines_w = Arc::clone(&lines);
        let stdout_thread = thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                match line {
                    Ok(line) => lines_w.lock().unwrap().push(line),
                    Err(_) => break,
                }
            }
        });
        let mut stderr = child.stderr.take().expect("stderr");
        let stderr_thread = thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        MosquittoSub {
            child: Some(child),
            client_id,
            log_offset,
            lines,
            stdout_thread: Some(stdout_thread),
            stderr_thread: Some(stderr_thread),
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "---- mosquitto log ({}), last 60 lines:\n{}\n----",
                self.log_path.display(),
                self.log_tail(60)
            );
        }
        self.kill();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// What a finished `mosquitto_sub` produced.
#[derive(Debug)]
pub struct SubOutput {
    /// `None` if it was killed because it outlived the wait timeout.
    pub status: Option<ExitStatus>,
    /// stdout lines (one per message with `-F '%j'`).
    pub lines: Vec<String>,
    pub stderr: String,
}

/// A running `mosquitto_sub`, killed on drop.
#[derive(Debug)]
pub struct MosquittoSub {
    child: Option<Child>,
    client_id: String,
    log_offset: u64,
    lines: Arc<Mutex<Vec<String>>>,
    stdout_thread: Option<JoinHandle<()>>,
    stderr_thread: Option<JoinHandle<String>>,
}

impl MosquittoSub {
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// Waits until the broker logged `Sending SUBACK to ID`; panics on timeout or when
    /// mosquitto_sub exits first.
    /// (mosquitto_sub's own `-d` "Subscribed" output cannot be used: its stdout is
    /// block-buffered when piped and only flushed after each received message.)
    pub fn wait_subscribed(&self, broker: &Broker, timeout: Duration) {
        let needle = format!("Sending SUBACK to {}", self.client_id);
        let deadline = Instant::now() + timeout;
        loop {
            let log = broker.log_since(self.log_offset);
            if log.lines().any(|l| strip_timestamp(l) == needle) {
                return;
            }
            let exited = match &self.child {
                Some(child) => {
                    // try_wait needs &mut; probe /proc instead to keep &self.
                    !pid_alive(child.id())
                }
                None => true,
            };
            if exited || Instant::now() >= deadline {
                panic!(
                    "mosquitto_sub {} did not subscribe ({}); lines: {:?}; broker log:\n{}",
                    self.client_id,
                    if exited { "it exited" } else { "timeout" },
                    self.lines(),
                    broker.log_tail(30)
                );
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// The stdout lines received so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits until at least `n` lines were received; returns them (possibly fewer on
    /// timeout).
    pub fn wait_for_lines(&self, n: usize, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let lines = self.lines();
            if lines.len() >= n || Instant::now() >= deadline {
                return lines;
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Waits (up to 30 s, then kills it) for mosquitto_sub to exit and returns its stdout
    /// lines.
    pub fn wait(self) -> Vec<String> {
        self.wait_timeout(SUB_WAIT_TIMEOUT).lines
    }

    /// Waits up to `timeout` for mosquitto_sub to exit (kills it after that).
    pub fn wait_timeout(mut self, timeout: Duration) -> SubOutput {
        let mut child = self.child.take().expect("child");
        let status = wait_with_deadline(&mut child, timeout);
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(t) = self.stdout_thread.take() {
            let _ = t.join();
        }
        let stderr = self
            .stderr_thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        SubOutput {
            status,
            lines: self.lines(),
            stderr,
        }
    }

    /// Kills mosquitto_sub now and returns what it printed.
    pub fn kill(self) -> SubOutput {
        self.wait_timeout(Duration::ZERO)
    }
}

impl Drop for MosquittoSub {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
