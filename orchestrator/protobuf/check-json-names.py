#!/usr/bin/env python3
"""Lists the protobuf fields whose name is not a JSON key of the k8s-openapi type of the same
message: embedded (`json:",inline"`) structs and renamed fields. Run after re-vendoring protos/
and compare with INLINE and RENAMED in src/transcode.rs (the apimachinery special types in that
file show up too, by design).

usage: check-json-names.py ~/.cargo/registry/src/*/k8s-openapi-0.29.0/src/v1_33
"""
import glob, os, re, sys

root = sys.argv[1]
here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "protos")


def snake(n):
    return re.sub(r"(?<!^)(?=[A-Z])", "_", n).lower()


for f in sorted(glob.glob(os.path.join(here, "**/generated.proto"), recursive=True)):
    text = open(f).read()
    pkg = re.search(r"^package (\S+);", text, re.M).group(1)
    parts = pkg.split(".")
    d = os.path.join(root, "api", parts[1], parts[2]) if parts[0] == "api" else os.path.join(root, *parts)
    for m in re.finditer(r"^message (\w+) \{(.*?)^\}", text, re.M | re.S):
        path = os.path.join(d, snake(m.group(1)) + ".rs")
        if not os.path.exists(path):
            continue
        src = open(path).read()
        for fm in re.finditer(r"^\s+(?:optional|repeated) (\.?[\w.]+) (\w+) = \d+;", m.group(2), re.M):
            if f'"{fm.group(2)}"' not in src:
                print(f"{pkg}.{m.group(1)}.{fm.group(2)}\t{fm.group(1)}")
