"""What a data config sets is what the run uses: `train.py data=NAME` composes to NAME's file (on _base) for every
file in conf/data; plain `train.py` (and each model's default) is still the small default job. data=hard: a mixture
of the four hard families whose splits share no seed; conf/benchmark/hard.yaml: its held-out suite (GeneratedSuite
with per-family params, per-spec keywords, reference=false), with errors that name the bad entry."""

from __future__ import annotations

import copy
from pathlib import Path

import hydra
import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from learnsolve.cli._hydra import CONF_DIR
from learnsolve.data import GENERATORS, GeneratedSuite, SuiteConfigError
from learnsolve.training.datamodule import EXTRA_TEST_OFFSET, REPORT_OFFSET, LinearSystemDataModule

CONF = Path(CONF_DIR)
DATA_FILES = sorted(p.stem for p in (CONF / "data").glob("*.yaml") if p.stem != "_base")
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
SMALL_JOB = {"num_train": 48, "num_val": 8, "num_test": 8, "extra_test_sizes": []}  # python train.py, before and now
HARD_FAMILIES = ["lognormal2d", "anisotropic2d", "channels2d", "graph_laplacian"]


def _compose(name: str, *overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(name, overrides=list(overrides))


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def file_config(name: str) -> dict:
    """conf/data/NAME.yaml with its defaults list applied by hand (plain YAML, no Hydra): what the file says."""
    raw = yaml.safe_load((CONF / "data" / f"{name}.yaml").read_text())
    out: dict = {}
    for entry in raw.pop("defaults", ["_self_"]):
        out = _merge(out, raw if entry == "_self_" else file_config(entry))
    return out


def test_every_data_file_is_listed_and_the_new_families_are_registered():
    assert {"default", "default_forced2d", "hard", "lognormal2d", "channels2d", "graph_laplacian"} <= set(DATA_FILES)
    for name in DATA_FILES:
        family = file_config(name)["family"]
        assert family == "mixed" or family in GENERATORS, name


@pytest.mark.parametrize("name", DATA_FILES)
def test_train_with_data_name_uses_what_the_file_sets(name):
    expected = file_config(name)
    data = OmegaConf.to_container(_compose("train", f"data={name}").data, resolve=False)
    assert data == expected
    for key in ("num_train", "num_val", "num_test", "extra_test_sizes", "size", "family"):
        assert data[key] == expected[key], key
    assert _compose("generate", f"data={name}").data == _compose("train", f"data={name}").data


def test_plain_train_is_the_small_default_job():
    data = OmegaConf.to_container(_compose("train").data, resolve=False)
    assert data == {**file_config("diffusion2d"), **SMALL_JOB}
    assert (data["family"], data["size"], data["params"]) == ("diffusion2d", 32, {"sigma2": 1.0, "corr_len": 0.1})
    # the small job's sizes come from conf/data/default.yaml now, not from train.yaml
    assert "data" not in yaml.safe_load((CONF / "train.yaml").read_text())


@pytest.mark.parametrize("model", MODELS)
def test_each_models_default_job_is_unchanged(model):
    family = "forced2d" if model == "neural_ode" else "diffusion2d"
    data = OmegaConf.to_container(_compose("train", f"model={model}").data, resolve=False)
    assert data == {**file_config(family), **SMALL_JOB}
    mixed = _compose("train", f"model={model}", "data=mixed").data  # an explicit data file wins over the default
    assert (mixed.num_train, mixed.num_val, mixed.num_test) == (256, 32, 32)


def test_command_line_and_debug_still_win():
    cfg = _compose("train", "data=hard", "data.num_train=12")
    assert cfg.data.num_train == 12 and cfg.data.num_val == 8
    cfg = _compose("train", "data=hard", "debug=default")
    assert (cfg.data.num_train, cfg.data.num_val, cfg.data.num_test, cfg.data.batch_size) == (4, 2, 2, 2)


# --- data=hard ---------------------------------------------------------------------------------------------------


def _hard_module(tmp_path, **changes) -> LinearSystemDataModule:
    kw = OmegaConf.to_container(_compose("train", "data=hard", f"paths.root_dir={tmp_path}").data, resolve=True)
    kw.pop("_target_")
    kw.update(progress=False, **changes)
    return LinearSystemDataModule(**kw)


def test_hard_mixture_components(tmp_path):
    dm = _hard_module(tmp_path)
    assert dm.families == HARD_FAMILIES
    assert {c.family: (c.size, c.params) for c in dm.components} == {
        "lognormal2d": (64, {"sigma2": 4.0, "corr_len": 0.0}),
        "anisotropic2d": (64, {"theta": "random", "epsilon": [1e-4, 1e-2], "stencil": "fe"}),
        "channels2d": (64, {"contrast": 1e6}),
        "graph_laplacian": (4096, {"sigma2": 1.0}),
    }
    assert dm.counts == {"train": 32, "val": 8, "test": 8}
    assert all(n == 8 for n in dm.component_counts["train"]) and all(n == 2 for n in dm.component_counts["val"])
    assert dm.extra_test_sizes == [128] and dm.extra_test_component.family == "lognormal2d"


def _seed_ranges(dm: LinearSystemDataModule) -> dict[tuple[str, str], set[int]]:
    """(split, family) -> the seeds the module uses, extra test and report sets included."""
    out: dict[tuple[str, str], set[int]] = {}
    for row in dm.mixture_specs():
        out.setdefault((row["split"], row["family"]), set()).update(range(row["seed"], row["seed"] + row["count"]))
    extra = dm.extra_test_component
    for i, s in enumerate(dm.extra_test_sizes):
        first = extra.seed(dm.seed, EXTRA_TEST_OFFSET + 1_000_000 * i)
        out[(f"test_{s}", extra.family)] = set(range(first, first + dm.counts["test"]))
    first = extra.seed(dm.seed, REPORT_OFFSET)
    out[("report", extra.family)] = set(range(first, first + dm.counts["test"]))
    return out


def test_hard_splits_share_no_seed_and_the_benchmark_is_held_out(tmp_path):
    ranges = _seed_ranges(_hard_module(tmp_path))
    keys = sorted(ranges)
    for a in keys:
        for b in keys:
            if a < b and a[1] == b[1]:
                assert not ranges[a] & ranges[b], (a, b)
    bench = yaml.safe_load((CONF / "benchmark" / "hard.yaml").read_text())
    for family, _, seed, *_ in bench["specs"]:
        assert all(seed not in seeds for (_, f), seeds in ranges.items() if f == family), (family, seed)


def test_hard_splits_generated_small_hold_different_systems(tmp_path):
    """The real module on tiny sizes: every split has all four families and no (family, seed) or matrix twice."""
    mixture = [{**c, "size": 6 if c["family"] != "graph_laplacian" else 40}
               for c in file_config("hard")["mixture"]]
    dm = _hard_module(tmp_path, mixture=mixture, num_train=8, num_val=4, num_test=4, extra_test_sizes=[])
    dm.setup("fit")
    seen: dict[tuple[str, int], str] = {}
    matrices: dict[bytes, str] = {}
    for split in ("train", "val", "test"):
        ds = dm.datasets[split]
        families = set()
        for i in range(len(ds)):
            d = ds[i]
            key = (d.family, int(d.seed))
            families.add(d.family)
            assert key not in seen, (key, split, seen.get(key))
            seen[key] = split
            blob = d.edge_attr.numpy().tobytes() + d.b.numpy().tobytes()
            assert blob not in matrices, (split, matrices.get(blob))
            matrices[blob] = split
        assert families == set(HARD_FAMILIES), split


def test_single_family_with_a_range_parameter_from_the_command_line(tmp_path):
    """An OmegaConf list in params (data.params.contrast=[lo, hi]) reaches the generator and the cache as a list."""
    cfg = _compose("train", "data=channels2d", "data.params.contrast=[100.0,1.0e4]", f"paths.root_dir={tmp_path}",
                   "data.size=6", "data.num_train=2", "data.num_val=1", "data.num_test=1", "data.extra_test_sizes=[]",
                   "data.progress=false")
    dm = hydra.utils.instantiate(cfg.data)
    dm.setup("fit")
    d = dm.datasets["train"][0]
    assert 100.0 <= float(d.params["contrast"]) <= 1e4
    assert dm.datasets["train"].config["params"]["contrast"] == [100.0, 1e4]


# --- conf/benchmark/hard.yaml and GeneratedSuite's options ------------------------------------------------------


def _bench() -> dict:
    return yaml.safe_load((CONF / "benchmark" / "hard.yaml").read_text())


def test_hard_benchmark_config_builds_through_the_evaluation_path():
    from learnsolve.evaluation.pipeline import build_suite

    bench = _bench()
    suite = build_suite(bench)
    assert suite.name == "hard" and len(suite) == len(bench["specs"])
    sizes = {(f, s) for f, s, *_ in bench["specs"]}
    assert sizes == {(f, s) for f in HARD_FAMILIES[:3] for s in (64, 256)} | {("graph_laplacian", 4096),
                                                                              ("graph_laplacian", 65536)}
    assert suite.params == {c["family"]: c["params"] for c in file_config("hard")["mixture"]}  # data=hard's


def test_hard_benchmark_small_copy_generates_with_family_params_and_spec_keywords():
    from learnsolve.evaluation.pipeline import build_suite

    bench = _bench()
    bench["specs"] = [["lognormal2d", 6, 910001], ["anisotropic2d", 6, 910011],
                      ["anisotropic2d", 6, 910011, {"stencil": "fd"}], ["channels2d", 6, 910021],
                      ["graph_laplacian", 50, 910031]]
    bench["reference"] = False
    systems = dict(build_suite(OmegaConf.create(bench)))  # as Hydra passes it: DictConfig / ListConfig
    assert list(systems) == ["lognormal2d_6_s910001", "anisotropic2d_6_s910011", "anisotropic2d_6_s910011_stencil=fd",
                             "channels2d_6_s910021", "graph_laplacian_50_s910031"]
    fe, fd = systems["anisotropic2d_6_s910011"], systems["anisotropic2d_6_s910011_stencil=fd"]
    assert fe.params["stencil"] == "fe" and fe.params["theta_random"] and fe.params["epsilon_lo"] == 1e-4
    assert fd.params["stencil"] == "fd" and fd.params["theta"] == fe.params["theta"]  # same seed, same draws
    assert all(d.x is None for d in systems.values())
    assert systems["lognormal2d_6_s910001"].params["sigma2"] == 4.0
    assert systems["channels2d_6_s910021"].params["contrast"] == 1e6
    with_ref = dict(GeneratedSuite([["channels2d", 6, 910021]], params=bench["params"]))
    assert with_ref["channels2d_6_s910021"].x is not None


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"specs": []}, r"benchmark\.specs must be a non-empty list"),
    ({"specs": [["lognormal2d", 8]]}, r"benchmark\.specs\[0\]"),
    ({"specs": [["lognormal2d", 8, 1], ["lognormal2d", 8, 2, "fe"]]}, r"benchmark\.specs\[1\]"),
    ({"specs": [["lognormal2d", 0, 1]]}, r"benchmark\.specs\[0\]: size"),
    ({"specs": [["lognormal2d", 8, 1, {"nope": 1}]]}, r"benchmark\.specs\[0\]: the lognormal2d generator .*'nope'"),
    ({"specs": [["nope2d", 8, 1]]}, r"unknown generator families \['nope2d'\]"),
    ({"specs": [["lognormal2d", 8, 1]], "params": {"nope2d": {}}}, r"benchmark\.params: unknown generator families"),
    ({"specs": [["lognormal2d", 8, 1]], "params": {"lognormal2d": 3}}, r"benchmark\.params must map"),
    ({"specs": [["lognormal2d", 8, 1]], "params": {"lognormal2d": {"stencil": "fe"}}},
     r"benchmark\.params\.lognormal2d: the lognormal2d generator .*'stencil'"),
    ({"specs": [["lognormal2d", 8, 1]], "params": {"lognormal2d": {"seed": 3}}}, r"benchmark\.params\.lognormal2d: .*seed"),
    ({"specs": [["lognormal2d", 8, 1, {"m": 9}]]}, r"benchmark\.specs\[0\]: \['m'\] are set by the spec"),
    ({"specs": [["lognormal2d", 8, 1]], "reference": "no"}, r"benchmark\.reference must be true or false"),
    ({"specs": [["trajectory2d", 8, 1]], "reference": False}, r"trajectory2d generator .*'reference'"),
    ({"specs": [["lognormal2d", 8, 1], ["lognormal2d", 8, 1]]}, r"repeated systems \['lognormal2d_8_s1'\]"),
])
def test_generated_suite_errors_name_the_entry(kwargs, match):
    with pytest.raises(SuiteConfigError, match=match):
        GeneratedSuite(**kwargs)
