//! Compiles the C datapath (`bpf/*.c`, one entry object per hook) with clang into OUT_DIR.

use std::{env, path::PathBuf, process::Command};

/// Entry objects; `tests/*` are the BPF_PROG_RUN harnesses (loaded by tests only).
const PROGRAMS: &[&str] = &[
    "sock_lb",
    "tc_nodeport",
    "mesh_redirect",
    "tests/sock_lb_test",
];

fn main() {
    let clang = env::var("MESHWORK_CLANG").unwrap_or_else(|_| "clang-19".into());
    let Some(out) = env::var_os("OUT_DIR").map(PathBuf::from) else {
        panic!("OUT_DIR not set: build.rs runs under cargo");
    };
    println!("cargo:rerun-if-changed=bpf");
    println!("cargo:rerun-if-env-changed=MESHWORK_CLANG");
    for prog in PROGRAMS {
        let src = format!("bpf/{prog}.c");
        let name = prog.rsplit('/').next().unwrap_or(prog);
        let obj = out.join(format!("{name}.o"));
        let status = Command::new(&clang)
            .args(["-target", "bpf", "-mcpu=v3", "-O2", "-g"])
            .args(["-Wall", "-Wextra", "-Werror", "-Ibpf/include", "-c"])
            .arg(&src)
            .arg("-o")
            .arg(&obj)
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => panic!("{clang} failed compiling {src} ({s})"),
            Err(e) => panic!(
                "cannot run {clang} ({e}): the eBPF datapath is C compiled at build time; \
                 run scripts/setup.sh (installs clang-19) or set MESHWORK_CLANG"
            ),
        }
    }
}
