"""Run a script inside the repository's pinned Python environment (.venv/ at the root).

The comparison scripts need onnxruntime, onnx, numpy and Pillow at the versions pinned in
scripts/requirements-ort.txt; the Python package's tests also need those of
scripts/requirements-python.txt. `enter()` creates the venv on first use, installs each
requirements file whose pins changed, and re-executes the calling script with the venv's
interpreter.
"""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".venv"
ORT_REQUIREMENTS = "requirements-ort.txt"
PYTHON_REQUIREMENTS = "requirements-python.txt"


def stamp(name: str) -> Path:
    """A copy of the requirements file the venv was last installed from: a differing file
    means stale."""
    return VENV / f"installed-{name}"


def enter(requirements=(ORT_REQUIREMENTS,)) -> None:
    """Returns when already running in the venv with `requirements` (file names in scripts/)
    installed and up to date; otherwise installs what is stale and re-executes into it."""
    python = VENV / "bin" / "python"
    stale = [name for name in requirements
             if not (stamp(name).exists()
                     and stamp(name).read_text() == (REPO / "scripts" / name).read_text())]
    if Path(sys.prefix).resolve() == VENV.resolve() and not stale:
        return
    if not python.exists():
        print(f"creating {VENV}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    for name in stale:
        path = REPO / "scripts" / name
        print(f"installing {name} into {VENV}", file=sys.stderr)
        result = subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             "-r", str(path)],
        )
        if result.returncode != 0:
            sys.exit(f"could not install {path}; are we offline? PyPI is needed once "
                     f"to set up {VENV}")
        stamp(name).write_text(path.read_text())
    os.execv(python, [str(python), sys.argv[0], *sys.argv[1:]])
