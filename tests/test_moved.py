"""The flat module paths of timmy 0.1 keep importing after the move to layer packages."""

import subprocess
import sys

import pytest

from timmy.moved import MOVED


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_path_is_the_module_that_now_holds_it(old):
    """``import timmy.<old>`` warns, names the new path, and is the very same module."""
    code = (
        "import importlib, sys, warnings\n"
        "warnings.simplefilter('always')\n"
        "with warnings.catch_warnings(record=True) as seen:\n"
        f"    old = importlib.import_module('timmy.{old}')\n"
        f"new = importlib.import_module('timmy.{MOVED[old]}')\n"
        "assert old is new, (old, new)\n"
        "msgs = [str(w.message) for w in seen if w.category is DeprecationWarning]\n"
        f"assert any('timmy.{MOVED[old]}' in m for m in msgs), msgs\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_from_an_old_path_import_a_name():
    """The README of 0.1 said ``from timmy.workload import demo_descriptions``."""
    sys.modules.pop("timmy.workload", None)   # warn again even if imported before
    with pytest.warns(DeprecationWarning, match="timmy.sim.workloads"):
        from timmy.workload import demo_descriptions
    from timmy.sim import demo_descriptions as new

    assert demo_descriptions is new


def test_names_that_never_existed_still_fail():
    with pytest.raises(ModuleNotFoundError):
        import timmy.no_such_module  # noqa: F401
