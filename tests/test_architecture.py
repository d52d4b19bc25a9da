"""Dependencies point down (docs/ARCHITECTURE.md, "Layers").

- The leaf packages (`rollout/`, `rewards/`, `preference/`, `rlkit/algorithms/`) never import the drivers, the
  policy worker or Ray.
- Inside `rlkit/`, every module belongs to one layer of `LAYERS` and imports only its own layer or lower ones
  (`ALLOWED_UP` lists the exceptions: none today).
- No import circles anywhere in rlkit, rollout, rewards, preference: every import counts, those inside
  functions (lazy ones) included, read from the AST of every module. The circle finder is shown to find a
  planted circle.
"""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("rlkit", "rollout", "rewards", "preference")
FORBIDDEN = {
    "rollout": ("rlkit", "ray", "rewards", "preference"),
    "rewards": ("rlkit.drivers", "rlkit.policy", "rlkit.distributed", "rlkit.cli", "ray", "rollout"),
    "preference": ("rlkit.drivers", "rlkit.policy", "rlkit.distributed", "rlkit.cli", "ray", "rollout"),
    "rlkit/algorithms": ("rlkit.drivers", "rlkit.policy", "rlkit.distributed", "ray", "rollout", "rewards",
                         "transformers", "vllm"),
}
# Top to bottom; a module imports its own layer or the ones below. A name stands for the module and, for a
# package, every module under it.
LAYERS = [
    ("commands", ("rlkit.cli", "rlkit.config_docs")),  # the `rlkit` command; the generator of docs/config.md
    ("drivers", ("rlkit.drivers",)),  # grpo, dpo, rlaifv, ablation, eval, sft: know every layer below
    ("run", ("rlkit.run",)),  # config -> engines, models, rewards, labelers, worker settings; checks; run dir, log
    ("distributed", ("rlkit.distributed",)),  # Ray set-up and placement, engine pool, policy group
    ("step", ("rlkit.step",)),  # modes, collect, group filters, per-mode metrics, reward health
    ("policy", ("rlkit.policy",)),  # the worker, its settings, batching, vision, LoRA, sharding, streaming
    ("base", ("rlkit", "rlkit.config", "rlkit.config_ranges", "rlkit.records", "rlkit.console", "rlkit.runtime_env",
              "rlkit.algorithms", "rlkit.models", "rlkit.data")),  # leaves: config, records, pure code
]
ALLOWED_UP: set[tuple[str, str]] = set()  # (importer, imported) pairs that may point up a layer
RAY_ALLOWED = ("rlkit/distributed/", "rlkit/drivers/")


