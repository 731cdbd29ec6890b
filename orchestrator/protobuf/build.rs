//! Compiles the vendored Kubernetes protos (README.md) into a descriptor set with protox, so no
//! system protoc is needed, and lists the fields Kubernetes marks required (no `+optional` in
//! their comment): Go's JSON writes those even when zero, so the transcoder must too.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "build script: a panic is the build error"
)]

use std::{collections::BTreeSet, env, fs, path::PathBuf};

use prost::Message;

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap()).join("protos");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut files = Vec::new();
    collect(&root, &root, &mut files);
    files.sort();
    let mut set = protox::Compiler::new([&root])
        .expect("protox include path")
        .include_imports(true)
        .include_source_info(true)
        .open_files(&files)
        .unwrap_or_else(|e| panic!("compiling {}: {e:?}", root.display()))
        .file_descriptor_set();

    let mut required = BTreeSet::new();
    for file in &mut set.file {
        let pkg = file.package().to_string();
        if let Some(info) = file.source_code_info.take() {
            for loc in &info.location {
                // [4, message, 2, field]: a top-level message's field (these protos nest none).
                if let [4, m, 2, f] = loc.path[..] {
                    let msg = &file.message_type[m as usize];
                    let field = &msg.field[f as usize];
                    if !loc.leading_comments().contains("+optional") {
                        required.insert(format!("{pkg}.{}.{}", msg.name(), field.name()));
                    }
                }
            }
        }
    }
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    fs::write(out.join("k8s.fds"), set.encode_to_vec()).unwrap();
    let list: String = required.iter().map(|r| format!("    {r:?},\n")).collect();
    fs::write(
        out.join("required.rs"),
        format!("/// Fields without `+optional`, sorted.\npub static REQUIRED: &[&str] = &[\n{list}];\n"),
    )
    .unwrap();
}

fn collect(root: &std::path::Path, dir: &std::path::Path, out: &mut Vec<String>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            collect(root, &p, out);
        } else if p.extension().is_some_and(|x| x == "proto") {
            out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
        }
    }
}
