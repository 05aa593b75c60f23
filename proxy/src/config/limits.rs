//! Limits against overload and abusive clients (see the settings).

use std::time::Duration;

use super::ConfigError;
use super::settings::Vars;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections both listeners may hold open at once.
    pub max_connections: usize,
    /// HTTP requests being served at once; more get 503.
    pub max_in_flight_requests: usize,
    /// Largest request header block.
    pub max_header_bytes: usize,
    /// An HTTP/1 request's head must arrive within this.
    pub header_read_timeout: Duration,
    /// HTTP connections idle this long are closed. Zero: no idle timeout.
    pub http_idle_timeout: Duration,
    pub h2_max_concurrent_streams: u32,
    /// Per second, on average, of the frames an HTTP/2 client can flood
    /// with.
    pub h2_max_control_frames: u32,
}

impl Limits {
    pub(super) fn load(v: &Vars) -> Result<Self, ConfigError> {
        let max_header_bytes = match v.count("WEFT_PROXY_MAX_HEADER_BYTES")? {
            n if n >= 1024 => n,
            _ => {
                return Err(v.invalid(
                    "WEFT_PROXY_MAX_HEADER_BYTES",
                    "too small for any request",
                    "at least 1024 bytes, e.g. 65536",
                ));
            }
        };
        let u32_count =
            |var| -> Result<u32, ConfigError> { Ok(v.count(var)?.min(u32::MAX as usize) as u32) };
        Ok(Self {
            max_connections: v.count("WEFT_PROXY_MAX_CONNECTIONS")?,
            max_in_flight_requests: v.count("WEFT_PROXY_MAX_IN_FLIGHT_REQUESTS")?,
            max_header_bytes,
            header_read_timeout: v.duration("WEFT_PROXY_HEADER_READ_TIMEOUT")?,
            http_idle_timeout: v.duration("WEFT_PROXY_HTTP_IDLE_TIMEOUT")?,
            h2_max_concurrent_streams: u32_count("WEFT_PROXY_H2_MAX_CONCURRENT_STREAMS")?,
            h2_max_control_frames: u32_count("WEFT_PROXY_H2_MAX_CONTROL_FRAMES")?,
        })
    }
}

impl Default for Limits {
    fn default() -> Self {
        super::Config::default().limits
    }
}
