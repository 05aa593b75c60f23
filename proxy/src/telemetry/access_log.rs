//! Access logs to stdout, one line per request, when the workload asks
//! (`WEFT_PROXY_ACCESS_LOG=json|apache`). Lines are formatted on the
//! request's task and handed to a writer thread through a bounded queue: a
//! slow stdout drops lines (counted in `access_log_dropped_total`) rather
//! than slowing requests.

pub use crate::config::telemetry::AccessLogFormat as Format;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::mpsc;
use std::time::SystemTime;

use prometheus_client::metrics::counter::Counter;

/// Lines waiting for stdout at most.
const QUEUE: usize = 4096;

/// One finished request, as logged.
#[derive(Debug, Default, serde::Serialize)]
pub struct Entry<'a> {
    /// RFC 3339, UTC, when the request arrived.
    pub time: String,
    pub direction: &'a str,
    pub client_addr: String,
    pub method: &'a str,
    pub authority: &'a str,
    pub path: &'a str,
    pub protocol: &'a str,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u16>,
    pub duration_ms: f64,
    pub response_bytes: u64,
    pub client_id: Option<&'a str>,
    pub server_id: Option<&'a str>,
    pub route: Option<&'a str>,
    pub backend: Option<&'a str>,
    pub endpoint: Option<String>,
    pub retries: u32,
    /// The proxy's own error, when it answered for the upstream.
    pub error: Option<&'a str>,
    pub trace_id: Option<String>,
    #[serde(skip)]
    pub referer: Option<&'a str>,
    #[serde(skip)]
    pub user_agent: Option<&'a str>,
    #[serde(skip)]
    pub started: Option<SystemTime>,
}

impl Entry<'_> {
    pub fn format(&self, format: Format) -> String {
        match format {
            Format::Json => serde_json::to_string(self).unwrap_or_default(),
            Format::Apache => self.apache(),
        }
    }

    /// `%h %l %u %t "%r" %>s %b "%{Referer}i" "%{User-agent}i"`
    fn apache(&self) -> String {
        let mut s = String::with_capacity(160);
        let host = self
            .client_addr
            .rsplit_once(':')
            .map_or(self.client_addr.as_str(), |(h, _)| h)
            .trim_matches(['[', ']']);
        let user = self.client_id.unwrap_or("-");
        let time = self.started.map(apache_time).unwrap_or_default();
        let bytes = if self.response_bytes == 0 {
            "-".to_string()
        } else {
            self.response_bytes.to_string()
        };
        let _ = write!(
            s,
            "{host} - {user} [{time}] \"{} {} {}\" {} {bytes} \"{}\" \"{}\"",
            self.method,
            escape(self.path),
            self.protocol,
            self.status,
            escape(self.referer.unwrap_or("-")),
            escape(self.user_agent.unwrap_or("-")),
        );
        s
    }
}

/// Quotes and backslashes escaped, control bytes as `\xNN`, so a hostile
/// header cannot forge a log line.
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

pub fn rfc3339(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn apache_time(t: SystemTime) -> String {
    const FORMAT: &[time::format_description::FormatItem<'_>] = time::macros::format_description!(
        "[day]/[month repr:short]/[year]:[hour]:[minute]:[second] +0000"
    );
    time::OffsetDateTime::from(t)
        .format(FORMAT)
        .unwrap_or_default()
}

/// The queue to the writer thread.
#[derive(Debug)]
pub struct AccessLog {
    pub format: Format,
    tx: mpsc::SyncSender<String>,
    dropped: Counter,
}

impl AccessLog {
    /// Starts the writer thread, writing to `out` (stdout in the proxy).
    pub fn start(
        format: Format,
        dropped: Counter,
        mut out: Box<dyn std::io::Write + Send>,
    ) -> Self {
        let (tx, rx) = mpsc::sync_channel::<String>(QUEUE);
        std::thread::Builder::new()
            .name("weft-access-log".into())
            .spawn(move || {
                while let Ok(line) = rx.recv() {
                    let _ = writeln!(out, "{line}");
                    // Flush once the queue is empty: batches under load,
                    // prompt when quiet.
                    while let Ok(line) = rx.try_recv() {
                        let _ = writeln!(out, "{line}");
                    }
                    let _ = out.flush();
                }
            })
            .expect("spawning the access log writer");
        Self {
            format,
            tx,
            dropped,
        }
    }

    pub fn log(&self, entry: &Entry<'_>) {
        if self.tx.try_send(entry.format(self.format)).is_err() {
            self.dropped.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry<'static> {
        Entry {
            time: rfc3339(SystemTime::UNIX_EPOCH),
            direction: "inbound",
            client_addr: "198.18.0.2:41234".into(),
            method: "GET",
            authority: "web.shop.svc.cluster.local",
            path: "/a \"quoted\"\n",
            protocol: "HTTP/1.1",
            status: 503,
            duration_ms: 1.5,
            response_bytes: 17,
            client_id: Some("spiffe://cluster.local/ns/shop/sa/frontend"),
            error: Some("connection refused"),
            started: Some(SystemTime::UNIX_EPOCH),
            user_agent: Some("curl/8"),
            ..Default::default()
        }
    }

    #[test]
    fn apache_combined_with_escapes() {
        assert_eq!(
            entry().format(Format::Apache),
            "198.18.0.2 - spiffe://cluster.local/ns/shop/sa/frontend [01/Jan/1970:00:00:00 +0000] \
             \"GET /a \\\"quoted\\\"\\x0a HTTP/1.1\" 503 17 \"-\" \"curl/8\""
        );
    }

    #[test]
    fn json_has_every_field() {
        let v: serde_json::Value = serde_json::from_str(&entry().format(Format::Json)).unwrap();
        assert_eq!(v["time"], "1970-01-01T00:00:00Z");
        assert_eq!(v["status"], 503);
        assert_eq!(v["error"], "connection refused");
        assert_eq!(v["retries"], 0);
        assert_eq!(v["path"], "/a \"quoted\"\n");
        assert!(v.get("grpc_status").is_none());
        assert!(v.get("user_agent").is_none());
    }

    #[test]
    fn lines_reach_the_writer_and_overflow_is_counted() {
        #[derive(Clone, Default)]
        struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let dropped = Counter::default();
        let log = AccessLog::start(Format::Json, dropped.clone(), Box::new(sink.clone()));
        log.log(&entry());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while sink.0.lock().unwrap().is_empty() {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1);
        assert_eq!(dropped.get(), 0);
    }
}
