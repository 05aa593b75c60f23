//! HTTP/1 request heads and bodies through the smuggling check, split at
//! every boundary: the verdict never depends on how the bytes arrived.
#![no_main]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use libfuzzer_sys::fuzz_target;
use weft_proxy::http::framing::{Framing, NONE};

fn verdict(pieces: &[&[u8]]) -> u64 {
    let flag = Arc::new(AtomicU64::new(NONE));
    let mut f = Framing::new(16 * 1024, flag.clone());
    for p in pieces {
        f.feed(p);
    }
    flag.load(Ordering::Acquire)
}

fuzz_target!(|data: &[u8]| {
    let whole = verdict(&[data]);
    for at in 0..data.len().min(512) {
        let (a, b) = data.split_at(at);
        assert_eq!(verdict(&[a, b]), whole, "split at {at}");
    }
    let bytes: Vec<&[u8]> = data.chunks(1).collect();
    assert_eq!(verdict(&bytes), whole, "byte by byte");
});
