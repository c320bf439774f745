"""The layout's rules, checked: torch only in the modules that handle tensors, and `validate` / `plan` free of it."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import cocktail_bot

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "quickstart" / "cocktail.yml"
# The modules that hold, read, write or compute on tensors; every other module must import without torch.
TENSOR_MODULES = {
    "cocktail_bot.api",  # LM_Cocktail's drop-in: merges in process
    "cocktail_bot.checkpoint",
    "cocktail_bot.engine",
    "cocktail_bot.geometric",  # model_stock, nuslerp, multislerp, karcher: arithmetic by angles and norms
    "cocktail_bot.fused",  # the CPU kernel of linear merges (numba over tensors' memory)
    "cocktail_bot.losses",
    "cocktail_bot.merge_kernels",
    "cocktail_bot.overlap",
    "cocktail_bot.scoring",
    "cocktail_bot.shards",
    "cocktail_bot.streamed",
}


def all_modules() -> list[str]:
    found = ["cocktail_bot"]
    for info in pkgutil.walk_packages(cocktail_bot.__path__, "cocktail_bot."):
        if info.name != "cocktail_bot.__main__":
            found.append(info.name)
    return sorted(found)


def _loads_torch(code: str) -> bool:
    probe = f"import sys\n{code}\nprint('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=False, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1] == "True"


def test_the_tensor_modules_exist():
    """A renamed tensor module must be renamed here too, or the rule below would silently check nothing."""
    assert TENSOR_MODULES <= set(all_modules())


def test_only_tensor_modules_import_torch():
    """Each module on its own, in a fresh interpreter: the ones outside TENSOR_MODULES leave torch unloaded."""
    modules = [name for name in all_modules() if name not in TENSOR_MODULES]
    code = "\n".join(
        [
            "import importlib, subprocess, sys",
            f"for name in {modules!r}:",
            "    probe = f'import sys, {name}; print(\"torch\" in sys.modules)'",
            "    out = subprocess.run([sys.executable, '-c', probe], capture_output=True, text=True)",
            "    if out.returncode or out.stdout.strip() != 'False':",
            "        print(name, out.stdout.strip(), out.stderr.strip()[-300:])",
        ]
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True, timeout=600
    )
    assert result.stdout == "", f"these modules import torch (or fail to import):\n{result.stdout}"


def test_a_tensor_module_does_load_torch():
    """The probe can fail: a module from TENSOR_MODULES is seen loading torch."""
    assert _loads_torch("import cocktail_bot.merge_kernels")


def test_preload_imports_torch_on_its_thread_and_nothing_of_ours():
    """`cocktail run` imports torch while it opens its sources (preload.py); a cocktail_bot module imported there
    could deadlock with the main thread's imports."""
    code = (
        "from cocktail_bot import preload\npreload.start()\npreload.finish()\n"
        "print(sorted(name for name in sys.modules if name.startswith('cocktail_bot')))"
    )
    assert not _loads_torch("from cocktail_bot import preload")
    result = subprocess.run(
        [sys.executable, "-c", f"import sys\n{code}\nprint('torch' in sys.modules)"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
        timeout=120,
    )
    assert result.stdout.splitlines() == ["['cocktail_bot', 'cocktail_bot.preload']", "True"]


# What `validate` and `plan` must not load: each costs from tens of milliseconds (psutil, jinja2, the Hub client)
# to seconds (torch), and neither command needs it. plan reads only huggingface_hub's constants (the cache path).
HEAVY = (
    "torch",
    "transformers",
    "sentence_transformers",
    "numpy",
    "numba",
    "safetensors",
    "jinja2",
    "psutil",
    "tqdm",
    "httpx",
    "requests",
    "github",
    "huggingface_hub.hf_api",
    "huggingface_hub.file_download",
)


def _loaded(code: str, names: tuple[str, ...]) -> list[str]:
    """Which of ``names`` are in sys.modules after ``code`` runs in a fresh interpreter."""
    probe = f"import sys\n{code}\nprint([name for name in {names!r} if name in sys.modules])"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=False, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return ast.literal_eval(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("command", ["validate", "plan"])
def test_validate_and_plan_load_no_heavy_library(command):
    """The import boundary that keeps these commands fast (docs/benchmarks.md, `bench/bench_cli.py`)."""
    code = f"from cocktail_bot.cli import main\nassert main([{command!r}, {str(QUICKSTART)!r}]) == 0"
    assert _loaded(code, HEAVY) == []


def test_the_engine_imports_without_numba():
    """numba (~1.5 s of CPU, ~110 MB) is imported by the first linear merge on the CPU, not with the engine:
    `cocktail weights` imports the engine through the API but never merges."""
    assert _loaded("import cocktail_bot.api, cocktail_bot.engine", ("numba",)) == []
    assert _loaded("import cocktail_bot.fused", ("numba",)) == ["numba"]


def test_the_heavy_library_probe_can_fail():
    """A run that does load some of them is seen doing so."""
    loaded = _loaded("import jinja2, psutil, huggingface_hub.hf_api", HEAVY)
    assert {"jinja2", "psutil", "huggingface_hub.hf_api"} <= set(loaded)


def _import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports, at the top or inside functions (a deferred import still ties
    two modules together); imports under ``if TYPE_CHECKING:`` are left out, as they never run."""
    package = ROOT / "cocktail_bot"
    names = {
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): path
        for path in package.rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for name, path in names.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        typing_only = {
            id(inner)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for inner in ast.walk(node)
        }
        imported: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
                imported.update(f"{node.module}.{alias.name}" for alias in node.names)
        graph[name] = {other for other in imported if other in names and other not in (name, "cocktail_bot")}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the list of modules around it, or None."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for other in sorted(graph[node]):
            if state.get(other) == "open":
                return [*path[path.index(other) :], other]
            if other not in state and (found := visit(other)):
                return found
        state[node] = "done"
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycles():
    cycle = _cycle(_import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_one_did_you_mean():
    """Close-match suggestions come from suggest.py only, so every message words them the same way."""
    users = [
        path.name
        for path in (ROOT / "cocktail_bot").rglob("*.py")
        if "get_close_matches" in path.read_text(encoding="utf-8")
    ]
    assert users == ["suggest.py"]
