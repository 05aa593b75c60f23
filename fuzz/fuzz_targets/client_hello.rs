//! The TLS ClientHello peek: any bytes, no panic; a parsed hello lies
//! within the first record.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_proxy::tls::client_hello::{parse, record_len};

fuzz_target!(|data: &[u8]| {
    let len = record_len(data);
    if parse(data).is_some() {
        let len = len.expect("a parsed hello has a record header");
        assert!(len >= 5, "a record is at least its header");
    }
});
