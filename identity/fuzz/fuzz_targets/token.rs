//! The identity service's first look at a presented token, and SPIFFE ID parsing, on
//! arbitrary input: never panics; a SPIFFE ID that parses prints back as itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshwork_identity::{token, SpiffeId};

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = token::peek(s);
        if let Ok(id) = SpiffeId::parse(s) {
            assert_eq!(id.to_string(), s);
        }
    }
});
