//! The Prometheus text exposition, read back: what `weft stat` computes
//! from, as the proxies' /metrics serve it (weft_proto::metrics_text).

pub use weft_proto::metrics_text::{Sample, parse, sum};
