//! Routes as a pod's or a Service's `config.meshwork.io/routes` annotation writes them: the
//! injector (a webhook), the control agent and the proxy all read them
//! (destination-api/src/routes.rs). None may panic; what parses must name requests by an
//! entry that reads back the same and needs no escaping as a label value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshwork_destination_api::routes::Routes;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // The first line is a request (`METHOD PATH`), the rest the annotation.
    let (request, annotation) = text.split_once('\n').unwrap_or(("GET /", &text));
    let Ok(routes) = Routes::parse(annotation) else {
        return;
    };
    assert_eq!(routes.source(), annotation);
    let (method, path) = request.split_once(' ').unwrap_or(("GET", request));
    if let Some(name) = routes.find(method, path) {
        // A label value as is: nothing the exposition format would need escaped, no comma.
        assert!(!name.contains(['"', '\\', '\n', ',']), "{name:?}");
        // A route's name is an entry of its own: it parses alone, and names that request too.
        let alone = Routes::parse(name).expect("a route's name parses");
        assert_eq!(alone.find(method, path), Some(name));
    }
});
