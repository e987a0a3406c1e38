"""A built wheel carries the shipped recipes: installed into a fresh venv outside the checkout, `rlkit recipes`
lists them and `rlkit check grpo_prm_quickstart` passes. (Before, recipes/ sat beside the package and
package_data named a folder that did not exist, so an installed rlkit listed nothing.)

The fresh venv gets the dependencies by a .pth line pointing at this interpreter's site-packages (no network,
no reinstall), and rlkit itself only from the wheel: the test checks the imported package lives in the venv."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    res = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600, **kw)
    assert res.returncode == 0, f"{cmd} failed:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    return res


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_ships_the_recipes(tmp_path):
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", wheels, REPO])
    (wheel,) = wheels.glob("rlkit-*.whl")
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    vpy = venv / "bin" / "python"
    site = Path(_run([vpy, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", vpy, "install", "--no-deps", "--no-index", "-q", wheel])
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", DS_ACCELERATOR="cpu")
    where = _run([vpy, "-c", "import rlkit; print(rlkit.__file__)"], cwd=outside, env=env).stdout.strip()
    assert where.startswith(str(venv)), where
    listed = _run([venv / "bin" / "rlkit", "recipes"], cwd=outside, env=env).stdout
    shipped = sorted(p.stem for p in (REPO / "rlkit" / "recipes").glob("*.yaml"))
    assert shipped and all(name in listed for name in shipped), listed
    checked = _run([venv / "bin" / "rlkit", "check", "grpo_prm_quickstart"], cwd=outside, env=env).stdout
    assert "grpo_prm_quickstart: ok (grpo" in checked, checked
