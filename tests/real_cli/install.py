"""Install the real agent CLIs at pinned versions into a per-machine cache.

``python -m tests.real_cli.install`` (run by .ci/run) puts the npm CLIs under
``<cache>/npm`` (``npm install --prefix``) and aider into its own venv
``<cache>/aider`` (it pins many packages). The cache is
``$CORRAL_REAL_CLI_CACHE`` or ``~/.cache/corral-real-cli`` (of the account); what is already
there at the pinned version is skipped, so CI pays once per machine. A
package that cannot be installed is reported and left out: its tests skip
with that reason (``<cache>/failed-<name>.txt``).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

#: npm package -> (pinned version, executable)
NPM = {
    "@anthropic-ai/claude-code": ("2.1.332", "claude"),
    "@openai/codex": ("0.171.0", "codex"),
    "@google/gemini-cli": ("0.61.0", "gemini"),
    "@qwen-code/qwen-code": ("0.24.4", "qwen"),
    "opencode-ai": ("1.18.33", "opencode"),
}
AIDER = ("aider-chat", "0.86.2")


def cache_dir() -> Path:
    # the account's home, not $HOME: each test runs with a HOME of its own
    default = Path(pwd.getpwuid(os.getuid()).pw_dir) / ".cache" / "corral-real-cli"
    return Path(os.environ.get("CORRAL_REAL_CLI_CACHE") or default)


def bin_dirs() -> list[Path]:
    """Where the installed executables are (prepend to PATH)."""
    root = cache_dir()
    return [root / "npm" / "node_modules" / ".bin", root / "aider" / "bin"]


def failure(name: str) -> str | None:
    """Why `name` could not be installed on this machine, if it could not."""
    path = cache_dir() / f"failed-{name}.txt"
    return path.read_text() if path.exists() else None


def _installed_npm(prefix: Path, package: str) -> str | None:
    manifest = prefix / "node_modules" / package / "package.json"
    try:
        return str(json.loads(manifest.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


def _note(name: str, why: str | None) -> None:
    path = cache_dir() / f"failed-{name}.txt"
    if why is None:
        path.unlink(missing_ok=True)
    else:
        path.write_text(why)
        print(f"real CLIs: {name} not installed: {why}", file=sys.stderr)


def install_npm() -> None:
    prefix = cache_dir() / "npm"
    prefix.mkdir(parents=True, exist_ok=True)
    npm = shutil.which("npm")
    for package, (version, exe) in NPM.items():
        if _installed_npm(prefix, package) == version:
            _note(exe, None)
            continue
        if npm is None:
            _note(exe, "npm is not installed")
            continue
        cmd = [npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund"]
        done = subprocess.run(
            [*cmd, f"{package}@{version}"], capture_output=True, text=True, check=False
        )
        ok = done.returncode == 0 and _installed_npm(prefix, package) == version
        _note(exe, None if ok else f"npm install {package}@{version}: {done.stderr[-500:]}")


def install_aider() -> None:
    venv = cache_dir() / "aider"
    python = venv / "bin" / "python"
    package, version = AIDER
    probe = [str(python), "-c", "import importlib.metadata as m; print(m.version('aider-chat'))"]
    if python.exists():
        have = subprocess.run(probe, capture_output=True, text=True, check=False).stdout.strip()
        if have == version:
            _note("aider", None)
            return
    else:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", f"{package}=={version}"],
        capture_output=True,
        text=True,
        check=False,
    )
    _note("aider", None if done.returncode == 0 else f"pip: {done.stderr[-500:]}")


def main() -> None:
    cache_dir().mkdir(parents=True, exist_ok=True)
    install_npm()
    install_aider()


if __name__ == "__main__":
    main()
