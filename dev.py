#!/usr/bin/env python3
"""The two commands of the README, runnable with nothing but Python 3.11 and pip.

    python3 dev.py pipeline [args...]   # set up .venv if needed, run python -m jobs.pipeline
    python3 dev.py test [pytest args]   # set up .venv if needed, run the whole test suite
    python3 dev.py setup                # only set up .venv
    python3 dev.py run MODULE [args]    # python -m MODULE inside .venv (any job)

Set-up is idempotent: the virtual environment is (re)installed only when
pyproject.toml or constraints.txt changed since the last successful install.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("MLOPS_VENV", ROOT / ".venv"))
STAMP = VENV / ".mlops-install-stamp"
INPUTS = ["pyproject.toml", "constraints.txt"]


def venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def wanted_stamp() -> str:
    h = hashlib.sha256()
    for name in INPUTS:
        h.update((ROOT / name).read_bytes())
    h.update(sys.version.encode())
    return h.hexdigest()


def setup() -> Path:
    py = venv_python()
    if not py.exists():
        print(f"[dev] creating virtual environment {VENV}", file=sys.stderr, flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    stamp = wanted_stamp()
    if STAMP.exists() and STAMP.read_text() == stamp:
        return py
    print("[dev] installing dependencies (first run takes a few minutes)", file=sys.stderr,
          flush=True)
    pip = [str(py), "-m", "pip", "--disable-pip-version-check"]
    subprocess.run(pip + ["install", "-q", "--upgrade", "pip", "setuptools", "wheel"], check=True)
    subprocess.run(pip + ["install", "-q", "-c", str(ROOT / "constraints.txt"),
                          "-e", f"{ROOT}[test]"], check=True, cwd=ROOT)
    STAMP.write_text(stamp)
    return py


def main(argv: list[str]) -> int:
    if sys.version_info[:2] != (3, 11):
        print(f"[dev] warning: Python 3.11 expected, this is {sys.version.split()[0]}",
              file=sys.stderr)
    command, rest = (argv[0], argv[1:]) if argv else ("help", [])
    if command in ("help", "-h", "--help"):
        print(__doc__)
        return 0
    py = setup()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if command == "setup":
        return 0
    if command == "pipeline":
        return subprocess.call([str(py), "-m", "jobs.pipeline", *rest], cwd=ROOT, env=env)
    if command == "test":
        return subprocess.call([str(py), "-m", "pytest", *rest], cwd=ROOT, env=env)
    if command == "run" and rest:
        return subprocess.call([str(py), "-m", *rest], cwd=ROOT, env=env)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
