#!/usr/bin/env python3
"""Checks the library's `rust-version` against what its dependencies declare.

No older toolchain can be installed on the CI machine, so the declared minimum is
checked from the other side: it must be at least every `rust-version` declared by a
crate the library depends on (normal dependencies, transitively, every platform, not the loom build's),
as resolved in Cargo.lock. Clippy's `incompatible_msrv` lint checks the library's own
use of the standard library against the same number.
"""
import json
import subprocess
import sys


def version(text):
    return tuple(int(part) for part in text.split("."))


metadata = json.loads(
    subprocess.run(
        ["cargo", "metadata", "--locked", "--format-version", "1"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
)
packages = {package["id"]: package for package in metadata["packages"]}
nodes = {node["id"]: node for node in metadata["resolve"]["nodes"]}
root = next(p for p in metadata["packages"] if p["name"] == "apm-tap")
declared = root["rust_version"]

seen, stack = set(), [root["id"]]
while stack:
    for dep in nodes[stack.pop()]["deps"]:
        # Normal dependencies; not those of the loom build (`cfg(apm_tap_loom)`),
        # which only the CI's loom models compile.
        normal = any(
            kind["kind"] is None and kind.get("target") != "cfg(apm_tap_loom)"
            for kind in dep["dep_kinds"]
        )
        if normal and dep["pkg"] not in seen:
            seen.add(dep["pkg"])
            stack.append(dep["pkg"])

needs = sorted(
    ((packages[p]["rust_version"], packages[p]["name"], packages[p]["version"])
     for p in seen if packages[p]["rust_version"]),
    key=lambda row: version(row[0]),
)
highest = needs[-1]
print(f"apm-tap declares rust-version {declared}; its {len(seen)} dependencies need at most "
      f"{highest[0]} ({highest[1]} {highest[2]})")
too_new = [row for row in needs if version(row[0]) > version(declared)]
for rust, name, ver in too_new:
    print(f"  {name} {ver} needs Rust {rust}", file=sys.stderr)
sys.exit(1 if too_new else 0)