def module_files(root: pathlib.Path, packages) -> dict[str, pathlib.Path]:
    """{dotted module name: file} of every .py file under root/<package>."""
    out = {}
    for pkg in packages:
        for f in (root / pkg).rglob("*.py"):
            parts = list(f.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = f
    return out


def imported_names(path: pathlib.Path, module: str, is_package: bool):
    """(dotted name, line) of every import in the file, at any depth (functions, methods, branches);
    `from a import b` gives `a` and `a.b` (b may be a module); relative imports are resolved."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".") if is_package else module.split(".")[:-1]
                parts = parts[:len(parts) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            yield base, node.lineno
            for a in node.names:
                yield f"{base}.{a.name}", node.lineno


def import_graph(root: pathlib.Path, packages=PACKAGES) -> dict[str, dict[str, int]]:
    """{module: {imported module of these packages: line}}; a name resolves to the longest module it names."""
    files = module_files(root, packages)
    graph = {}
    for m, f in files.items():
        edges = {}
        for name, line in imported_names(f, m, f.name == "__init__.py"):
            while name and name not in files:
                name = name.rpartition(".")[0]
            if name and name != m:
                edges.setdefault(name, line)
        graph[m] = edges
    return graph


def cycles(graph: dict[str, dict]) -> list[list[str]]:
    """The import circles: strongly connected components of more than one module (or a self-import)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):  # Tarjan, iterative over the successors of each frame
        work = [(v, iter(graph.get(v, ())))]
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        while work:
            node, succ = work[-1]
            for w in succ:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(graph.get(w, ()))))
                    break
                if w in on:
                    low[node] = min(low[node], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == node:
                            break
                    if len(comp) > 1 or node in graph.get(node, ()):
                        out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def layer_of(module: str) -> int:
    best, depth = None, -1
    for i, (_, names) in enumerate(LAYERS):
        for n in names:
            if (module == n or module.startswith(n + ".")) and n.count(".") > depth:
                best, depth = i, n.count(".")
    return best


def test_no_import_circles_lazy_imports_included():
    found = cycles(import_graph(ROOT))
    assert not found, f"import circles (lazy imports included): {found}"


def test_the_circle_finder_finds_a_planted_circle(tmp_path):
    pkg = tmp_path / "planted"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from planted.b import g  # lazy: still an arrow\n    return g\n")
    (pkg / "b.py").write_text("import planted.a\n\n\ndef g():\n    return 1\n")
    (pkg / "c.py").write_text("from . import a\n")  # relative, outside the circle
    graph = import_graph(tmp_path, ("planted",))
    assert graph["planted.a"] == {"planted.b": 2} and "planted.a" in graph["planted.c"]
    assert cycles(graph) == [["planted.a", "planted.b"]]
    (pkg / "a.py").write_text("def f():\n    return 1\n")
    assert cycles(import_graph(tmp_path, ("planted",))) == []


def test_every_rlkit_module_has_a_layer():
    missing = [m for m in module_files(ROOT, ("rlkit",)) if layer_of(m) is None]
    assert not missing, missing


def test_rlkit_layers_import_only_downwards():
    bad = []
    for m, edges in import_graph(ROOT).items():
        if not m.startswith("rlkit"):
            continue
        for imported, line in edges.items():
            if imported.startswith("rlkit") and layer_of(imported) < layer_of(m) and (m, imported) not in ALLOWED_UP:
                bad.append(f"{m}:{line} ({LAYERS[layer_of(m)][0]}) imports {imported} ({LAYERS[layer_of(imported)][0]})")
    assert not bad, bad


def test_the_layer_check_sees_an_upward_import():
    assert layer_of("rlkit.policy.worker") > layer_of("rlkit.distributed.pool") > layer_of("rlkit.drivers.grpo")
    assert layer_of("rlkit.config") == len(LAYERS) - 1 and layer_of("rlkit.data.checks") == len(LAYERS) - 1


def test_leaf_packages_do_not_import_upwards():
    bad = []
    for pkg, forbidden in FORBIDDEN.items():
        for f in (ROOT / pkg).rglob("*.py"):
            for mod, line in imported_names(f, "", False):
                if any(mod == x or mod.startswith(x + ".") for x in forbidden):
                    bad.append(f"{f.relative_to(ROOT)}:{line} imports {mod}")
    assert not bad, bad


def test_only_distribution_and_drivers_import_ray():
    bad = []
    for pkg in ("rlkit", "rollout", "rewards", "preference"):
        for f in (ROOT / pkg).rglob("*.py"):
            rel = str(f.relative_to(ROOT))
            if not rel.startswith(RAY_ALLOWED) and any(m == "ray" or m.startswith("ray.")
                                                        for m, _ in imported_names(f, "", False)):
                bad.append(rel)
    assert not bad, bad


@pytest.mark.parametrize("old", ["grpo", "worker", "pool", "checkpoint", "modes", "evaluate"])
def test_old_import_paths_are_the_moved_modules(old):
    import importlib

    from rlkit import MOVED

    assert importlib.import_module(f"rlkit.{old}") is importlib.import_module(MOVED[f"rlkit.{old}"])
    assert all((ROOT / (new.replace(".", "/") + ".py")).is_file() and not (ROOT / (o.replace(".", "/") + ".py")).exists()
               for o, new in MOVED.items())


WORKER = pathlib.Path("rlkit/policy/worker.py")
PRIVATE_SCAN = ("rlkit", "rollout", "rewards", "preference", "benchmarks", "examples")


def private_worker_calls(root: pathlib.Path, scan=PRIVATE_SCAN) -> list[str]:
    """`file:line name` of every use, outside rlkit/policy/worker.py, of a private method of `PolicyWorker` (a
    `_name` defined in its class): allowed only on `self` inside a subclass of it (by base name, transitively)
    or inside a class that defines that name itself."""
    cls = next(n for n in ast.parse((root / WORKER).read_text()).body
               if isinstance(n, ast.ClassDef) and n.name == "PolicyWorker")
    private = {f.name for f in cls.body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
               and f.name.startswith("_") and not f.name.startswith("__")}
    trees = {f: ast.parse(f.read_text()) for d in scan for f in sorted((root / d).rglob("*.py"))
             if f != root / WORKER}
    classes = [c for t in trees.values() for c in ast.walk(t) if isinstance(c, ast.ClassDef)]
    heirs, grew = {"PolicyWorker"}, True
    while grew:
        grew = False
        for c in classes:
            bases = {b.attr if isinstance(b, ast.Attribute) else getattr(b, "id", None) for b in c.bases}
            if c.name not in heirs and bases & heirs:
                heirs.add(c.name)
                grew = True
    found = []

    def visit(node, cls):
        if isinstance(node, ast.ClassDef):
            cls = node
        if isinstance(node, ast.Attribute) and node.attr in private:
            own = cls is not None and isinstance(node.value, ast.Name) and node.value.id == "self" and (
                cls.name in heirs or any(getattr(f, "name", None) == node.attr for f in cls.body))
            if not own:
                found.append(f"{f.relative_to(root)}:{node.lineno} {node.attr}")
        for child in ast.iter_child_nodes(node):
            visit(child, cls)

    for f, tree in trees.items():
        visit(tree, None)
    return found


def test_no_module_calls_a_private_method_of_the_policy_worker():
    found = private_worker_calls(ROOT)
    assert not found, f"private PolicyWorker methods called from outside rlkit/policy/worker.py: {found}"


def test_the_private_call_check_sees_a_mixin_and_a_caller(tmp_path):
    """A mixin calling the worker's private methods on `self` (the old `StreamedStep`) and a caller reaching
    into a worker are found; a subclass's own use and another class's own `_name` are not."""
    (tmp_path / WORKER).parent.mkdir(parents=True)
    (tmp_path / WORKER).write_text("class PolicyWorker:\n    def _layout(self):\n        pass\n")
    (tmp_path / "rlkit/policy/streaming.py").write_text(
        "class StreamedStep:\n    def train_part(self):\n        return self._layout()\n")
    (tmp_path / "rlkit/dpo.py").write_text(
        "class W(PolicyWorker):\n    pass\n\n\nclass D(W):\n    def f(self):\n        return self._layout()\n")
    (tmp_path / "rlkit/other.py").write_text(
        "class O:\n    def _layout(self):\n        return self._layout\n\n\ndef g(w):\n    return w._layout()\n")
    assert private_worker_calls(tmp_path, ("rlkit",)) == ["rlkit/other.py:7 _layout",
                                                          "rlkit/policy/streaming.py:3 _layout"]
