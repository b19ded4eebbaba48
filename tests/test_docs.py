"""Docs that cannot go stale, and the layering the architecture promises."""

from __future__ import annotations

import ast
from pathlib import Path

from corrald import docs
from corrald.api import methods

ROOT = Path(__file__).resolve().parents[1]


def test_readme_reference_blocks_match_the_code() -> None:
    found = docs.blocks((ROOT / "README.md").read_text())
    assert set(found) == set(docs.BLOCKS)
    for name, text in found.items():
        assert text == docs.render(name), (
            f"README {name} is stale: python -m corrald.docs README.md"
        )


def test_every_rpc_method_is_documented() -> None:
    for name, spec in methods.methods.items():
        assert len(spec.doc) > 20, f"{name} has no docstring"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_wire_contract_has_no_trio_and_no_daemon() -> None:
    for name in ("models.py", "errors.py"):
        imported = _imports(ROOT / "client" / "corral" / name)
        assert not {m for m in imported if m.split(".")[0] in ("trio", "corrald", "pygit2")}


def test_pure_core_does_no_io() -> None:
    forbidden = {"trio", "sqlite3", "pygit2", "psutil", "subprocess", "socket", "os", "corrald"}
    for name in ("scheduler.py", "conflicts.py"):
        imported = _imports(ROOT / "daemon" / "corrald" / name)
        assert not {m for m in imported if m.split(".")[0] in forbidden}, name


def test_pygit2_only_in_the_git_package() -> None:
    for path in (ROOT / "daemon" / "corrald").rglob("*.py"):
        if "pygit2" in {m.split(".")[0] for m in _imports(path)}:
            assert path.parent.name == "git", path


def test_architecture_names_every_module() -> None:
    text = (ROOT / "ARCHITECTURE.md").read_text()
    for path in (ROOT / "daemon" / "corrald").glob("*.py"):
        if path.stem != "__init__":
            assert path.stem in text, f"ARCHITECTURE.md does not mention {path.stem}"
