#!/usr/bin/env python3
"""Lists the import circles among a Rust crate's source files (tests aside).

    python3 scripts/import_circles.py [SRC_DIR]      (default: agent/src)

An arrow A -> B means a file A names an item of the module file B: in a `use`
line, a `pub use` re-export, or an inline path (`crate::reconcile::DataPlane`,
`super::Snapshot`). A path is resolved to the deepest module file it names, so
`crate::xds::server::XdsServer` points at xds/server.rs and `crate::xds::Snapshot`
at xds.rs. `mod x;` declarations are not arrows (a parent holding a child is no
import), and neither is anything in a test module (`#[cfg(test)] mod tests`,
inline or its own file). A circle is a strongly connected set of two or more
files, or of two or more top-level modules (a file and its folder counted as
one, e.g. xds.rs with xds/). Prints every circle with the names that tie it, and exits 1 if there is
one; else prints one line and exits 0.
"""

import pathlib
import re
import sys

PATH = re.compile(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")
USE_GROUP = re.compile(r"\buse\s+(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)*)::\{([^;]*)\};", re.S)


def module_of(src: pathlib.Path, f: pathlib.Path) -> tuple:
    parts = list(f.relative_to(src).with_suffix("").parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return tuple(parts)


def without_tests(text: str) -> str:
    """The file without its inline test module (by convention the last item)."""
    m = re.search(r"^#\[cfg\(test\)\]\s*\n\s*mod\s+\w+\s*\{", text, re.M)
    text = text[: m.start()] if m else text
    # Comments name paths too (`crate::x` in a doc link); they are no import.
    return re.sub(r"//[^\n]*", "", text)


def expand_groups(text: str) -> list:
    """`use crate::a::{b::C, d}` as the paths `crate::a::b::C`, `crate::a::d` (one level)."""
    paths = []
    for root, prefix, inner in USE_GROUP.findall(text):
        for item in re.split(r",", re.sub(r"\{[^}]*\}", "", inner)):
            item = item.strip().split(" as ")[0].strip()
            if item and item != "self":
                paths.append(f"{root}{prefix}::{item}")
            elif item == "self":
                paths.append(f"{root}{prefix}")
    return paths


def main() -> int:
    src = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "agent/src")
    files = {}
    for f in sorted(src.rglob("*.rs")):
        text = f.read_text()
        mod = module_of(src, f)
        # A test module in its own file (`#[cfg(test)] mod tests;` → tests.rs).
        if mod and mod[-1] == "tests":
            continue
        files[mod] = (f, without_tests(text))
    edges = {m: {} for m in files}
    for mod, (f, text) in files.items():
        here = mod
        paths = [r + p for r, p in PATH.findall(text)] + expand_groups(text)
        # A child module named without `self::` (`sotw::run` beside `mod sotw;`).
        for child in re.findall(r"^\s*(?:pub(?:\([a-z]+\))?\s+)?mod\s+(\w+)\s*;", text, re.M):
            paths += ["self::" + child + "::" + n for n in re.findall(rf"(?<![:\w]){child}::(\w+)", text)]
        for path in paths:
            segs = path.split("::")
            root, rest = segs[0], segs[1:]
            if root == "crate":
                base = ()
            elif root == "self":
                base = here
            else:  # super: the parent module
                base = here[:-1]
            while rest and rest[0] == "super":
                base, rest = base[:-1], rest[1:]
            full = base + tuple(rest)
            # The deepest module file the path names.
            target = None
            for n in range(len(full), -1, -1):
                if full[:n] in files:
                    target = full[:n]
                    break
            if target is None or target == mod:
                continue
            names = edges[mod].setdefault(target, set())
            if len(full) > len(target):
                names.add(full[len(target)])
    # The same arrows between top-level modules (a folder and its parent
    # file are one: `xds.rs` with `xds/`), where the crate root is none.
    tops = {}
    for a, targets in edges.items():
        for b, names in targets.items():
            if a[:1] and b[:1] and a[:1] != b[:1]:
                tops.setdefault(a[:1], {}).setdefault(b[:1], set()).update(f"{shown_mod(files, a)} -> {shown_mod(files, b)}: {n}" for n in names)
    arrows = sum(len(v) for v in edges.values())
    found = 0
    for level, graph, show in (("file", edges, lambda m: shown_mod(files, m)), ("module", tops, lambda m: m[0])):
        for c in strongly_connected(graph):
            found += 1
            print(f"circle {found} ({level}s): " + ", ".join(sorted(show(m) for m in c)))
            for a in sorted(c):
                for b, names in sorted(graph.get(a, {}).items()):
                    if b in c:
                        why = (", " if level == "file" else "; ").join(sorted(names)) or "the module itself"
                        print(f"  {show(a)} -> {show(b)}: {why}")
    if not found:
        print(f"no import circle in {src}, between files or between top-level modules ({len(files)} files, {arrows} arrows, tests aside)")
        return 0
    print(f"{found} import circle(s) in {src} ({len(files)} files, {arrows} arrows, tests aside)")
    return 1


def shown_mod(files: dict, m: tuple) -> str:
    return "/".join(m) + ".rs" if m else "(crate root)"


def strongly_connected(edges: dict) -> list:
    """Tarjan's algorithm; only components of two or more files."""
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


if __name__ == "__main__":
    sys.exit(main())
