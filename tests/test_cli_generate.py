"""`scripts/generate_data.py` (= learnsolve-generate) end to end on a tiny config."""

import subprocess
import sys
from pathlib import Path

import pytest

from .cli_runner import run_cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("family", ["poisson2d", "fem_poisson"])
def test_generate_builds_then_reuses_caches(tmp_path, family):
    size = "6" if family == "poisson2d" else "60"
    args = [f"data={family}", f"data.size={size}", "data.num_train=3", "data.num_val=1", "data.num_test=1",
            "data.extra_test_sizes=[]", f"paths.data_dir={tmp_path / 'd'}", f"hydra.run.dir={tmp_path / 'out'}",
            "data.progress=false"]
    out = run_cli("generate", *args)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"{family} datasets" in out.stdout and "train" in out.stdout
    folders = sorted((tmp_path / "d" / family).iterdir())
    assert len(folders) == 3  # train, val, test: different seeds -> different caches
    assert all((f / "systems.pt").exists() and (f / "meta.json").exists() for f in folders)
    mtimes = [(f / "systems.pt").stat().st_mtime_ns for f in folders]
    again = run_cli("generate", *args)
    assert again.returncode == 0
    assert [(f / "systems.pt").stat().st_mtime_ns for f in folders] == mtimes  # loaded, not regenerated


def test_generate_rejects_unknown_family(tmp_path):
    out = run_cli("generate", "data=poisson2d", "data.family=nope", f"paths.data_dir={tmp_path}",
                  f"hydra.run.dir={tmp_path / 'out'}")
    assert out.returncode != 0 and "unknown data family 'nope'" in out.stderr


@pytest.mark.parametrize("script", ["generate_data.py", "export.py"])
def test_thin_scripts_run_as_programs(script):
    """The entry scripts as programs (the tests above call their main() in process): Hydra's help, exit status 0.
    train.py's help runs in tests/test_config.py, scripts/tune.py as a program in tests/test_tune.py."""
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / script), "--help"], capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode == 0 and "powered by Hydra" in out.stdout, out.stderr[-2000:]
