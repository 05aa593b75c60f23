//! The injector webhook's AdmissionReview parsing and answer: any body is
//! refused cleanly or answered, and an answer names the request's uid.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use weft_controller::inject::{InjectorConfig, Layout};
use weft_controller::webhook::review::{Context, answer, parse};

fuzz_target!(|data: &[u8]| {
    let Ok(review) = parse(data) else {
        return;
    };
    let config = InjectorConfig::default();
    let ns = BTreeMap::new();
    let ctx = Context {
        config: &config,
        layout: Layout::Native,
        namespace_annotations: &ns,
    };
    let (out, _) = answer(&review, &ctx);
    assert_eq!(out["response"]["uid"], review["request"]["uid"]);
});
