"""The import graph of `bilevel`, read from the source with `ast` (nothing is imported).

    python benchmarks/import_graph.py               # the listing and the rule checks; exit 1 if a rule is broken
    python benchmarks/import_graph.py --write-docs  # also rewrite docs/architecture.md and docs/img/import-graph.png

Every import of a bilevel module is an edge tagged `module` (runs at import time), `lazy` (inside a
function) or `type` (under `if TYPE_CHECKING:`). The rules, each a key of `check`'s result:
  forbidden  layers below the applications never import fewshot, data, cli, reproduce or bench;
  upward     no module imports a module of a higher layer (these two count `type` edges too);
  facade     layers below the applications never import the `bilevel` facade (bilevel/__init__.py), which may import anything;
  cycles     no import cycle over `module` and `lazy` edges (`type` edges never run, so they are only listed);
  private    no `_name` or `_module` imported from another package (a package is a directory; the facade may);
  unlayered  every module has a layer in LAYERS.
"""
from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"bilevel": "bilevel", "adapters": "bilevel.adapters"}  # directory -> module prefix, as in pyproject.toml
FACADE = "bilevel"
# Layer by module-name prefix; the longest matching prefix wins. The layout refactor updates this table.
LAYERS = {
    0: ("foundations", ["bilevel.errors", "bilevel.validation", "bilevel.tree", "bilevel.devices", "bilevel.eager"]),
    1: ("solvers", ["bilevel.hvp", "bilevel.solvers"]),
    2: ("problems", ["bilevel.problem", "bilevel.hypergrad", "bilevel.diagnostics", "bilevel.meta", "bilevel.modules",
                     "bilevel.memory_budget", "bilevel.distributed", "bilevel.multilevel"]),
    3: ("backends", ["bilevel.adapters"]),
    4: ("applications", ["bilevel.fewshot", "bilevel.data", "bilevel.reproduce", "bilevel.bench", "bilevel.cli",
                         "bilevel.__main__"]),
}
APPLICATIONS = ["bilevel.fewshot", "bilevel.data", "bilevel.cli", "bilevel.reproduce", "bilevel.bench"]
RULES = ["forbidden", "upward", "facade", "cycles", "private", "unlayered"]


class Edge(NamedTuple):
    source: str
    target: str
    kind: str  # "module", "lazy" or "type"
    line: int
    names: tuple[str, ...] = ()  # the names a `from target import ...` takes; () when the module itself is taken

    def __str__(self):
        return f"{self.source} -> {self.target} [{self.kind}, line {self.line}]"


class Cycle(NamedTuple):
    modules: list[str]
    edges: list[Edge]

    def __str__(self):
        return f"cycle {' <-> '.join(self.modules)}: " + "; ".join(map(str, self.edges))


