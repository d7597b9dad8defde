"""The shape of the package, read from the source (ast; nothing is imported): no import
cycles, no import from a lower layer to a higher one (the layers of docs/architecture.md),
`ctbayes.vi` and `ctbayes.score_vi` free of CT modules, no use of another module's private
names, and a docstring on every public function and class of the documented packages."""

import ast
import importlib
import inspect
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ctbayes"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The ctbayes module a dotted name refers to (its longest module prefix)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> list[tuple[str, str, int]]:
    """(imported module, name imported from it or "", line) for every ctbayes import,
    also those inside functions."""
    tree = ast.parse(MODULES[module].read_text())
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "ctbayes":
                    found.append((_resolve(alias.name), "", node.lineno))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] != "ctbayes":
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}"
                if full in MODULES:  # a submodule
                    found.append((full, "", node.lineno))
                else:
                    found.append((_resolve(base), alias.name, node.lineno))
    return found


def _layers() -> list[list[str]]:
    """The numbered list under "## Layers" in docs/architecture.md: names per layer."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    layers = []
    for line in section.splitlines():
        match = re.match(r"(\d+)\. (`[^`]+`(?:, `[^`]+`)*)\s*$", line)
        if match:
            assert int(match.group(1)) == len(layers) + 1, line
            layers.append(re.findall(r"`([^`]+)`", match.group(2)))
    return layers


def _layer_of(module: str, layers) -> int:
    best, level = "", None
    for k, names in enumerate(layers):
        for name in names:
            full = "ctbayes" if name == "ctbayes" else f"ctbayes.{name}"
            if (module == full or module.startswith(full + ".")) and len(full) > len(best):
                best, level = full, k
    assert level is not None, f"{module} is in no layer of docs/architecture.md"
    return level


def _graph() -> dict[str, set[str]]:
    return {m: {target for target, _, _ in _imports(m) if target and target != m}
            for m in MODULES}


def test_the_layers_cover_every_module():
    layers = _layers()
    assert len(layers) >= 5
    for module in MODULES:
        _layer_of(module, layers)


def test_no_import_goes_up_a_layer():
    layers = _layers()
    upward = []
    for module in MODULES:
        own = _layer_of(module, layers)
        for target, _, line in _imports(module):
            if target and _layer_of(target, layers) > own:
                upward.append(f"{MODULES[module].relative_to(ROOT)}:{line} imports {target}")
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    graph = _graph()
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node):  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    # a package's __init__ importing its submodules, which import siblings through the
    # package, is not a cycle of concepts: ignore edges into a package from its own members
    real = [c for c in cycles if not all(m == c[0] or m.startswith(c[0] + ".") for m in c)]
    assert not real, real


@pytest.mark.parametrize("library", ["ctbayes.vi", "ctbayes.score_vi"])
def test_bnn_libraries_import_no_ct_module(library):
    allowed = ("ctbayes.errors", library)
    bad = [f"{m}:{line} imports {target}" for m in MODULES
           if m == library or m.startswith(library + ".")
           for target, _, line in _imports(m)
           if target and not any(target == a or target.startswith(a + ".") for a in allowed)]
    assert not bad, bad


def test_no_private_name_of_another_module():
    bad = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        aliases = {}  # local name -> ctbayes module it is bound to
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("ctbayes") and alias.asname:
                        aliases[alias.asname] = alias.name
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ctbayes"):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    if full in MODULES:
                        aliases[alias.asname or alias.name] = full
        for target, name, line in _imports(module):
            if name.startswith("_") and not name.startswith("__") and target != module:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {target}.{name}")
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") \
                    and not node.attr.startswith("__") and isinstance(node.value, ast.Name) \
                    and node.value.id in aliases and aliases[node.value.id] != module:
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} uses "
                           f"{aliases[node.value.id]}.{node.attr}")
    assert not bad, "\n".join(bad)


DOCUMENTED = ("ctbayes.posteriors", "ctbayes.laplace", "ctbayes.design", "ctbayes.vi",
              "ctbayes.score_vi")


def _public_members(module):
    for name, value in vars(module).items():
        if name.startswith("_") or getattr(value, "__module__", None) != module.__name__:
            continue
        if inspect.isfunction(value):
            yield name, value
        elif inspect.isclass(value):
            yield name, value
            for attr, member in vars(value).items():
                if attr.startswith("_"):
                    continue
                if isinstance(member, property):
                    yield f"{name}.{attr}", member
                elif inspect.isfunction(member) and not getattr(value, "_fields", None):
                    yield f"{name}.{attr}", getattr(value, attr)  # docs inherited count


@pytest.mark.parametrize("package", DOCUMENTED)
def test_every_public_function_and_class_has_a_docstring(package):
    missing = []
    for module_name in sorted(m for m in MODULES if m == package or m.startswith(package + ".")):
        module = importlib.import_module(module_name)
        for name, member in _public_members(module):
            if not (inspect.getdoc(member) or "").strip():
                missing.append(f"{module_name}.{name}")
    assert not missing, "\n".join(missing)
