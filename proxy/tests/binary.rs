//! What the built proxy binary loads: libm.so stays out (its text would be resident in every
//! sidecar; BENCHMARKS.md, "The proxy pair": idle RSS). `proxy/src/main.rs` defines the C
//! maths functions the proxy's dependencies call; a new one would bring the library back.

#[test]
fn the_proxy_does_not_load_libm() {
    let bin = env!("CARGO_BIN_EXE_meshwork-proxy");
    let out = std::process::Command::new("ldd")
        .arg(bin)
        .output()
        .unwrap_or_else(|e| panic!("running ldd (Debian's libc-bin): {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ldd {bin}: {out:?}");
    assert!(
        text.contains("libc.so"),
        "ldd {bin} listed no libc:\n{text}"
    );
    assert!(
        !text.contains("libm.so"),
        "the proxy loads libm.so again: something calls a C maths function that proxy/src/main.rs \
         does not define from the libm crate (`nm -D --undefined-only {bin}` names it)\n{text}"
    );
}
