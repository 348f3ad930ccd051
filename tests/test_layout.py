"""The package's shape, checked from the source: stages that import downward only, no cycle, imports at the
top (a lazy one says which heavy library it keeps out), no re-exports, and the run folder's file names
spelled in one module. Every import counts, those inside functions too."""
from __future__ import annotations

import ast
import re
import shutil
import subprocess
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent
PACKAGE = PROJECT / "cxrlib"
# Top to bottom is the reverse: a module imports its own layer and those below it, never one above.
LAYERS = ["root", "stats", "data", "synthetic", "training", "evaluation", "handoff", "experiments", "bench"]
RUN_FILES = ("params.yaml", "cohort.csv", "cohort_report.json", "history.csv", "best.pt", "last.pt", "predictions.csv",
             "metrics.json", "demographics.csv", "fairness.csv", "fairness.json", "MODEL_CARD.md", "MODEL_CARD.html",
             "ensemble.json", "tracking.json", "index.html")
MAX_LAZY = 30


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PROJECT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else "root"


def imports(module: str, path: Path):
    """(imported cxrlib module, the ImportFrom/Import node, whether it is at the module's top level)."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.startswith("cxrlib"):
                for alias in node.names:
                    target = f"{base}.{alias.name}"
                    yield (target if target in MODULES else base), node, id(node) in top
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("cxrlib"):
                    yield alias.name, node, id(node) in top


def graph() -> dict[str, set]:
    edges: dict[str, set] = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for target, _, _ in imports(module, path):
            while target not in MODULES and "." in target:
                target = target.rsplit(".", 1)[0]
            if target != module:
                edges[module].add(target)
    return edges


def cycles(edges: dict[str, set]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_cxrlib_is_laid_out_by_stage():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert folders == set(LAYERS) - {"root"}
    assert all(layer(m) in LAYERS for m in MODULES)


def test_no_source_file_is_ignored_by_git():
    # A broad ignore pattern ("data/") once kept cxrlib/data/__init__.py out of every clone.
    if not (PROJECT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout")
    sources = [str(p.relative_to(PROJECT)) for p in [*PACKAGE.rglob("*.py"), *(PROJECT / "tests").rglob("*.py"),
                                                      *(PROJECT / "notebooks").glob("*.py")]
               if "__pycache__" not in p.parts]
    ignored = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], input="\n".join(sources), text=True,
                             capture_output=True, cwd=PROJECT).stdout.split()
    assert ignored == [], f"ignored by .gitignore, so missing from every clone: {ignored}"


def test_imports_run_downward_and_never_in_a_circle():
    edges = graph()
    upward = sorted(f"{a} -> {b}" for a, targets in edges.items() for b in targets
                    if LAYERS.index(layer(a)) < LAYERS.index(layer(b)))
    assert upward == [], "imports that run up the layers:\n" + "\n".join(upward)
    assert cycles(edges) == [], f"import cycles: {cycles(edges)}"


def test_an_upward_import_or_a_cycle_is_caught():
    """The checks above can fail: the same functions on a graph with one bad edge each."""
    edges = graph()
    edges["cxrlib.stats.metrics"].add("cxrlib.experiments.runs")
    assert any(LAYERS.index(layer(a)) < LAYERS.index(layer(b)) for a, ts in edges.items() for b in ts)
    edges["cxrlib.runfiles"].add("cxrlib.experiments.lister")   # lister imports runfiles: a cycle
    assert any("cxrlib.runfiles" in c for c in cycles(edges))


def test_imports_sit_at_the_top_unless_they_keep_a_heavy_library_out():
    lazy = []
    for module, path in MODULES.items():
        lines = path.read_text().splitlines()
        for target, node, at_top in imports(module, path):
            if not at_top:
                lazy.append((module, node.lineno, "# lazy:" in lines[node.end_lineno - 1]))
    statements = {(m, line) for m, line, _ in lazy}
    assert len(statements) <= MAX_LAZY, f"{len(statements)} imports inside functions"
    unexplained = sorted({f"{m}:{line}" for m, line, ok in lazy if not ok})
    assert unexplained == [], "imports inside functions without a '# lazy:' reason: " + ", ".join(unexplained)


HEAVY = ("torch", "torchvision", "sklearn", "scipy", "matplotlib", "timm", "transformers", "pydicom", "safetensors",
         "mlflow", "tensorboard", "submitit", "onnx", "onnxruntime", "papermill", "nbconvert", "mistune", "statsmodels",
         "pylibjpeg", "open_clip")


def top_level_reach() -> dict[str, set[str]]:
    """Per cxrlib module: every top-level package its import brings in (its own top-level imports, and those of the
    cxrlib modules it imports at top level, transitively)."""
    direct: dict[str, set[str]] = {}
    deps: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        direct[module] = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
        direct[module] |= {n.module.split(".")[0] for n in tree.body
                           if isinstance(n, ast.ImportFrom) and not n.level and n.module}
        deps[module] = set()
        for target, _, at_top in imports(module, path):
            while target not in MODULES and "." in target:
                target = target.rsplit(".", 1)[0]
            if at_top and target != module:
                deps[module].add(target)
    reach: dict[str, set[str]] = {}

    def visit(module, seen=()):
        if module not in reach:
            found = set(direct.get(module, ()))
            for dep in deps.get(module, ()):
                if dep not in seen:
                    found |= visit(dep, (*seen, module))
            reach[module] = found
        return reach[module]

    for module in MODULES:
        visit(module)
    return reach


def test_a_lazy_import_names_the_heavy_library_it_keeps_out_and_truly_does():
    """'# lazy: because' is no reason: the comment names a heavy library (HEAVY) that the imported module brings
    in and the importing module does not already load at its top."""
    reach, wrong = top_level_reach(), []
    for module, path in MODULES.items():
        lines = path.read_text().splitlines()
        tree = ast.parse(path.read_text())
        top = {id(n) for n in tree.body}
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)) or id(node) in top:
                continue
            if "# lazy:" not in lines[node.end_lineno - 1]:   # a plain import inside a function: not a claim
                continue
            comment = lines[node.end_lineno - 1].partition("# lazy:")[2]
            named = {lib for lib in HEAVY if re.search(rf"\b{lib}\b", comment)}
            if isinstance(node, ast.ImportFrom) and node.level:
                parts = package.split(".")
                targets = [".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))]
            else:
                targets = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            brought = set()
            for target in targets:
                while target not in MODULES and "." in target and target.startswith("cxrlib"):
                    target = target.rsplit(".", 1)[0]
                brought |= reach.get(target, set()) | ({target} if target in MODULES else {target.split(".")[0]})
                if isinstance(node, ast.ImportFrom) and target in MODULES:
                    brought |= set().union(*(reach.get(f"{target}.{a.name}", set()) for a in node.names))
            kept_out = named & brought - reach[module]
            if not named or not kept_out:
                heavy = sorted(brought & set(HEAVY))
                wrong.append(f"{path.relative_to(PROJECT)}:{node.lineno}: '# lazy:{comment}' (brings {heavy})")
    assert wrong == [], "a lazy import's reason must name the heavy library it keeps out:\n" + "\n".join(wrong)


def defined_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in (node.targets if isinstance(node, ast.Assign) else [node.target]):
                names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
    return names


@pytest.mark.parametrize("folder", ["cxrlib", "tests", "notebooks"])
def test_no_name_is_taken_from_a_module_that_only_imports_it(folder):
    """No re-exports: `from cxrlib.x import name` finds name defined in x itself (or x's submodule)."""
    wrong = []
    for path in sorted((PROJECT / folder).rglob("*.py")):
        module = module_name(path) if folder == "cxrlib" else None
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                parts = (module if path.name == "__init__.py" else module.rsplit(".", 1)[0]).split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base not in MODULES or MODULES[base].name == "__init__.py":
                continue
            names = defined_names(MODULES[base])
            wrong += [f"{path.relative_to(PROJECT)}:{node.lineno}: {base}.{a.name}" for a in node.names
                      if a.name not in names and f"{base}.{a.name}" not in MODULES]
    assert wrong == [], "\n".join(wrong)


def test_run_file_names_are_spelled_only_by_runfiles():
    spelled = []
    for module, path in MODULES.items():
        if module == "cxrlib.runfiles":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in RUN_FILES:
                spelled.append(f"{path.relative_to(PROJECT)}:{node.lineno}: {node.value!r}")
    assert spelled == [], "use cxrlib.runfiles' names:\n" + "\n".join(spelled)


PATH_SPELLING = re.compile(r"(^|/)(" + "|".join(map(re.escape, RUN_FILES)) + r")$|\.running\.ipynb|\[0-9\]\[0-9\]_|^\*/\S")


def path_spellings(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, text) of each path-like piece of a string or f-string that names a run file or a run-folder glob:
    f"{run}/metrics.json", "*/params.yaml", "[0-9][0-9]_*.html", ".running.ipynb". A name in prose (a message
    telling the user 'rerun notebook 03: no metrics.json yet') is no path and is allowed."""
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body
                  and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    in_fstrings = {id(part) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for part in node.values}
    found = []
    for node in ast.walk(tree):
        if id(node) in docstrings or id(node) in in_fstrings:   # prose, or read with its f-string
            continue
        parts = node.values if isinstance(node, ast.JoinedStr) else [node] if isinstance(node, ast.Constant) else []
        for part in parts:
            if isinstance(part, ast.Constant) and isinstance(part.value, str) and part.value not in RUN_FILES:
                pieces = re.split(r"[\s:;,()'\"`]", part.value)
                found += [(node.lineno, piece) for piece in pieces
                          if PATH_SPELLING.search(piece) and (piece.startswith(("/", "*", "[", ".")) or "/" in piece)]
    return found


def test_run_folder_paths_and_globs_are_built_only_by_runfiles():
    """Names inside f-strings and paths count too: f"{run}/metrics.json" is a second spelling of METRICS."""
    spelled = [f"{path.relative_to(PROJECT)}:{line}: {text!r}" for module, path in MODULES.items()
               if module != "cxrlib.runfiles" for line, text in path_spellings(ast.parse(path.read_text()))]
    assert spelled == [], "use cxrlib.runfiles' names and helpers:\n" + "\n".join(spelled)
    planted = ast.parse('raise UserError(f"{run}/metrics.json: no metrics")\nfor f in d.glob("*/params.yaml"): pass\n'
                        'x = d / f"{nb}.running.ipynb"\ny = d.glob("[0-9][0-9]_*.html")\nz = "rerun 03: no metrics.json yet"')
    assert sorted(text for _, text in path_spellings(planted)) == sorted(
        ["/metrics.json", "*/params.yaml", ".running.ipynb", "[0-9][0-9]_*.html"])


def test_no_module_is_over_400_lines():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}, long


def test_the_readme_is_short_and_every_documentation_link_resolves():
    import re

    readme = PROJECT / "README.md"
    assert len(readme.read_bytes()) <= 10_500
    broken = []
    for page in [readme, *sorted((PROJECT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            if not resolved.exists():
                broken.append(f"{page.name}: {target}")
            elif anchor and resolved.suffix == ".md":
                slugs = {re.sub(r"[^\w\- ]", "", h.lower()).strip().replace(" ", "-")
                         for h in re.findall(r"^#+ (.+)$", resolved.read_text(), flags=re.M)}
                if anchor not in slugs:
                    broken.append(f"{page.name}: {target} (no such heading)")
    assert broken == [], broken


def test_the_layout_tree_in_the_docs_lists_every_module_and_nothing_else():
    text = (PROJECT / "docs" / "development.md").read_text()
    tree = text.split("```\ncxrlib/\n", 1)[1].split("```", 1)[0]
    listed, folder = set(), ""
    for line in tree.splitlines():
        if line.startswith("    ") and line.split()[0].endswith(".py"):
            listed.add(f"{folder}{line.split()[0]}")
        elif line.startswith("  ") and not line.startswith("    "):
            name = line.split()[0]
            folder = name if name.endswith("/") else ""
            listed.add(name if name.endswith("/") else name)
    on_disk = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
               if "__pycache__" not in p.parts and not (p.name == "__init__.py" and p.parent != PACKAGE)}
    on_disk |= {f"{p.name}/" for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    unlisted = [t.name for t in sorted((PROJECT / "tests").glob("test_*.py")) if f"`{t.name}`" not in text]
    assert unlisted == [], f"docs/development.md's table of test files does not name {unlisted}"
    assert listed == on_disk, f"docs/development.md's tree: missing {sorted(on_disk - listed)}, stale {sorted(listed - on_disk)}"


LIGHT = [["--help"], ["runs", "--runs-dir", "{tmp}"], ["external-table", "--help"]]
LIGHT_MODULES = ["cxrlib.experiments.external_runner", "cxrlib.experiments.runs", "cxrlib.experiments.lister",
                 "cxrlib.handoff.index_page", "cxrlib.account", "cxrlib.evaluation.readable", "cxrlib.experiments.notebook",
                 "cxrlib.data.external_selection"]


@pytest.mark.parametrize("argv", LIGHT, ids=lambda a: a[0])
def test_light_commands_import_no_torch_sklearn_or_scipy(argv, tmp_path):
    """`python -m cxrlib --help`, `make runs`, `external-table`, and the parent process of `make external` and
    `make evaluate` (the runner) stay light: once, make external's parent imported torch, sklearn and scipy
    (3 s) for a constant, and the index page the audit's statistics for one word."""
    import subprocess
    import sys

    argv = [a.format(tmp=tmp_path) for a in argv]
    code = ("import runpy, sys\n"
            f"sys.argv = ['cxrlib', *{argv!r}]\n"
            "try:\n    runpy.run_module('cxrlib', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            f"import importlib\nfor m in {LIGHT_MODULES!r}:\n    importlib.import_module(m)\n"
            "print('HEAVY', sorted(m for m in ('torch', 'sklearn', 'scipy', 'matplotlib') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip().splitlines()[-1] == "HEAVY []", done.stdout[-2000:] + done.stderr[-2000:]


def test_notebook_01_loads_no_torch():
    """Notebook 01 (cohort and cache) once loaded torch through viz, for a warning's words and a division."""
    import subprocess
    import sys

    imports = [line for line in (PROJECT / "notebooks" / "01_cohort.py").read_text().splitlines()
               if line.startswith(("from cxrlib", "import cxrlib"))]
    code = "\n".join(imports) + "\nimport sys\nprint('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert imports and done.stdout.strip() == "False", done.stderr[-2000:]


def dynamic_imports(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of each importlib.import_module / __import__ of a cxrlib module named by a string."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str) and node.args[0].value.startswith("cxrlib."):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in ("import_module", "__import__"):
                found.append((node.lineno, node.args[0].value))
    return found


def test_no_importlib_import_of_a_higher_layer():
    """A string import is still an import: importlib.import_module("cxrlib.experiments.runs") from stats would
    be the upward edge the import graph cannot see. (__main__ dispatches the commands: it is above them all.)"""
    upward = [f"{m}:{line}: {target}" for m, path in MODULES.items() if m != "cxrlib.__main__"
              for line, target in dynamic_imports(ast.parse(path.read_text()))
              if LAYERS.index(layer(target)) > LAYERS.index(layer(m))]
    assert upward == []
    planted = dynamic_imports(ast.parse('import importlib\nimportlib.import_module("cxrlib.experiments.runs")'))
    assert [LAYERS.index(layer(t)) > LAYERS.index(layer("cxrlib.stats.metrics")) for _, t in planted] == [True]
