"""Run a script inside the repository's pinned Python environment (.venv/ at the root).

The comparison scripts need onnxruntime, onnx, numpy and Pillow at the versions pinned in
scripts/requirements-ort.txt. `enter()` creates the venv on first use, reinstalls when the
pins change, and re-executes the calling script with the venv's interpreter.
"""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".venv"
REQUIREMENTS = REPO / "scripts" / "requirements-ort.txt"
# A copy of the requirements the venv was last installed from: a differing file means stale.
STAMP = VENV / "installed-requirements-ort.txt"


def enter() -> None:
    """Returns when already running in the up-to-date venv; otherwise re-executes into it."""
    python = VENV / "bin" / "python"
    wanted = REQUIREMENTS.read_text()
    up_to_date = STAMP.exists() and STAMP.read_text() == wanted
    if Path(sys.prefix).resolve() == VENV.resolve() and up_to_date:
        return
    if not python.exists():
        print(f"creating {VENV}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    if not up_to_date:
        print(f"installing {REQUIREMENTS.name} into {VENV}", file=sys.stderr)
        result = subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             "-r", str(REQUIREMENTS)],
        )
        if result.returncode != 0:
            sys.exit(f"could not install {REQUIREMENTS}; are we offline? PyPI is needed once "
                     f"to set up {VENV}")
        STAMP.write_text(wanted)
    os.execv(python, [str(python), sys.argv[0], *sys.argv[1:]])
