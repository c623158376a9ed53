"""scripts/bench_learning_gain.py: quick-mode runs (classical only; a tiny trained neural_if next to a surrogate)
checked against independent references (PCG with IC(0) on regenerated systems; ratios recomputed from results.csv), the
summary's definitions on hand-made rows, and its argument errors."""

from __future__ import annotations

import csv
import json
import statistics
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from learnsolve.data import GENERATORS
from learnsolve.linalg import IC0, SparseMatrix, cg
from learnsolve.models import LowRankPreconditioner

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import bench_learning_gain as blg

HARD = ("lognormal2d", "anisotropic2d", "channels2d", "graph_laplacian")
QUICK_SIDES = (16, 32)
SEED = 8_000_000  # the script's first held-out seed (its docstring)
IT = "iters_1e-06"
REQUIRED = ("model", "family", "size", "n", "gain_iters", "gain_time", "edge_iters", "edge_time", "best_classical",
            "methods")
SURROGATE = ROOT / "tests" / "fixtures" / "checkpoints" / "pre_house_physics_nn.ckpt"


# a neural_if on IC(0) trained for 2 steps on 8x8 grids (its untrained start is IC(0) exactly)
NEURAL_IF_IC0 = ("model.net.base=ic0", "model.net.hidden=4", "model.net.layers=1", "trainer.max_steps=2")


def _csv(path: Path) -> list[dict]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def _f(v: str) -> float | None:
    return None if v == "" else float(v)


def _hard_params() -> dict:
    return OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "benchmark" / "hard.yaml"))["params"]


def _check_files(out: Path, families=HARD) -> tuple[list[dict], dict, list[dict]]:
    rows = json.loads((out / "learning_gain.json").read_text())
    meta = json.loads((out / "learning_gain.meta.json").read_text())
    assert isinstance(rows, list) and rows and all(isinstance(r, dict) for r in rows)
    for r in rows:
        assert set(REQUIRED) <= set(r), set(REQUIRED) - set(r)
    for key in ("date", "command", "torch_threads", "versions", "config", "seeds"):
        assert key in meta, key
    assert meta["seeds"] == [SEED] and meta["generator_params"] == {f: _hard_params()[f] for f in families}
    for f in families:
        png = out / "plots" / f"learning_gain_{f}.png"
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "learning_gain.md").read_text()
    assert meta["command"] in md and meta["date"] in md
    return rows, meta, _csv(out / "results.csv")


def _best_classical(raw: list[dict], baselines) -> tuple[str | None, dict]:
    """Recomputed from results.csv: the baseline ok on every system with the lowest median total_s."""
    systems = {r["matrix"] for r in raw}
    ok = {}
    for b in baselines:
        mine = [r for r in raw if r["preconditioner"] == b]
        if len(mine) == len(systems) and all(r["status"] == "ok" for r in mine):
            ok[b] = statistics.median(float(r["total_s"]) for r in mine)
    return (min(ok, key=ok.get) if ok else None), ok


def test_classical_only_quick(tmp_path, capsys):
    out = tmp_path / "classical"
    assert blg.main(["ckpt_path=null", "quick=true", f"out={out}", "progress=false"]) == 0
    rows, meta, raw = _check_files(out)
    assert meta["config"]["sizes"] == list(QUICK_SIDES) and meta["config"]["repeats"] == 1
    assert meta["checkpoints"] == []
    baselines = [b for b in blg.BASELINES if b not in ("none", "jacobi")]
    assert sorted((r["family"], r["size"]) for r in rows) == sorted((f, s) for f in HARD for s in QUICK_SIDES)
    # one raw row per system and baseline, no model rows
    assert len(raw) == len(HARD) * len(QUICK_SIDES) * len(baselines) and not any(r["model"] for r in raw)
    for r in rows:
        assert r["model"] is None and r["systems"] == 1 and r["best_classical"] in baselines
        assert all(r[k] is None for k in ("gain_iters", "gain_time", "edge_iters", "edge_time"))
        assert set(r["methods"]) == set(baselines)
        group = [x for x in raw if x["family"] == r["family"] and int(x["size"]) == r["size"]]
        best, _ = _best_classical(group, baselines)
        assert r["best_classical"] == best
        # graph_laplacian at side s has s^2 nodes, the grids s^2 interior unknowns
        assert r["n"] == r["size"] ** 2 == int(group[0]["n"])
        st = r["methods"][best]
        assert st["iters"]["median"] == float(next(x[IT] for x in group if x["preconditioner"] == best))
        assert st["total_ms"]["median"] == pytest.approx(
            1e3 * float(next(x["total_s"] for x in group if x["preconditioner"] == best)))
    printed = capsys.readouterr().out
    assert "| (classical only) | graph_laplacian | 32 | 1024 |" in printed


