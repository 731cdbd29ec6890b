//! How `meshwork-proxy` is linked (by rust-lld, Rust's default linker on x86_64 Linux), for
//! the RSS of every sidecar (BENCHMARKS.md, "The proxy pair": idle RSS):
//! - packed relative relocations (RELR; glibc ≥ 2.36, Debian 12's): a position-independent
//!   binary otherwise carries a 24-byte RELA entry per pointer in its read-only data
//!   (vtables: ~0.55 MB for the proxy), which the loader reads whole at every start and which
//!   then stays resident;
//! - identical code folding: monomorphised functions that compiled to the same bytes are kept
//!   once (~0.2 MB of machine code). Rust gives no function a unique address to rely on.
fn main() {
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    println!("cargo:rustc-link-arg-bins=-Wl,--icf=all");
}
