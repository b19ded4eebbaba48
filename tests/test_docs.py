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


DAEMON = ROOT / "daemon" / "corrald"
CLIENT = ROOT / "client" / "corral"

#: The daemon's layers, lowest first. A module may import its own layer's
#: package and anything lower; peers within a layer never import each other.
LAYERS: list[set[str]] = [
    {"core"},
    {"agents", "systemd"},
    {"config", "process", "git", "state", "rpc"},
    {"pool"},
    {"api"},
    {"app", "docs"},
]


def _layer_of(module: str) -> tuple[int, str]:
    part = module.split(".")[1]
    for rank, names in enumerate(LAYERS):
        if part in names:
            return rank, part
    raise AssertionError(f"{module} is in no layer of the test: add it to LAYERS")


def _daemon_modules() -> dict[str, Path]:
    out = {}
    for path in DAEMON.rglob("*.py"):
        rel = path.relative_to(DAEMON.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        if len(parts) > 1:
            out[".".join(parts)] = path
    return out


def test_daemon_layers_import_only_downwards() -> None:
    for module, path in _daemon_modules().items():
        rank, part = _layer_of(module)
        for imported in _imports(path):
            if imported.split(".")[0] != "corrald" or imported == "corrald":
                continue
            other_rank, other = _layer_of(imported)
            assert other_rank < rank or other == part, f"{module} imports {imported} (layer up)"


def test_core_is_pure() -> None:
    forbidden = {"trio", "sqlite3", "pygit2", "psutil", "subprocess", "socket", "os", "corrald"}
    for path in (DAEMON / "core").rglob("*.py"):
        imported = {m.split(".")[0] for m in _imports(path)}
        inside = {m for m in _imports(path) if m.startswith("corrald.core")}
        assert not (imported - {"corrald"}) & forbidden, path
        assert {m for m in _imports(path) if m.startswith("corrald.")} <= inside, path


def test_rpc_knows_nothing_above_it() -> None:
    for path in (DAEMON / "rpc").rglob("*.py"):
        for imported in _imports(path):
            if imported.startswith("corrald"):
                assert imported.startswith("corrald.rpc"), f"{path} imports {imported}"


def test_api_never_touches_the_store() -> None:
    for path in (DAEMON / "api").rglob("*.py"):
        assert not {m for m in _imports(path) if m.startswith("corrald.state.store")}, path


def _attributes(path: Path) -> set[str]:
    return {n.attr for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Attribute)}


def test_only_the_state_layer_writes_the_store_or_makes_events() -> None:
    for layer in ("pool", "api", "process", "git", "rpc", "agents", "core"):
        for path in (DAEMON / layer).rglob("*.py"):
            touched = _attributes(path) & {"store", "bus", "put_tasks", "fan_out", "make"}
            assert not touched, f"{path} reaches into the state layer: {sorted(touched)}"


def test_wire_contract_has_no_trio_and_no_daemon() -> None:
    for name in ("models.py", "errors.py", "params.py", "events.py", "paths.py"):
        path = CLIENT / name
        if path.exists():
            imported = _imports(path)
            assert not {m for m in imported if m.split(".")[0] in ("trio", "corrald", "pygit2")}


def test_client_never_imports_the_daemon() -> None:
    for path in CLIENT.rglob("*.py"):
        assert not {m for m in _imports(path) if m.split(".")[0] == "corrald"}, path


def test_pygit2_only_in_the_git_package() -> None:
    for path in DAEMON.rglob("*.py"):
        if "pygit2" in {m.split(".")[0] for m in _imports(path)}:
            assert "git" in path.relative_to(DAEMON).parts, path


def test_architecture_names_every_folder_and_module() -> None:
    text = (ROOT / "ARCHITECTURE.md").read_text()
    for path in DAEMON.rglob("*.py"):
        if path.stem != "__init__":
            assert path.stem in text, f"ARCHITECTURE.md does not mention {path.stem}"
    for folder in (p for p in DAEMON.iterdir() if p.is_dir() and p.name != "__pycache__"):
        assert f"{folder.name}/" in text, f"ARCHITECTURE.md does not show the folder {folder.name}/"
