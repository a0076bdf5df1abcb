"""analysis/ is plain PyTorch: importing every module of it loads no Lightning, and no file imports it."""

import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import analysis

ROOT = Path(analysis.__file__).parent
MODULES = sorted(f"analysis.{m.name}" for m in pkgutil.iter_modules([str(ROOT)]))


def test_every_module_is_listed():
    assert {"analysis.criticality", "analysis.evaluation", "analysis.interpolation", "analysis.representations",
            "analysis.states", "analysis.layers", "analysis.errors", "analysis.files"} <= set(MODULES)


def test_no_source_file_imports_lightning():
    pattern = re.compile(r"^\s*(import lightning|from lightning|import pytorch_lightning|from pytorch_lightning)",
                         re.MULTILINE)
    offenders = [p.name for p in ROOT.glob("*.py") if pattern.search(p.read_text())]
    assert offenders == []


def test_importing_all_of_analysis_loads_no_lightning():
    code = ("import sys\n" + "".join(f"import {m}\n" for m in MODULES)
            + "print(sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT.parent)
    assert out.stdout.strip() == "[]"


def test_errors_and_files_do_not_even_load_torch():
    code = "import sys, analysis.errors, analysis.files; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT.parent)
    assert out.stdout.strip() == "False"