def test_checkpoints_quick_against_references(tiny_checkpoint, tmp_path, capsys):
    ckpt = tiny_checkpoint("neural_if", *NEURAL_IF_IC0)
    out = tmp_path / "bench"
    baselines = ["ic0", "mic0", "amg_sa"]  # the whole registry runs in test_classical_only_quick
    assert blg.main([f"ckpt_path=[{ckpt},{SURROGATE}]", "quick=true", f"baselines=[{','.join(baselines)}]",
                     f"out={out}", "progress=false"]) == 0
    rows, meta, raw = _check_files(out)
    assert [c["model"] for c in meta["checkpoints"]] == ["neural_if", "physics_nn"]
    assert meta["checkpoints"][0]["classical_start"]["method"] == "IC(0) factor"
    assert sorted((r["model"], r["family"], r["size"]) for r in rows) == sorted(
        (m, f, s) for m in ("neural_if", "physics_nn") for f in HARD for s in QUICK_SIDES)
    # the classical rows run once per system, whatever the number of checkpoints
    assert sum(not r["model"] for r in raw) == len(HARD) * len(QUICK_SIDES) * len(baselines)

    params = _hard_params()
    for r in (r for r in rows if r["model"] == "neural_if"):
        family, side = r["family"], r["size"]
        group = [x for x in raw if x["family"] == family and int(x["size"]) == side]
        mine = {x["preconditioner"]: x for x in group if x["model"] == "neural_if"}
        classical = [x for x in group if not x["model"]]
        assert mine["learned"]["status"] == mine["untrained"]["status"] == "ok", (family, side)

        # independent reference: the same held-out system regenerated here, PCG with learnsolve's IC(0) from x0 = 0
        size = side * side if family == "graph_laplacian" else side
        data = GENERATORS[family](size, seed=SEED, reference=False, **params[family])
        A = SparseMatrix.from_pyg(data).detach()
        _, info = cg(A, data.b.view(-1).to(A.dtype), IC0(A), rtol=1e-6, maxiter=5000)
        ref = int(info.iterations.view(-1)[0])
        assert bool(info.converged.view(-1)[0]) and int(data.num_nodes) == r["n"] == int(mine["untrained"]["n"])
        assert int(next(x[IT] for x in classical if x["preconditioner"] == "ic0")) == ref
        # the untrained model IS IC(0); where the safeguard found MIC(0) faster it fell back to that (its reason says)
        unt = mine["untrained"]
        if str(unt["fallback"]) == "True":
            key = "mic0" if "fell back to MIC(0)" in unt["reason"] else "ic0"
            assert int(unt[IT]) == int(next(x[IT] for x in classical if x["preconditioner"] == key)), (family, side)
        else:
            assert int(unt[IT]) == ref and float(unt["ratio_ic0_1e-06"]) == 1.0, (family, side)

        # gain / edge: per-system ratios from the raw rows (one system each here)
        best, _ = _best_classical(classical, baselines)
        assert r["best_classical"] == best
        b = next(x for x in classical if x["preconditioner"] == best)
        lrn, unt = mine["learned"], mine["untrained"]
        assert r["gain_iters"] == pytest.approx(_f(lrn[IT]) / _f(unt[IT]))
        assert r["gain_time"] == pytest.approx(_f(lrn["total_s"]) / _f(unt["total_s"]))
        assert r["edge_iters"] == pytest.approx(_f(lrn[IT]) / _f(b[IT]))
        assert r["edge_time"] == pytest.approx(_f(lrn["total_s"]) / _f(b["total_s"]))
        assert r["gain_pairs"] == r["edge_pairs"] == 1
        for x in (lrn, unt):
            assert _f(x["total_s"]) == pytest.approx(_f(x["setup_s"]) + _f(x["solve_s"]))
            assert 0 <= _f(x["inference_s"]) <= _f(x["setup_s"])

    # the surrogate: skipped rows that say why, no ratios, the classical columns still there
    skipped = [x for x in raw if x["model"] == "physics_nn"]
    assert len(skipped) == 2 * len(HARD) * len(QUICK_SIDES)
    assert all(x["status"] == "skipped" and "surrogate" in x["reason"] for x in skipped)
    for r in (r for r in rows if r["model"] == "physics_nn"):
        assert all(r[k] is None for k in ("gain_iters", "gain_time", "edge_iters", "edge_time"))
        assert r["methods"]["learned"]["skipped"] == 1 and r["best_classical"] is not None

    md = (out / "learning_gain.md").read_text()
    assert md.count("| neural_if |") == md.count("| physics_nn |") == len(HARD) * len(QUICK_SIDES)
    assert "physics_nn learned on" in md and "surrogate" in md
    assert md.strip() in capsys.readouterr().out.replace("\r", "")


