"""The house rules of docs/ARCHITECTURE.md, checked on the code as it is.

Layers are import-linter contracts in pyproject.toml; grimp (import-linter's graph) reads every
import statement, those inside functions and under TYPE_CHECKING included.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "appliance"
MAX_LINES = 600


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    linter = Path(sys.executable).parent / "lint-imports"
    return subprocess.run(
        [str(linter), "--no-cache"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)},
    )


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm without recursion: the groups of modules that import each other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
    return groups


def test_the_layer_contracts_are_kept() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "broken" not in result.stdout.lower().replace("0 broken", "")
    # Every contract of pyproject.toml was checked and kept, none left out for want of a module.
    contracts = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    count = contracts.count("[[tool.importlinter.contracts]]")
    assert count >= 4
    assert f"Contracts: {count} kept, 0 broken." in result.stdout, result.stdout[-4000:]


def test_an_import_against_the_layers_breaks_the_contract(tmp_path: Path) -> None:
    """The contract can fail: a copy of the package whose store imports the UI, inside a
    function where a reader might not look, is refused."""
    shutil.copytree(PACKAGE, tmp_path / "appliance", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    offender = tmp_path / "appliance" / "store" / "offender.py"
    offender.write_text("def sneak() -> None:\n    from appliance.web import create_app\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "1 broken" in result.stdout, result.stdout[-4000:]
    assert "appliance.store.offender -> appliance.web" in result.stdout


def test_no_import_cycles_between_modules() -> None:
    graph = grimp.build_graph("appliance")
    imports = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    assert strongly_connected(imports) == []


def test_cycle_finder_finds_a_cycle() -> None:
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.name))
def test_no_module_is_a_crowded_room(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines: split it by job"


def test_the_pynetdicom_hooks_the_receiver_relies_on_exist() -> None:
    """pyproject pins pynetdicom's minor release because the receiver subclasses its threaded
    server and registers it in AE._servers; a release that moves them fails here first."""
    from pynetdicom import AE
    from pynetdicom.transport import ThreadedAssociationServer

    assert isinstance(AE()._servers, list)
    assert callable(ThreadedAssociationServer.get_request)
    assert callable(ThreadedAssociationServer.verify_request)
