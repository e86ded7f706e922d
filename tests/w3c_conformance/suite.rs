//! Runs the vendored W3C Trace Context suite (`tests/w3c-trace-context/test/test.py`) against a
//! service endpoint and reads its verdict.
//!
//! The harness listens on a port of its own (`HARNESS_PORT`): a free one is picked by binding
//! port 0, and the run is retried with another one if the harness finds it taken in the
//! meantime. The Python process is killed when the run ends, also on a panic, and is never
//! waited for longer than a deadline.

use std::io::Read;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// A whole run takes about two seconds; this only bounds a hung harness.
const RUN_DEADLINE: Duration = Duration::from_secs(120);
const POLL_INTERVAL: Duration = Duration::from_millis(20);
const PORT_ATTEMPTS: usize = 5;

const INSTALL_HINT: &str = "scripts/test.sh installs it (python3 -m pip install aiohttp, or \
     apt-get install -y python3 python3-aiohttp when there is no python3)";

/// The suite's folder in this repository.
fn suite_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/w3c-trace-context/test")
}

/// Fails with a clear message when Python 3 or `aiohttp` is missing.
pub fn require_python() {
    let probe = Command::new("python3")
        .args(["-c", "import aiohttp"])
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output();
    match probe {
        Err(error) => {
            panic!("python3 is needed for the W3C suite but cannot run ({error}); {INSTALL_HINT}")
        }
        Ok(output) if !output.status.success() => panic!(
            "python3 has no aiohttp, which the W3C suite needs; {INSTALL_HINT}\n{}",
            String::from_utf8_lossy(&output.stderr)
        ),
        Ok(_) => {}
    }
}

/// Which cases run: `SPEC_LEVEL` 1 (Trace Context Level 1: the Level 2 case is skipped) or 2.
/// `STRICT_LEVEL` is always 2 (every `tracestate` limit is checked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    One,
    Two,
}

impl Level {
    fn spec_level(self) -> &'static str {
        match self {
            Level::One => "1",
            Level::Two => "2",
        }
    }
}

/// The suite's verdict, read from unittest's summary.
#[derive(Debug)]
pub struct Verdict {
    pub ran: usize,
    pub skipped: usize,
    pub failures: usize,
    pub errors: usize,
    /// The names of the cases that failed or raised, in order.
    pub failed: Vec<String>,
    pub output: String,
}

impl Verdict {
    /// Cases run and not skipped.
    pub fn cases(&self) -> usize {
        self.ran - self.skipped
    }

    pub fn passed(&self) -> usize {
        self.cases() - self.failures - self.errors
    }

    /// Reads unittest's text output: `Ran N tests in ...`, then `OK`, `OK (skipped=1)` or
    /// `FAILED (failures=2, errors=1, skipped=1)`, and a `FAIL: name (...)` or `ERROR: ...`
    /// heading per failed case.
    fn parse(output: String) -> Option<Self> {
        let ran = output.lines().find_map(|line| {
            let rest = line.strip_prefix("Ran ")?;
            rest.split_whitespace().next()?.parse().ok()
        })?;
        let summary = output
            .lines()
            .rev()
            .find(|line| line.starts_with("OK") || line.starts_with("FAILED"))?;
        let count = |key: &str| {
            summary
                .split(['(', ')', ',', ' '])
                .find_map(|part| part.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
                .unwrap_or(0)
        };
        let failed = output
            .lines()
            .filter_map(|line| {
                let rest = line
                    .strip_prefix("FAIL: ")
                    .or_else(|| line.strip_prefix("ERROR: "))?;
                rest.split_whitespace().next().map(str::to_owned)
            })
            .collect();
        Some(Self {
            ran,
            skipped: count("skipped"),
            failures: count("failures"),
            errors: count("errors"),
            failed,
            output,
        })
    }
}

/// A child process killed (and reaped) when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn drain(mut stream: impl Read + Send + 'static) -> JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stream.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// A port that is free now (the harness binds it next; a clash is retried).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("bind 127.0.0.1:0")
}

/// Runs the suite once; `None` when the harness could not bind its port.
fn run_once(endpoint: &str, level: Level, port: u16) -> Option<Verdict> {
    let mut child = Command::new("python3")
        .arg("test.py")
        .arg(endpoint)
        .current_dir(suite_dir())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("HARNESS_HOST", "127.0.0.1")
        .env("HARNESS_PORT", port.to_string())
        .env("STRICT_LEVEL", "2")
        .env("SPEC_LEVEL", level.spec_level())
        .env_remove("HARNESS_DEBUG")
        .env_remove("HARNESS_BIND_HOST")
        .env_remove("HARNESS_BIND_PORT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot run python3: {error}; {INSTALL_HINT}"));
    let stdout = drain(child.stdout.take().expect("piped stdout"));
    let stderr = drain(child.stderr.take().expect("piped stderr"));
    let mut child = Killed(child);
    let deadline = Instant::now() + RUN_DEADLINE;
    while child.0.try_wait().expect("wait for python3").is_none() {
        assert!(
            Instant::now() < deadline,
            "the W3C suite did not finish within {RUN_DEADLINE:?}"
        );
        thread::sleep(POLL_INTERVAL);
    }
    let output = format!(
        "{}{}",
        stdout.join().unwrap_or_default(),
        stderr.join().unwrap_or_default()
    );
    if output.contains("Address already in use") || output.contains("address already in use") {
        return None;
    }
    Some(
        Verdict::parse(output.clone())
            .unwrap_or_else(|| panic!("no unittest summary in the suite's output:\n{output}")),
    )
}

/// Runs the whole suite at `level` against `endpoint` (`http://127.0.0.1:{port}/test`).
pub fn run(endpoint: &str, level: Level) -> Verdict {
    for _ in 0..PORT_ATTEMPTS {
        if let Some(verdict) = run_once(endpoint, level, free_port()) {
            return verdict;
        }
    }
    panic!("the W3C harness found its port taken {PORT_ATTEMPTS} times");
}

#[test]
fn the_summary_is_parsed() {
    let verdict = Verdict::parse(
        "test_a (__main__.T.test_a) ... FAIL\n\
         ======\nFAIL: test_a (__main__.T.test_a)\nERROR: test_b (__main__.T.test_b)\n\
         Ran 41 tests in 1.2s\n\nFAILED (failures=1, errors=1, skipped=1)\n"
            .to_owned(),
    )
    .unwrap();
    assert_eq!((verdict.cases(), verdict.passed()), (40, 38));
    assert_eq!(verdict.failed, ["test_a", "test_b"]);
    let verdict = Verdict::parse("Ran 41 tests in 0.9s\n\nOK (skipped=1)\n".to_owned()).unwrap();
    assert_eq!((verdict.cases(), verdict.passed()), (40, 40));
    assert!(Verdict::parse("Traceback: boom".to_owned()).is_none());
}
