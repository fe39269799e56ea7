"""The package's structure: no import cycles between modules, and the layers contract of pyproject.toml holds."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

grimp = pytest.importorskip("grimp")  # installed with import-linter (the dev extra)
ROOT = Path(__file__).resolve().parents[1]


def test_no_module_imports_itself_back():
    g = grimp.build_graph("nasdeploy")
    cycles = sorted({tuple(sorted((m, i))) for m in g.modules for i in g.find_modules_directly_imported_by(m)
                     if g.chain_exists(importer=i, imported=m)})
    assert cycles == []


def test_the_layering_contract_is_kept():
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    r = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and "1 kept, 0 broken" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
