//! weft-init's and the annotations' port lists and subnets: any text
//! parses or is refused; a parsed port list prints back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_proto::ports::parse_port_list;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(ranges) = parse_port_list(text) {
        let printed: Vec<String> = ranges.iter().map(|r| r.to_list_syntax()).collect();
        let again = parse_port_list(&printed.join(",")).expect("printed lists parse");
        assert_eq!(again, ranges);
    }
    let _ = weft_init::parse_subnet_list(text);
});
