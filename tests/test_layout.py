"""course_lib reads like the syllabus: its imports (read from the source, not run) keep the layout's rules.

- subpackages import each other without a circle, and so do modules;
- `core` imports no other subpackage; no teaching subpackage imports `instructor`; only `training` imports `fast`;
- our own modules are imported at the top of a file, never inside a function;
- inside a function only heavy optional libraries are imported (and, in `core`, torch and transformers: `core` is
  what `python -m course_lib.instructor.sandbox`, every graded kernel's launcher, imports before it execs).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "course_lib"
SUBPACKAGES = ("core", "data", "lora", "qlora", "training", "evaluation", "deployment", "scaling", "fast", "capstone",
               "instructor")
TEACHING = tuple(p for p in SUBPACKAGES if p != "instructor")
LAZY_ANYWHERE = {"bitsandbytes", "liger_kernel", "matplotlib", "nbgrader", "llama_cpp", "openai", "httpx"}
LAZY_IN_CORE = {"torch", "transformers", "datasets", "numpy", "huggingface_hub", "gguf", "safetensors", "tqdm",
                "ipywidgets", "IPython"}


@dataclass
class Layout:
    """Every import of a package's source: module -> imported course_lib modules, and function-level imports."""

    root: str
    imports: dict[str, set[str]] = field(default_factory=dict)
    inner: list[tuple[str, int, str]] = field(default_factory=list)  # (module, line, imported module)
    packages: set[str] = field(default_factory=set)  # modules that are a folder's __init__.py


def _module_name(root: Path, path: Path) -> str:
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _catches_import_error(node: ast.Try) -> bool:
    names = set()
    for handler in node.handlers:
        kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        names.update(k.id for k in kinds if isinstance(k, ast.Name))
    return bool(names & {"ImportError", "ModuleNotFoundError"})


def read_layout(root: Path) -> Layout:
    """Parse every .py file under `root` (a package folder) and record its imports."""
    layout = Layout(root.name)
    for path in sorted(root.rglob("*.py")):
        module = _module_name(root, path)
        if path.name == "__init__.py":
            layout.packages.add(module)
        tree = ast.parse(path.read_text(), filename=str(path))
        targets: set[str] = set()
        functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        in_function = {id(s) for f in functions for s in ast.walk(f) if s is not f}
        # an import that may fail (`try: ... except ImportError:`) is an optional one: it may wait for its caller
        optional = {id(s) for t in ast.walk(tree) if isinstance(t, ast.Try) and _catches_import_error(t)
                    for part in t.body for s in ast.walk(part)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, node, path.name == "__init__.py")
                # `from pkg import module` imports the module; `from module import name` the module itself
                names = [f"{base}.{a.name}" for a in node.names] + [base]
            else:
                continue
            if id(node) in in_function and id(node) not in optional:
                layout.inner.append((module, node.lineno, names[-1]))
            targets.update(n for n in names if n.split(".")[0] == root.name)
        layout.imports[module] = targets
    known = set(layout.imports)
    for module, targets in layout.imports.items():
        # keep modules only (`from course_lib.data.tokenize import pad_batch` names a function too)
        layout.imports[module] = {t for t in targets if t in known and t != module and t != root.name}
    return layout


def subpackage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def module_graph(layout: Layout) -> dict[str, set[str]]:
    """Module -> the modules it imports, leaving out package `__init__`s (Python runs them first anyway)."""
    return {m: ts - layout.packages for m, ts in layout.imports.items() if m not in layout.packages}


def package_graph(layout: Layout) -> dict[str, set[str]]:
    """Subpackage -> the other subpackages it imports."""
    graph: dict[str, set[str]] = {}
    for module, targets in layout.imports.items():
        source = subpackage(module)
        if source is None:
            continue
        graph.setdefault(source, set()).update(
            t for t in map(subpackage, targets) if t is not None and t != source)
    return graph


