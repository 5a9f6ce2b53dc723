"""lazy_import: the header names the dependency, the import happens at first use."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from spai.lazy import lazy_import

ROOT = Path(__file__).resolve().parents[2]


def test_the_module_is_imported_at_first_attribute_access_only():
    code = ("import sys; from spai.lazy import lazy_import; m = lazy_import('json.decoder'); "
            "print('json.decoder' in sys.modules); m.JSONDecodeError; print('json.decoder' in sys.modules)")
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.split() == ["False", "True"]


def test_it_forwards_to_the_real_module_and_names_a_missing_one():
    json = lazy_import("json")
    assert json.dumps([1]) == "[1]" and "dumps" in dir(json) and "loaded" in repr(json)
    missing = lazy_import("no_such_module_here")
    with pytest.raises(ModuleNotFoundError, match="no_such_module_here"):
        missing.anything
