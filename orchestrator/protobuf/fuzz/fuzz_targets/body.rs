//! A request body as a client could send it (the API server's trust boundary): decoding must
//! never panic, and whatever decodes must encode again and decode to the same JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Half the inputs get the envelope prefix so the fuzzer reaches the message walk quickly.
    let mut body = Vec::with_capacity(data.len() + 4);
    if data.first().is_some_and(|b| b & 1 == 1) {
        body.extend_from_slice(meshwork_kube_protobuf::MAGIC);
        body.extend_from_slice(&data[1..]);
    } else {
        body.extend_from_slice(data);
    }
    let Ok(obj) = meshwork_kube_protobuf::decode_body(&body) else {
        return;
    };
    let again = meshwork_kube_protobuf::encode_object(&obj)
        .expect("a decoded object encodes");
    let back = meshwork_kube_protobuf::decode_body(&again).expect("an encoded object decodes");
    assert_eq!(back, obj, "decode ∘ encode is the identity on decoded objects");
});
