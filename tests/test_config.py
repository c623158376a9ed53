"""Hydra configuration: what `conf/` composes to (data families on a shared base, run folders named by
task_name, the debug/ and experiment/ groups, the W&B sweep files), through Hydra's compose API.

At the end: train.py as a program (its help), and two runs in process: `debug=default` and the benchmark
experiment for one step."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from learnsolve.cli._hydra import CONF_DIR
from learnsolve.data import GENERATORS

from .cli_runner import run_cli

ROOT = Path(__file__).resolve().parents[1]
CONF = Path(CONF_DIR)


def _compose(name: str, *overrides: str, hydra: bool = False):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(name, overrides=list(overrides), return_hydra_config=hydra)


def _plain(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=False)


# --- data: the families on conf/data/_base.yaml ---------------------------------------------------------------

_COMMON = {"_target_": "learnsolve.training.datamodule.LinearSystemDataModule", "num_train": 64, "num_val": 16,
           "num_test": 16, "seed": 0, "rhs": "random", "params": {}, "batch_size": 8,
           "data_dir": "${paths.data_dir}", "extra_test_sizes": [], "num_workers": 0, "progress": True}
# what every data=FAMILY composes to (for the first nine: as before the shared base existed, when each file spelled
# out every key)
EXPECTED_DATA = {
    "anisotropic2d": {"size": 32, "params": {"epsilon": 0.01, "theta": 0.5235987755982988}, "extra_test_sizes": [64]},
    "convdiff2d": {"size": 32, "params": {"peclet": 10.0}, "extra_test_sizes": [64]},
    "diffusion2d": {"size": 32, "params": {"sigma2": 1.0, "corr_len": 0.1}, "extra_test_sizes": [64, 128, 256]},
    "elasticity2d": {"size": 16, "params": {"nu": 0.3, "E_sigma2": 1.0}, "extra_test_sizes": [32]},
    "fem_poisson": {"size": 400, "params": {"coeff_sigma2": 1.0}, "extra_test_sizes": [1600]},
    "poisson2d": {"size": 32, "extra_test_sizes": [64]},
    "poisson3d": {"size": 12},
    "trajectory2d": {"size": 8, "rhs": "smooth", "params": {"sigma2": 0.25, "corr_len": 0.2, "a": 1.0, "beta": 0.5,
                                                              "t_final": 0.05, "num_times": 16}},
    "forced2d": {"size": 8, "rhs": "smooth", "params": {"sigma2": 0.25, "corr_len": 0.2, "a": 1.0, "beta": 0.5,
                                                          "stiffness": 0.005, "t_final": 3.0, "num_times": 16}},
    "lognormal2d": {"size": 32, "params": {"sigma2": 4.0, "corr_len": 0.0}, "extra_test_sizes": [64, 128]},
    "channels2d": {"size": 32, "params": {"contrast": 1e6, "num_channels": 4, "num_inclusions": 8, "width": 0.04},
                   "extra_test_sizes": [64, 128]},
    "graph_laplacian": {"size": 1024, "params": {"sigma2": 1.0}, "extra_test_sizes": [4096, 16384]},
}
# not one family: the mixtures, and the small default jobs of `python train.py` (diffusion2d) and of model=neural_ode
# (forced2d) that train.yaml's defaults pick (tests/test_data_configs.py checks them)
OTHER_DATA = ["mixed", "hard", "default", "default_forced2d"]
KEY_ORDER = ["_target_", "family", "size", "num_train", "num_val", "num_test", "seed", "rhs", "params", "batch_size",
             "data_dir", "extra_test_sizes", "num_workers", "progress"]
TRAIN_DATA = {"num_train": 48, "num_val": 8, "num_test": 8, "extra_test_sizes": []}  # train.py's small default job


def test_data_group_is_the_families_the_mixtures_and_the_defaults_plus_the_base():
    stems = sorted(p.stem for p in (CONF / "data").glob("*.yaml"))
    assert stems == sorted(["_base", *OTHER_DATA, *EXPECTED_DATA])
    assert set(EXPECTED_DATA) <= set(GENERATORS)
    assert (CONF / "data" / "_base.yaml").read_text().startswith("# NOT a data family")


@pytest.mark.parametrize("family", sorted(EXPECTED_DATA))
def test_each_data_family_composes_to_its_full_config(family):
    expected = {**_COMMON, "family": family, **EXPECTED_DATA[family]}
    data = _compose("generate", f"data={family}").data  # generate.yaml adds nothing to data
    assert _plain(data) == expected and list(data) == KEY_ORDER
    train = _compose("train", f"data={family}").data  # train.py runs with what the file sets
    assert _plain(train) == expected and list(train) == KEY_ORDER
    own = yaml.safe_load((CONF / "data" / f"{family}.yaml").read_text())  # the file holds only what differs
    assert own["defaults"] == ["_base", "_self_"] and own["family"] == family
    assert set(own) - {"defaults", "family"} <= set(EXPECTED_DATA[family]) | {"rhs"}


def test_a_model_that_brings_its_data_family_still_composes_through_the_base():
    data = _compose("train", "model=neural_ode").data
    assert _plain(data) == {**_COMMON, "family": "forced2d", **EXPECTED_DATA["forced2d"], **TRAIN_DATA}
    assert _compose("train", "model=neural_ode", "data=poisson2d").data.family == "poisson2d"


def test_the_base_is_not_a_usable_family():
    data = _compose("train", "data=_base").data
    assert OmegaConf.is_missing(data, "family") and OmegaConf.is_missing(data, "size")


# --- run folders: ${paths.log_dir}/${task_name}/{runs,multiruns}/<time> ---------------------------------------

TIME = r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_\d{6}"


@pytest.mark.parametrize(("app", "task", "overrides"), [
    ("train", "train", ()),
    ("train", "debug", ("debug=default",)),
    ("evaluate", "evaluate", ("ckpt_path=null",)),
    ("generate", "generate", ()),
])
def test_run_folders_are_named_by_task_name(app, task, overrides, tmp_path):
    cfg = _compose(app, f"paths.root_dir={tmp_path}", *overrides, hydra=True)
    assert cfg.task_name == task
    assert "${task_name}" in OmegaConf.to_container(cfg.hydra.run, resolve=False)["dir"]
    assert re.fullmatch(rf"{re.escape(str(tmp_path))}/outputs/{task}/runs/{TIME}", cfg.hydra.run.dir)
    assert re.fullmatch(rf"{re.escape(str(tmp_path))}/outputs/{task}/multiruns/{TIME}", cfg.hydra.sweep.dir)


def test_export_names_its_task_and_keeps_no_run_folder():
    cfg = _compose("export", "ckpt_path=x", hydra=True)
    assert cfg.task_name == "export" and cfg.hydra.run.dir == "." and cfg.hydra.output_subdir is None


# --- composing from a notebook: no learnsolve import, every value resolves -------------------------------------

@pytest.mark.parametrize("app", ["train", "evaluate", "generate", "export", "tune"])
def test_configs_compose_and_resolve_with_hydra_alone(app):
    """Plain Hydra + OmegaConf resolve every config (no custom resolver that only a learnsolve import registers)."""
    from hydra.core.hydra_config import HydraConfig

    overrides = {"tune": ("ckpt_path=x", "matrix=x"), "evaluate": ("ckpt_path=x",), "export": ("ckpt_path=x",)}
    cfg = _compose(app, *overrides.get(app, ()), hydra=True)
    HydraConfig().set_config(cfg)  # what a notebook does to resolve ${hydra:...} paths (Hydra's own API)
    resolved = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
                for k, v in cfg.items() if k != "hydra"}  # hydra.job.num exists only inside a sweep
    assert resolved["task_name"] == app and "${" not in str(resolved)


@pytest.mark.parametrize(("trainer", "expected"), [
    ({"max_epochs": None, "max_time": None}, {"max_epochs": 8}),
    ({"max_epochs": None, "max_time": "00:00:01:00"}, {"max_epochs": -1}),
    ({"max_epochs": 3, "max_time": "00:00:01:00"}, {}),
])
def test_epoch_limit_default_and_timed(trainer, expected):
    from learnsolve.training.train import _epoch_limit

    assert _epoch_limit(OmegaConf.create(trainer)) == expected
    assert _compose("train").trainer.max_epochs is None  # resolved by _epoch_limit when the Trainer is built


# --- debug/ ------------------------------------------------------------------------------------------------------

def test_debug_configs_compose():
    cfg = _compose("train", "debug=default")
    assert cfg.trainer.max_epochs == 1 and cfg.trainer.accelerator == "cpu" and cfg.trainer.devices == 1
    assert cfg.logger._target_.endswith("CSVLogger") and cfg.report is False
    assert (cfg.data.num_train, cfg.data.num_val, cfg.data.num_test, cfg.data.batch_size) == (4, 2, 2, 2)
    assert _compose("train", "debug=fast_dev_run").trainer.fast_dev_run is True
    profiler = _compose("train", "debug=profiler").trainer.profiler
    assert profiler._target_ == "pytorch_lightning.profilers.SimpleProfiler"
    # debug comes last: it wins over an experiment, and the command line wins over it
    cfg = _compose("train", "experiment=neural_if_benchmark", "debug=default", "logger=none")
    assert cfg.model.name == "neural_if" and cfg.data.num_train == 4 and cfg.trainer.max_epochs == 1
    assert not cfg.logger


# --- experiment/neural_if_benchmark: the learned-solver benchmark's training ------------------------------------

def _bench_learned_train_overrides() -> list[str]:
    """The overrides scripts/bench_learned.py passes to train.py for neural_if with a 15-minute budget."""
    spec = importlib.util.spec_from_file_location("bench_learned", ROOT / "scripts" / "bench_learned.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    calls = []
    bench.subprocess = SimpleNamespace(run=lambda cmd, **kw: calls.append(cmd) or SimpleNamespace(returncode=0))
    args = SimpleNamespace(budget_minutes=15.0, train_size=64, num_train=256, data_root="/x", override=[])
    bench.train_model("neural_if", args, Path("/nonexistent"))
    (cmd,) = calls
    return [o for o in cmd[2:] if not o.startswith(("hydra.", "paths.root_dir="))]


def test_neural_if_benchmark_experiment_is_the_bench_learned_training():
    exp = _plain(_compose("train", "experiment=neural_if_benchmark"))
    bench = _plain(_compose("train", *_bench_learned_train_overrides()))
    for cfg in (exp, bench):  # display only: bench_learned.py captures the output
        del cfg["trainer"]["enable_progress_bar"], cfg["data"]["progress"]
    assert exp == bench
    assert exp["model"]["name"] == "neural_if" and exp["trainer"]["max_time"] == "00:00:15:00"
    assert (exp["data"]["family"], exp["data"]["size"], exp["data"]["num_train"]) == ("diffusion2d", 64, 256)


# --- sweeps/wandb: W&B sweep files (not a Hydra group) -------------------------------------------------------

@pytest.mark.parametrize("path", sorted((ROOT / "sweeps" / "wandb").glob("*.yaml")), ids=lambda p: p.stem)
def test_wandb_sweep_parameters_are_train_overrides(path):
    sweep = yaml.safe_load(path.read_text())
    assert sweep["program"] == "train.py" and f"sweeps/wandb/{path.name}" in path.read_text()
    (model,) = [a for a in sweep["command"] if str(a).startswith("model=")]
    overrides = [model]
    for key, spec in sweep["parameters"].items():
        value = spec["values"][-1] if "values" in spec else spec["max"]
        overrides.append(f"{key}={value}")
    cfg = _compose("train", *overrides)  # an unknown key would raise (struct mode)
    for key, spec in sweep["parameters"].items():
        assert OmegaConf.select(cfg, key) == (spec["values"][-1] if "values" in spec else spec["max"])
    assert not (CONF / "wandb_sweep").exists()


# --- end to end ------------------------------------------------------------------------------------------------

def test_train_py_runs_as_a_program():
    """train.py as a program (every training test calls its main() in process): Hydra's help, exit status 0."""
    out = subprocess.run([sys.executable, str(ROOT / "train.py"), "--help"], capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode == 0 and "powered by Hydra" in out.stdout, out.stderr[-2000:]


def test_debug_default_runs_end_to_end_into_the_debug_folder(tmp_path):
    out = run_cli("train", f"paths.root_dir={tmp_path}", "data.size=8", "data.progress=false",
                  "trainer.enable_progress_bar=false", "debug=default", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    (run,) = (tmp_path / "outputs" / "debug" / "runs").iterdir()
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "csv" / "version_0" / "metrics.csv").is_file()
    assert not (tmp_path / "outputs" / "train").exists()


def test_neural_if_benchmark_experiment_runs_one_step(tmp_path):
    out = run_cli("train", f"paths.root_dir={tmp_path}", "data.size=8", "data.progress=false",
                  "trainer.enable_progress_bar=false", "experiment=neural_if_benchmark", "trainer.max_steps=1",
                  "data.num_train=4", "data.num_val=2", "data.num_test=2", "data.batch_size=2", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    (run,) = (tmp_path / "outputs" / "train" / "runs").iterdir()
    assert (run / "checkpoints" / "last.ckpt").is_file()
