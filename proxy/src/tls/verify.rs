//! Certificate checks for mesh TLS live in `weft_proto::mesh_tls`, shared
//! with the controller (which verifies proxies when it relays tap).

pub use weft_proto::mesh_tls::*;
