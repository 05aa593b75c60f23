//! Discovery pushes as the proxy receives them: any bytes decode or fail
//! cleanly, and any decoded push is validated (converted and compiled)
//! without panicking; whatever is accepted re-encodes to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use weft_proto::pb::discovery as pb;
use weft_proxy::discovery::client::validate;
use weft_proxy::routing;

fuzz_target!(|data: &[u8]| {
    let Ok(rsp) = pb::StreamResponse::decode(data) else {
        return;
    };
    let again = pb::StreamResponse::decode(rsp.encode_to_vec().as_slice()).expect("re-decodes");
    assert_eq!(again, rsp);
    let state = routing::State::default();
    let _ = validate(rsp.resources, &state);
});
