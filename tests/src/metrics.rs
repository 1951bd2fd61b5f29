//! Scraping the relay's `GET /metrics` endpoint over a plain TCP socket, and reading values out
//! of the exposition text.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{field, RelayProcess, WAIT};

/// The `[metrics] listen` value that picks a free loopback port (the relay logs the bound one).
pub const ANY_PORT: &str = "\"127.0.0.1:0\"";

/// One HTTP response, as the test saw it.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The status line and header lines, as sent (CRLF-separated).
    pub head: String,
    /// The body as text.
    pub body: String,
}

impl HttpResponse {
    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.split("\r\n").skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then_some(value.trim())
        })
    }
}

/// The metrics address the relay logged (`event=metrics_listening`).
pub async fn metrics_addr(relay: &RelayProcess) -> SocketAddr {
    let line = relay.wait_for_event("metrics_listening", &[], WAIT).await;
    match field(&line, "addr").and_then(|a| a.parse().ok()) {
        Some(addr) => addr,
        None => panic!("metrics_listening without an address: {line}"),
    }
}

/// Sends `request` (raw bytes) to `addr` and reads the response until the server closes.
pub async fn http_raw(addr: SocketAddr, request: &[u8]) -> HttpResponse {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(request).await?;
        let mut out = Vec::new();
        stream.read_to_end(&mut out).await?;
        Ok::<_, std::io::Error>(out)
    };
    let out = match tokio::time::timeout(WAIT, exchange).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => panic!("HTTP to {addr}: {e}"),
        Err(_) => panic!("HTTP to {addr}: no complete response within {WAIT:?}"),
    };
    let text = String::from_utf8_lossy(&out).into_owned();
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        panic!("HTTP to {addr}: no end of head in {text:?}");
    };
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("HTTP to {addr}: bad status line in {head:?}"));
    HttpResponse {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

/// `GET path` over HTTP/1.1.
pub async fn http_get(addr: SocketAddr, path: &str) -> HttpResponse {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    http_raw(addr, request.as_bytes()).await
}

/// One scrape of `/metrics`: each sample line as (series, value).
#[derive(Debug, Clone)]
pub struct Scrape {
    /// The exposition text.
    pub text: String,
    samples: Vec<(String, f64)>,
}

impl Scrape {
    /// Parses exposition text: `series value` lines; `#` lines are skipped.
    pub fn parse(text: &str) -> Scrape {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                Some((series.to_string(), value.parse().ok()?))
            })
            .collect();
        Scrape {
            text: text.to_string(),
            samples,
        }
    }

    /// The value of `series` exactly as printed (`name{label="v",...}`), if present.
    pub fn get(&self, series: &str) -> Option<f64> {
        self.samples
            .iter()
            .find(|(s, _)| s == series)
            .map(|(_, v)| *v)
    }

    /// The value of `series`; panics with the exposition when it is missing.
    pub fn value(&self, series: &str) -> f64 {
        match self.get(series) {
            Some(v) => v,
            None => panic!("no series {series} in:\n{}", self.text),
        }
    }

    /// Every sample whose series starts with `prefix`.
    pub fn starting_with(&self, prefix: &str) -> Vec<(String, f64)> {
        self.samples
            .iter()
            .filter(|(s, _)| s.starts_with(prefix))
            .cloned()
            .collect()
    }
}

/// `GET /metrics`, checked to be a 200 with the OpenMetrics type, parsed.
pub async fn scrape(addr: SocketAddr) -> Scrape {
    let response = http_get(addr, "/metrics").await;
    assert_eq!(response.status, 200, "{response:?}");
    let content_type = response.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("application/openmetrics-text")
            || content_type.starts_with("text/plain"),
        "content type {content_type:?}"
    );
    Scrape::parse(&response.body)
}

/// Scrapes until every `(series, value)` in `expected` holds (counters move after the log
/// lines and replies the test waits for); panics with what differs after `timeout`.
pub async fn wait_for_values(
    addr: SocketAddr,
    expected: &[(&str, f64)],
    timeout: Duration,
) -> Scrape {
    let deadline = Instant::now() + timeout;
    loop {
        let scrape = scrape(addr).await;
        let wrong: Vec<String> = expected
            .iter()
            .filter(|(series, value)| scrape.get(series) != Some(*value))
            .map(|(series, value)| format!("{series}: want {value}, got {:?}", scrape.get(series)))
            .collect();
        if wrong.is_empty() {
            return scrape;
        }
        if Instant::now() >= deadline {
            panic!(
                "metrics did not reach the expected values within {timeout:?}:\n{}\n--- last scrape ---\n{}",
                wrong.join("\n"),
                scrape.text
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrape_parses_series_with_labels_and_skips_comments() {
        let text = "# HELP relay_x_total Things.\n# TYPE relay_x counter\n\
relay_x_total{kind=\"a b\",n=\"1\"} 3\nrelay_y 0\n# EOF\n";
        let scrape = Scrape::parse(text);
        assert_eq!(scrape.get("relay_x_total{kind=\"a b\",n=\"1\"}"), Some(3.0));
        assert_eq!(scrape.value("relay_y"), 0.0);
        assert_eq!(scrape.get("relay_x"), None);
        assert_eq!(scrape.starting_with("relay_x_total{").len(), 1);
    }

    #[test]
    fn headers_are_found_case_insensitively() {
        let response = HttpResponse {
            status: 200,
            head: "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nAllow: GET".into(),
            body: String::new(),
        };
        assert_eq!(response.header("content-type"), Some("text/plain"));
        assert_eq!(response.header("ALLOW"), Some("GET"));
        assert_eq!(response.header("x"), None);
    }
}