def has_prefix(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def layer_of(module: str) -> int | None:
    """The layer of `module` by its longest matching prefix in LAYERS; None for the facade or an unknown module."""
    matches = [(len(p), layer) for layer, (_, prefixes) in LAYERS.items() for p in prefixes if has_prefix(module, p)]
    return max(matches)[1] if matches else None


def package_of(module: str, packages: set[str]) -> str:
    """The directory a module lives in: itself for a package's __init__, else its parent."""
    return module if module in packages else module.rpartition(".")[0]


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def find_modules(root: Path = ROOT) -> tuple[dict[str, str], set[str]]:
    """Module name -> source text for every .py under SOURCES, and the names of the packages."""
    modules, packages = {}, set()
    for directory, prefix in SOURCES.items():
        for path in sorted((root / directory).rglob("*.py")):
            parts = [prefix, *path.relative_to(root / directory).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
                packages.add(".".join(parts))
            modules[".".join(parts)] = path.read_text()
    return modules, packages


def _imports(node: ast.AST, kind: str = "module"):
    """Yield (import statement, kind) under `node`: lazy inside a function, type under `if TYPE_CHECKING:`."""
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node, kind
        return
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and kind == "module":
        kind = "lazy"
    test = node.test if isinstance(node, ast.If) else None
    if getattr(test, "id", getattr(test, "attr", None)) == "TYPE_CHECKING":  # `TYPE_CHECKING` or `typing.TYPE_CHECKING`
        for child in node.body:
            yield from _imports(child, "type")
        for child in node.orelse:
            yield from _imports(child, kind)
        return
    for child in ast.iter_child_nodes(node):
        yield from _imports(child, kind)


def parse(modules: dict[str, str], packages: set[str]) -> list[Edge]:
    """Every import edge between `modules` (name -> source text), one per statement and imported module."""
    edges = []

    def known(dotted):  # the longest prefix of a dotted name that is one of our modules
        parts = dotted.split(".")
        return next((".".join(parts[:i]) for i in range(len(parts), 0, -1) if ".".join(parts[:i]) in modules), None)

    for module, text in modules.items():
        for node, kind in _imports(ast.parse(text, filename=module)):
            targets: dict[str, list[str]] = {}
            if isinstance(node, ast.Import):
                for target in filter(None, (known(alias.name) for alias in node.names)):
                    targets.setdefault(target, [])
            else:
                base = node.module or ""
                if node.level:  # relative: `from .` is the module's own package, each extra dot one level up
                    anchor = package_of(module, packages).split(".")
                    base = ".".join(anchor[:len(anchor) - node.level + 1] + ([node.module] if node.module else []))
                for alias in node.names:
                    if f"{base}.{alias.name}" in modules:  # `from package import submodule`
                        targets.setdefault(f"{base}.{alias.name}", [])
                    elif base in modules:
                        targets.setdefault(base, []).append(alias.name)
            edges += [Edge(module, t, kind, node.lineno, tuple(names)) for t, names in targets.items()]
    return edges


def private_names(edge: Edge) -> list[str]:
    """The private names an import takes: `_name`s, and a `_module` anywhere in the target's dotted name."""
    return [n for n in edge.names if is_private(n)] + [p for p in edge.target.split(".") if is_private(p)]


def strongly_connected(nodes, edges: list[tuple[str, str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of a directed graph, each sorted, in a sorted list."""
    succ = {n: [] for n in nodes}
    for a, b in edges:
        succ.setdefault(a, []).append(b)
        succ.setdefault(b, [])
    index, low, stack, out = {}, {}, [], []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        for child in succ[node]:
            if child not in index:
                visit(child)
                low[node] = min(low[node], low[child])
            elif child in stack:
                low[node] = min(low[node], index[child])
        if low[node] == index[node]:  # node is the root of a component: everything above it on the stack
            cut = stack.index(node)
            out.append(sorted(stack[cut:]))
            del stack[cut:]

    for node in sorted(succ):
        if node not in index:
            visit(node)
    return sorted(out)


def check(modules, packages: set[str], edges: list[Edge]) -> dict[str, list]:
    """Rule name -> what breaks it (Edges, Cycles or module names); an empty list means the rule holds."""
    def low(m):
        return layer_of(m) is not None and layer_of(m) < max(LAYERS)  # the top layer is the applications

    runs = [e for e in edges if e.kind != "type"]
    components = strongly_connected(modules, [(e.source, e.target) for e in runs])
    return {
        "forbidden": [e for e in edges if low(e.source) and any(has_prefix(e.target, p) for p in APPLICATIONS)],
        "upward": [e for e in edges if None not in (layer_of(e.source), layer_of(e.target))
                   and layer_of(e.target) > layer_of(e.source)],
        "facade": [e for e in edges if low(e.source) and e.target == FACADE],
        "cycles": [Cycle(c, [e for e in runs if e.source in c and e.target in c]) for c in components
                   if len(c) > 1 or any(e.source == e.target == c[0] for e in runs)],
        "private": [e for e in edges if private_names(e) and e.source != FACADE
                    and package_of(e.source, packages) != package_of(e.target, packages)],
        "unlayered": [m for m in modules if m != FACADE and layer_of(m) is None],
    }


def describe(rule: str, broken) -> str:
    """One line for what breaks a rule, with the layers of an upward import and the names of a private one."""
    if rule == "upward":
        return f"{broken}  (layer {layer_of(broken.source)} -> {layer_of(broken.target)})"
    return f"{broken}  imports {', '.join(private_names(broken))}" if rule == "private" else str(broken)


def graph(root: Path = ROOT):
    """(modules, edges, rule results) of the source tree at `root`."""
    modules, packages = find_modules(root)
    edges = parse(modules, packages)
    return modules, edges, check(modules, packages, edges)


def listing(modules, edges: list[Edge], results: dict[str, list]) -> str:
    groups = [(f"facade ({FACADE}/__init__.py, may import anything)", [FACADE])] + [
        (f"layer {n} {name}", [m for m in modules if layer_of(m) == n]) for n, (name, _) in LAYERS.items()]
    lines = []
    for title, members in groups:
        lines.append(title)
        for m in sorted(members):
            targets = sorted({(e.target, e.kind) for e in edges if e.source == m})
            lines.append(f"  {m}" + ("  ->  " if targets else "") + ", ".join(
                t if kind == "module" else f"{t} [{kind}]" for t, kind in targets))
        lines.append("")
    types = [str(e) for e in edges if e.kind == "type"]
    lines += ["TYPE_CHECKING-only imports (not counted in cycles): " + (", ".join(types) or "none"), ""]
    for rule in RULES:
        lines.append(f"rule {rule}: " + (f"{len(results[rule])} broken" if results[rule] else "ok"))
        lines += [f"  {describe(rule, v)}" for v in results[rule]]
    return "\n".join(lines) + "\n"


def node_of(module: str) -> str:
    """The box a module is drawn in: `bilevel` and its top-level modules alone, each subpackage as one box."""
    return ".".join(module.split(".")[:2])


def layout(nodes, band, arrows) -> dict[str, tuple[float, float]]:
    """Rows bottom-up: in its band a box sits above what it imports; a row is ordered by where its imports are."""
    deps = {n: {t for s, t, k in arrows if s == n and k != "type"} for n in nodes}
    depth: dict[str, int] = {}

    def row(n, seen=()):  # the longest chain of imports within the band (a cycle is cut where it closes)
        if n not in depth:
            inside = [d for d in deps[n] if band[d] == band[n] and d not in seen]
            depth[n] = 1 + max((row(d, seen + (n,)) for d in inside), default=-1)
        return depth[n]
    pos, y = {}, 0.0
    for b in sorted(set(band.values())):
        for r in range(max(row(n) for n in nodes if band[n] == b) + 1):
            members = [n for n in nodes if band[n] == b and row(n) == r]
            placed = {n: [pos[d][0] for d in deps[n] if d in pos] for n in members}
            members.sort(key=lambda n: (sum(placed[n]) / len(placed[n]) if placed[n] else 0.5, n))
            pos.update({n: ((i + 1) / (len(members) + 1), y + r) for i, n in enumerate(members)})
        y += r + 1.8
    return pos


def draw(modules, edges: list[Edge], results, path: Path):
    """The picture, one box per node_of; layers are bands, red arrows break a rule; the facade's own imports left out."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch

    nodes = sorted({node_of(m) for m in modules})
    band = {n: len(LAYERS) if n == FACADE else -1 if layer_of(n) is None else layer_of(n) for n in nodes}
    arrows = {(node_of(e.source), node_of(e.target), e.kind) for e in edges
              if node_of(e.source) not in (node_of(e.target), FACADE)}
    pos = layout(nodes, band, arrows)
    broken = [e for rule in ("forbidden", "upward", "facade", "private") for e in results[rule]]
    bad = {(node_of(e.source), node_of(e.target)) for e in broken + [e for c in results["cycles"] for e in c.edges]}
    colour = dict(zip([0, 1, 2, 3, len(LAYERS)], ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:gray"]))
    top = max(y for _, y in pos.values())
    fig, ax = plt.subplots(figsize=(15, 0.55 * top + 1.5))
    for b in set(band.values()):
        ys = [pos[n][1] for n in nodes if band[n] == b]
        ax.axhspan(min(ys) - 0.45, max(ys) + 0.45, color=colour.get(b, "0.5"), alpha=0.08)
        label = f"{b}: {LAYERS[b][0]}" if b in LAYERS else "facade" if b == len(LAYERS) else "unlayered"
        ax.text(-0.01, (min(ys) + max(ys)) / 2, label, ha="right", va="center", fontsize=11, weight="bold")
    for s, t, kind in sorted(arrows):
        red = (s, t) in bad
        ax.add_patch(FancyArrowPatch(pos[s], pos[t], arrowstyle="-|>", mutation_scale=9, shrinkA=10, shrinkB=10,
                                     connectionstyle="arc3,rad=0.1", lw=1.5 if red else 0.6,
                                     color="red" if red else "0.3", alpha=0.9 if red else 0.35,
                                     linestyle={"module": "-", "lazy": "--", "type": ":"}[kind]))
    for n, (x, y) in pos.items():
        grouped = any(node_of(m) == n != m for m in modules)
        ax.text(x, y, n.removeprefix("bilevel.") + (".*" if grouped else ""), ha="center", va="center", fontsize=9,
                zorder=3, bbox=dict(boxstyle="round,pad=0.3", fc="white", ec=colour.get(band[n], "0.5"), lw=1.2))
    ax.set_xlim(0, 1), ax.set_ylim(-0.6, top + 0.6), ax.axis("off")
    ax.set_title("Imports between bilevel's modules: an arrow points at the module imported; dashed = lazy, "
                 "dotted = TYPE_CHECKING only,\nred = breaks a rule. The facade's own imports (every public module) "
                 "are not drawn. Generated by python benchmarks/import_graph.py --write-docs", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


START, END = "<!-- import-graph:start -->", "<!-- import-graph:end -->"


def write_docs(text: str, page: Path = ROOT / "docs" / "architecture.md"):
    """Replace the generated block of the page (between START and END), keeping the prose around it."""
    old = page.read_text() if page.exists() else f"# Architecture\n\n{START}\n{END}\n"
    head, _, rest = old.partition(START)
    note = "Generated by `python benchmarks/import_graph.py --write-docs`; do not edit by hand."
    page.write_text(f"{head}{START}\n{note}\n\n```text\n{text}```\n{END}{rest.partition(END)[2]}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-docs", action="store_true", help="rewrite docs/architecture.md and its picture")
    args = parser.parse_args(argv)
    modules, edges, results = graph()
    text = listing(modules, edges, results)
    print(text, end="")
    if args.write_docs:
        write_docs(text)
        draw(modules, edges, results, ROOT / "docs" / "img" / "import-graph.png")
    return 1 if any(results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
