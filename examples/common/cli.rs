//! A small command-line parser: `--flag value`, `--flag=value` and boolean `--flag`, checked
//! against the flags an example declares. Bad input is a [`Failure::Usage`] (exit code 2).

use std::fmt;
use std::process::ExitCode;
use std::time::Duration;

use super::BoxError;
use super::mqtt::{BrokerAddress, Version};

/// Why an example failed.
#[derive(Debug)]
pub enum Failure {
    /// The command line is wrong: the message and the usage are printed, exit code 2.
    Usage(String),
    /// Something went wrong at run time (the broker is unreachable, the database cannot be
    /// opened, ...): the message is printed, exit code 1.
    Runtime(BoxError),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Usage(message) => write!(f, "usage error: {message}"),
            Self::Runtime(error) => error.fmt(f),
        }
    }
}

impl<E: Into<BoxError>> From<E> for Failure {
    fn from(error: E) -> Self {
        Self::Runtime(error.into())
    }
}

/// A usage error.
pub fn usage(message: impl Into<String>) -> Failure {
    Failure::Usage(message.into())
}

/// Prints the failure, if any, and returns the exit code: 0, 1 (run time) or 2 (usage).
pub fn exit_code(usage: &str, outcome: Result<(), Failure>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => {
            eprintln!("error: {message}\n\n{usage}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(error)) => {
            eprintln!("error: {error}");
            let mut source = error.source();
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            ExitCode::FAILURE
        }
    }
}

/// One flag an example accepts.
#[derive(Debug, Clone, Copy)]
pub struct Flag {
    /// The name without `--`.
    pub name: &'static str,
    /// Whether it takes a value.
    pub takes_value: bool,
}

/// A flag with a value.
pub const fn value(name: &'static str) -> Flag {
    Flag {
        name,
        takes_value: true,
    }
}

/// A boolean flag.
pub const fn switch(name: &'static str) -> Flag {
    Flag {
        name,
        takes_value: false,
    }
}

/// The flags every role shares: broker, protocol, client id, connection timeout, exporter.
pub const CONNECTION_FLAGS: [Flag; 5] = [
    value("broker"),
    value("mqtt"),
    switch("envelope"),
    value("client-id"),
    value("connect-timeout"),
];

/// The parsed command line.
#[derive(Debug, Default, Clone)]
pub struct Args {
    values: Vec<(&'static str, Option<String>)>,
}

impl Args {
    /// Parses `args` (without the program name) against `flags`.
    pub fn parse(flags: &[Flag], args: &[String]) -> Result<Self, Failure> {
        let mut parsed = Args::default();
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let Some(body) = arg.strip_prefix("--") else {
                return Err(usage(format!("unexpected argument `{arg}`")));
            };
            let (name, inline) = match body.split_once('=') {
                Some((name, value)) => (name, Some(value.to_owned())),
                None => (body, None),
            };
            let Some(flag) = flags.iter().find(|flag| flag.name == name) else {
                return Err(usage(format!("unknown option `--{name}`")));
            };
            let value = match (flag.takes_value, inline) {
                (true, Some(value)) => Some(value),
                (true, None) => Some(
                    args.next()
                        .cloned()
                        .ok_or_else(|| usage(format!("`--{name}` needs a value")))?,
                ),
                (false, None) => None,
                (false, Some(_)) => return Err(usage(format!("`--{name}` takes no value"))),
            };
            parsed.values.retain(|(seen, _)| *seen != flag.name);
            parsed.values.push((flag.name, value));
        }
        Ok(parsed)
    }

    /// The value of `--name`, if given.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(seen, _)| *seen == name)
            .and_then(|(_, value)| value.as_deref())
    }

    /// Whether `--name` was given.
    pub fn has(&self, name: &str) -> bool {
        self.values.iter().any(|(seen, _)| *seen == name)
    }

    /// `--name` parsed as a positive integer, or `default`.
    pub fn count(&self, name: &str, default: u64) -> Result<u64, Failure> {
        match self.get(name) {
            None => Ok(default),
            Some(text) => match text.parse::<u64>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(usage(format!(
                    "`--{name}` must be a positive integer, got `{text}`"
                ))),
            },
        }
    }

    /// `--name` parsed as a duration, or `default`.
    pub fn duration(&self, name: &str, default: Duration) -> Result<Duration, Failure> {
        match self.get(name) {
            None => Ok(default),
            Some(text) => parse_duration(text).ok_or_else(|| {
                usage(format!(
                    "`--{name}`: `{text}` is not a duration like 2s, 500ms or 1.5"
                ))
            }),
        }
    }

    /// `--broker host:port`, or `default`.
    pub fn broker(&self, default: &str) -> Result<BrokerAddress, Failure> {
        let text = self.get("broker").unwrap_or(default);
        BrokerAddress::parse(text).map_err(usage)
    }

    /// `--mqtt 3|5` (default 5) and `--envelope`, which needs `--mqtt 3`.
    pub fn version(&self) -> Result<Version, Failure> {
        let version = match self.get("mqtt").unwrap_or("5") {
            "5" | "5.0" | "v5" => Version::V5,
            "3" | "3.1.1" | "4" | "v4" => Version::V4 {
                envelope: self.has("envelope"),
            },
            other => {
                return Err(usage(format!(
                    "`--mqtt` must be 3 (MQTT 3.1.1) or 5, got `{other}`"
                )));
            }
        };
        if version == Version::V5 && self.has("envelope") {
            return Err(usage(
                "`--envelope` is for `--mqtt 3`: MQTT 5 carries the trace context in user properties",
            ));
        }
        Ok(version)
    }
}

/// `2s`, `500ms`, `1m`, or plain seconds (`1.5`).
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (number, scale) = if let Some(ms) = text.strip_suffix("ms") {
        (ms, 0.001)
    } else if let Some(s) = text.strip_suffix('s') {
        (s, 1.0)
    } else if let Some(m) = text.strip_suffix('m') {
        (m, 60.0)
    } else {
        (text, 1.0)
    };
    let seconds = number.trim().parse::<f64>().ok()? * scale;
    (seconds.is_finite() && seconds > 0.0 && seconds < 1e9)
        .then(|| Duration::from_secs_f64(seconds))
}

/// The connection of a role from `--broker` (default `localhost:1883`), `--mqtt`, `--envelope`,
/// `--client-id` (default `default_client_id`) and `--connect-timeout` (default 5 s).
pub fn connection(
    args: &Args,
    default_client_id: &str,
) -> Result<super::mqtt::Connection, Failure> {
    let client_id = args.get("client-id").unwrap_or(default_client_id);
    if client_id.is_empty() || client_id.len() > 23 * 4 {
        return Err(usage("`--client-id` must be 1 to 92 characters"));
    }
    Ok(super::mqtt::Connection {
        broker: args.broker("localhost:1883")?,
        version: args.version()?,
        client_id: client_id.to_owned(),
        connect_timeout: args.duration("connect-timeout", Duration::from_secs(5))?,
    })
}

/// Resolves on Ctrl-C (never, when the signal cannot be watched).
pub async fn ctrl_c() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0"), None);
        assert_eq!(parse_duration("soon"), None);
    }
}