def violations(layout: Layout) -> list[str]:
    """Every broken rule of the layout, as one readable line each (empty when the layout is clean)."""
    problems = []
    packages = package_graph(layout)
    if cycle := find_cycle(packages):
        problems.append("subpackages import each other in a circle: " + " -> ".join(cycle))
    if cycle := find_cycle(module_graph(layout)):
        problems.append("modules import each other in a circle: " + " -> ".join(cycle))
    for source, targets in sorted(packages.items()):
        if source == "core" and targets:
            problems.append(f"core imports {sorted(targets)}: core imports no other subpackage")
        if source in TEACHING and "instructor" in targets:
            problems.append(f"{source} imports instructor: no teaching subpackage does")
        if "fast" in targets and source not in ("training", "fast"):
            problems.append(f"{source} imports fast: only training does")
    for module, line, imported in layout.inner:
        top = imported.split(".")[0]
        where = f"{module}:{line}"
        if top == layout.root:
            problems.append(f"{where} imports {imported} inside a function: import our own modules at the top")
        elif top not in LAZY_ANYWHERE and not (subpackage(module) == "core" and top in LAZY_IN_CORE):
            problems.append(f"{where} imports {imported} inside a function: only heavy optional libraries may wait")
    return problems


def test_course_lib_keeps_the_layout():
    problems = violations(read_layout(PACKAGE))
    assert not problems, "\n".join(problems)


def test_every_subpackage_is_there():
    layout = read_layout(PACKAGE)
    assert {subpackage(m) for m in layout.imports} - {None} == set(SUBPACKAGES)


def _plant(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "course_lib"
    for name, source in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    for folder in [root, *[p for p in root.rglob("*") if p.is_dir()]]:
        (folder / "__init__.py").touch()
    return root


@pytest.mark.parametrize("files, expected", [
    ({"data/a.py": "from course_lib.lora import b\n", "lora/b.py": "from course_lib.data.a import x\n"},
     "subpackages import each other in a circle: data -> lora -> data"),
    ({"data/a.py": "from . import b\n", "data/b.py": "from course_lib.data.a import x\n"},
     "modules import each other in a circle: course_lib.data.a -> course_lib.data.b -> course_lib.data.a"),
    ({"core/a.py": "from course_lib.data import b\n", "data/b.py": "X = 1\n"}, "core imports ['data']"),
    ({"data/a.py": "import course_lib.instructor.cli\n", "instructor/cli.py": "X = 1\n"}, "data imports instructor"),
    ({"evaluation/a.py": "from course_lib.fast.engine import f\n", "fast/engine.py": "def f(): pass\n"},
     "evaluation imports fast"),
    ({"data/a.py": "def f():\n    from course_lib.core import b\n", "core/b.py": "X = 1\n"},
     "course_lib.data.a:2 imports course_lib.core inside a function"),
    ({"data/a.py": "def f():\n    import torch\n"}, "course_lib.data.a:2 imports torch inside a function"),
    ({"data/a.py": "def f():\n    try:\n        import x\n    except ValueError:\n        pass\n"},
     "course_lib.data.a:3 imports x inside a function"),
])
def test_a_planted_violation_is_found(tmp_path, files, expected):
    problems = violations(read_layout(_plant(tmp_path, files)))
    assert any(expected in p for p in problems), problems


def test_a_clean_planted_layout_passes(tmp_path):
    root = _plant(tmp_path, {"core/a.py": "import os\n\ndef f():\n    import transformers\n",
                             "lora/e.py": "def f():\n    try:\n        import liger\n    except ImportError:\n"
                                          "        pass\n",
                             "data/b.py": "from course_lib.core import a\n\ndef g():\n    import matplotlib\n",
                             "training/c.py": "from course_lib.fast.d import x\nfrom course_lib.data.b import g\n",
                             "fast/d.py": "from course_lib.data import b\nx = 1\n"})
    assert violations(read_layout(root)) == []
