"""The repository layout rules of DESIGN.md §2 that are easy to break by accident."""

import subprocess
import sys
from pathlib import Path

import canarist

ROOT = Path(__file__).resolve().parents[2]


def test_operator_dir_is_a_source_root_not_a_package():
    assert not list((ROOT / "operator").glob("*.py")), "operator/ must hold no .py file at its root"


def test_import_operator_from_repo_root_is_the_standard_library():
    out = subprocess.run([sys.executable, "-c", "import operator; print(operator.__file__)"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(out).parent == Path(subprocess.__file__).parent, out


def test_canarist_package_comes_from_operator_dir():
    assert Path(canarist.__file__).parent == ROOT / "operator" / "canarist"
