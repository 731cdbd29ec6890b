//! How `meshwork-proxy` is linked on x86_64 Linux (glibc), where rust-lld is Rust's default
//! linker, for the RSS of every sidecar (BENCHMARKS.md, "The proxy pair": idle RSS): with
//! packed relative relocations (RELR). A position-independent binary otherwise carries a
//! 24-byte RELA entry per pointer in its read-only data (vtables: ~0.55 MB for the proxy),
//! which the loader reads whole at every start and which then stays resident. The binary then
//! needs glibc ≥ 2.36 (Debian 12's) to start. Other targets, other linkers (GNU ld before
//! 2.38 ignores the flag; ld64 refuses it) and `MESHWORK_PLAIN_LINK=1` link as usual.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=MESHWORK_PLAIN_LINK");
    let target = std::env::var("TARGET").unwrap_or_default();
    let plain = std::env::var("MESHWORK_PLAIN_LINK").is_ok_and(|v| v == "1");
    if target == "x86_64-unknown-linux-gnu" && !plain {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
