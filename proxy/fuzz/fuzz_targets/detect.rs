//! Any bytes a client sends first: detection and the SNI parser must never panic, must decide
//! once the client is done, and a verdict must not change as more bytes arrive.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshwork_proxy::detect::{detect, Detect};

fuzz_target!(|data: &[u8]| {
    let _ = meshwork_proxy::sni::server_name(data);
    assert!(matches!(detect(data, true), Detect::Found(_)));
    // Fed in two parts: once a prefix decides, the whole says the same.
    let cut = data.first().map_or(0, |b| *b as usize % (data.len() + 1));
    if let Detect::Found(p) = detect(&data[..cut], false) {
        match detect(data, false) {
            Detect::Found(q) => {
                // The SNI may only be learnt later; the protocol may not change.
                assert_eq!(std::mem::discriminant(&p), std::mem::discriminant(&q));
            }
            Detect::NeedMore => panic!("decided on a prefix, undecided on the whole"),
        }
    }
});
