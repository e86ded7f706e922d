//! Just enough HTTP/1.1 over tokio TCP for the W3C harness: a server that reads one request per
//! connection and answers with a JSON body, and a client that POSTs a JSON body.
//!
//! Field values are read as RFC 9110 section 5.5 defines them: without the white space (SP,
//! HTAB) before and after, which is not part of the value. Field names keep their spelling and
//! order; several fields of one name stay several entries, in order.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::timeout;

const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 1024 * 1024;
const IO_DEADLINE: Duration = Duration::from_secs(10);

/// A request as the service sees it (any method and path: the harness POSTs to the endpoint it
/// was given).
#[derive(Debug)]
pub struct Request {
    /// In order, names as sent, values without surrounding white space.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// A response: a status code and a JSON body.
pub struct Response {
    pub status: u16,
    pub body: String,
}

impl Response {
    pub fn json(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            body: body.into(),
        }
    }
}

fn trim_ows(value: &[u8]) -> &[u8] {
    let is_ows = |byte: &u8| *byte == b' ' || *byte == b'\t';
    let start = value.iter().position(|b| !is_ows(b)).unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !is_ows(b))
        .map_or(start, |at| at + 1);
    &value[start..end]
}

/// Reads a request or response head and its `Content-Length` body.
async fn read_message(
    stream: &mut TcpStream,
) -> std::io::Result<(Vec<String>, Vec<(String, String)>, Vec<u8>)> {
    let invalid =
        |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let mut buffer = Vec::new();
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            break at;
        }
        if buffer.len() > MAX_HEAD {
            return Err(invalid("head too long"));
        }
        let mut chunk = [0_u8; 4096];
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Err(invalid("closed before the end of the head"));
        }
        buffer.extend_from_slice(&chunk[..read]);
    };
    let mut lines = buffer[..head_end]
        .split(|&byte| byte == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line));
    let start_line = lines.next().ok_or_else(|| invalid("no start line"))?;
    let start: Vec<String> = String::from_utf8_lossy(start_line)
        .split(' ')
        .map(str::to_owned)
        .collect();
    let mut headers = Vec::new();
    for line in lines {
        let colon = line
            .iter()
            .position(|&byte| byte == b':')
            .ok_or_else(|| invalid("header without ':'"))?;
        let name = String::from_utf8_lossy(&line[..colon]).into_owned();
        let value = String::from_utf8_lossy(trim_ows(&line[colon + 1..])).into_owned();
        headers.push((name, value));
    }
    let length: usize = headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .map(|(_, value)| value.parse().map_err(|_| invalid("bad Content-Length")))
        .transpose()?
        .unwrap_or(0);
    if length > MAX_BODY {
        return Err(invalid("body too long"));
    }
    let mut body = buffer[head_end + 4..].to_vec();
    while body.len() < length {
        let mut chunk = vec![0_u8; length - body.len()];
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Err(invalid("closed before the end of the body"));
        }
        body.extend_from_slice(&chunk[..read]);
    }
    body.truncate(length);
    Ok((start, headers, body))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        _ => "Error",
    }
}

/// A server on a port of its own (127.0.0.1, port 0), one task per connection. Aborted when
/// dropped.
pub struct Server {
    pub port: u16,
    accept: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Server {
    pub async fn start<H, F>(handler: H) -> Self
    where
        H: Fn(Request) -> F + Send + Sync + 'static,
        F: Future<Output = Response> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local address").port();
        let handler = Arc::new(handler);
        let accept = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let handler = Arc::clone(&handler);
                tokio::spawn(async move {
                    let response = match timeout(IO_DEADLINE, read_message(&mut stream)).await {
                        Ok(Ok((start, headers, body))) if start.len() == 3 => {
                            handler(Request { headers, body }).await
                        }
                        _ => Response::json(400, "null"),
                    };
                    let head = format!(
                        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        response.status,
                        reason(response.status),
                        response.body.len()
                    );
                    let _ = stream.write_all(head.as_bytes()).await;
                    let _ = stream.write_all(response.body.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Self { port, accept }
    }
}

/// POSTs `body` (JSON) to `url` (`http://host:port/path`) with `headers` and returns the status.
pub async fn post(url: &str, headers: &[(String, String)], body: &str) -> std::io::Result<u16> {
    let invalid = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, what);
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| invalid(format!("not an http URL: {url}")))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let exchange = async {
        let mut stream = TcpStream::connect(authority).await?;
        let mut head = format!(
            "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        let (start, _, _) = read_message(&mut stream).await?;
        start
            .get(1)
            .and_then(|status| status.parse().ok())
            .ok_or_else(|| invalid(format!("no status in {start:?}")))
    };
    timeout(IO_DEADLINE, exchange)
        .await
        .map_err(|_| invalid(format!("no answer from {url} within {IO_DEADLINE:?}")))?
}