def test_fixed_size_model_without_classical_start(tmp_path):
    """lowrank_precond variant=fixed (num_nodes 256): runs on 16^2 grids, skipped on 32^2; never an untrained row."""
    kw = {"variant": "fixed", "num_nodes": 256, "side": "forward", "rank": 2}
    model = LowRankPreconditioner(**kw).double()
    ckpt = tmp_path / "fixed.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "learnsolve_config": {"model": {"name": "lowrank_precond", "net": {
                    "_target_": "learnsolve.models.LowRankPreconditioner", **kw}}, "data": {"family": "lognormal2d"}}},
               ckpt)
    out = tmp_path / "out"
    assert blg.main([f"ckpt_path={ckpt}", "quick=true", "families=[lognormal2d]", "baselines=[ic0,mic0]",
                     f"out={out}", "progress=false"]) == 0
    rows, meta, raw = _check_files(out, families=("lognormal2d",))
    assert meta["checkpoints"][0]["classical_start"]["method"] is None
    mine = {(int(x["size"]), x["preconditioner"]): x for x in raw if x["model"] == "lowrank_precond"}
    assert set(mine) == {(s, p) for s in QUICK_SIDES for p in ("learned", "untrained")}
    assert mine[16, "learned"]["status"] in ("ok", "not_converged")
    assert mine[32, "learned"]["status"] == "skipped" and "n = 256 unknowns only" in mine[32, "learned"]["reason"]
    for s in QUICK_SIDES:
        assert mine[s, "untrained"]["status"] == "skipped" and "no classical start" in mine[s, "untrained"]["reason"]
    by_size = {r["size"]: r for r in rows}
    assert by_size[16]["gain_iters"] is None and by_size[32]["edge_iters"] is None
    assert by_size[16]["methods"]["untrained"]["skipped"] == 1


def _raw(matrix: str, prec: str, model, iters, total_s, status="ok") -> dict:
    return {"model": model, "ckpt_path": None, "family": "lognormal2d", "size": 8, "seed": 0, "matrix": matrix,
            "n": 64, "nnz": 288, "preconditioner": prec, "status": status, "reason": None if status == "ok" else "cap",
            IT: iters, "setup_s": total_s / 4, "inference_s": 0.0, "solve_s": 3 * total_s / 4, "total_s": total_s,
            "fallback": None}


def test_summary_definitions_on_hand_made_rows():
    """Median of per-system ratios (not ratio of medians), min-max spread over converged systems, best classical
    among the baselines converged on every system."""
    systems = ["s0", "s1", "s2"]
    raw = []
    for s, ic0, amg, unt, lrn in zip(systems, (40, 50, 60), (5, 6, 7), (20, 20, 60), (10, 20, 30)):
        raw += [_raw(s, "ic0", None, ic0, 0.010), _raw(s, "amg_sa", None, amg, 0.001,
                                                      status="not_converged" if s == "s2" else "ok"),
                _raw(s, "untrained", "m", unt, 0.004), _raw(s, "learned", "m", lrn, 0.002 * (1 + systems.index(s)))]
    raw[-2].update(status="not_converged", reason="cap")  # untrained failed on s2: the gain uses s0, s1 only
    cfg = {"families": ["lognormal2d"], "sizes": [8], "rtol": 1e-6, "baselines": ["ic0", "amg_sa"]}
    entry = blg.Entry("m", "m.ckpt", None, None, {"method": "IC(0) factor"})
    (row,) = blg.summarize(raw, cfg, [entry])
    assert row["best_classical"] == "ic0"  # amg_sa is faster but failed on s2
    assert row["gain_iters"] == pytest.approx(statistics.median([10 / 20, 20 / 20])) and row["gain_pairs"] == 2
    assert row["gain_time"] == pytest.approx(statistics.median([0.002 / 0.004, 0.004 / 0.004]))
    assert row["edge_iters"] == pytest.approx(0.4) and row["edge_pairs"] == 3  # median of 10/40, 20/50, 30/60
    assert row["edge_time"] == pytest.approx(0.4)  # median of 0.2, 0.4, 0.6
    m = row["methods"]
    assert m["learned"]["iters"] == {"median": 20.0, "min": 10.0, "max": 30.0}
    assert m["untrained"]["iters"] == {"median": 20.0, "min": 20.0, "max": 20.0}
    assert m["untrained"]["not_converged"] == 1 and m["amg_sa"]["not_converged"] == 1 and m["ic0"]["ok"] == 3
    assert m["learned"]["total_ms"]["median"] == pytest.approx(4.0)
    assert m["learned"]["setup_ms"]["max"] == pytest.approx(1.5)
    md = blg.markdown([row], {"command": "python scripts/bench_learning_gain.py", "date": "today", "torch_threads": 1,
                              "config": {"rtol": 1e-6, "repeats": 1, "num_systems": 3}})
    assert "| m | lognormal2d | 8 | 64 | ic0 | 20 (10-30) |" in md and "0.75 (2/3)" in md
    assert "- m untrained on lognormal2d 8: cap" in md and "- amg_sa on lognormal2d 8: cap" in md


