//! Kubernetes YAML as the controller reads it (directory source): any text
//! parses or fails with an error, and whatever parses goes into the index,
//! whose problems, destinations and inbound policies compute without
//! panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_controller::index::{Index, IndexConfig};
use weft_controller::source::parse::parse_documents;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(objects) = parse_documents(text) else {
        return;
    };
    let mut index = Index::new(IndexConfig::default());
    for o in objects {
        index.apply(o);
    }
    let _ = index.problems();
    for key in ["198.19.0.10:80", "web.shop.svc.cluster.local:80", "198.18.0.3:8080"] {
        let _ = index.destination(key);
    }
    let _ = index.inbound("shop/web");
});