@pytest.mark.parametrize(("args", "message"), [
    ([], "give ckpt_path=PATH"),
    (["ckpt_path=null", "size=[16]"], "unknown key 'size'; known keys: ckpt_path, families, sizes"),
    (["ckpt_path=null", "sizes.a=1"], "unknown key 'sizes.a'"),
    (["ckpt_path=null", "quick"], "argument 'quick' is not key=value"),
    (["ckpt_path=null", "sizes=[16"], "argument 'sizes=[16' cannot be parsed"),
    (["ckpt_path=null", "sizes=[0,16]"], "sizes must be distinct grid sides >= 2"),
    (["ckpt_path=null", "sizes=[a]"], "sizes must be a positive integer"),
    (["ckpt_path=null", "families=[lognormal2d,nope]"], "families: unknown ['nope']; choose from"),
    (["ckpt_path=null", "baselines=[ic0,ilu9]"], "baselines: unknown ['ilu9']; choose from none, jacobi"),
    (["ckpt_path=null", "rtol=2"], "rtol must be a tolerance in (0, 1)"),
    (["ckpt_path=null", "num_systems=0"], "num_systems must be a positive integer"),
    (["ckpt_path=null", "repeats=1.5"], "repeats must be a positive integer"),
    (["ckpt_path=null", "quick=1"], "quick must be true or false"),
    (["ckpt_path=null", "threads=0"], "threads must be a positive integer"),
    (["ckpt_path=null", "benchmark=/no/such.yaml"], "benchmark='/no/such.yaml' is not a file"),
    (["ckpt_path=/no/such.ckpt", "families=[lognormal2d]"], "ckpt_path: checkpoint '/no/such.ckpt' does not exist"),
    (["ckpt_path=[a.ckpt,a.ckpt]"], "ckpt_path: ['a.ckpt'] given more than once"),
])
def test_bad_arguments(args, message, tmp_path):
    with pytest.raises(blg.LearningGainConfigError) as err:
        blg.main([*args, f"out={tmp_path / 'out'}"] if args else args)
    assert message in str(err.value)
    assert not (tmp_path / "out").exists()  # nothing written before the arguments are checked


def test_bad_generator_params_name_the_benchmark(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("params:\n  lognormal2d: {sigma: 4.0}\n")
    with pytest.raises(blg.LearningGainConfigError, match=r"families=lognormal2d with benchmark=.*bad.yaml.*sigma"):
        blg.main(["ckpt_path=null", f"benchmark={bad}", "families=[lognormal2d]"])


def test_sizes_and_held_out_seeds():
    assert blg.generator_size("graph_laplacian", 64) == 4096 and blg.generator_size("lognormal2d", 64) == 64
    cfg = blg.parse_args(["ckpt_path=null", "quick=true", "sizes=[8]"])
    assert cfg["sizes"] == [8] and cfg["num_systems"] == 1 and cfg["repeats"] == 1  # explicit keys win over quick
    assert cfg["families"] == list(HARD) and "none" not in cfg["baselines"] and "jacobi" not in cfg["baselines"]
    assert blg.parse_args(["ckpt_path=x.ckpt", "baselines=jacobi"])["baselines"] == ["jacobi"]
    from learnsolve.training.datamodule import EXTRA_TEST_OFFSET, EXTRA_TEST_STRIDE

    assert (blg.EXTRA_TEST_OFFSET, blg.EXTRA_TEST_STRIDE) == (EXTRA_TEST_OFFSET, EXTRA_TEST_STRIDE)
    assert blg.SEED0 >= EXTRA_TEST_OFFSET + 4 * EXTRA_TEST_STRIDE  # clear of a seed-0 run with 4 extra test sizes
    entry = blg.Entry("m", "m.ckpt", None, None, config={"data": {"seed": 7_500_000, "extra_test_sizes": [64]}})
    (warning,) = blg._held_out([entry], {"num_systems": 3})
    assert "[7500000, 11500000) overlap the benchmark seeds [8000000, 8000003)" in warning
    assert blg._held_out([blg.Entry("m", "m.ckpt", None, None, config={"data": {"seed": 0}})], {"num_systems": 3}) == []
