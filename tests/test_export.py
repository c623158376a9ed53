"""Export: model folders and per-matrix preconditioners written from tiny trained checkpoints, loaded back
without Lightning or Hydra, and checked against the checkpoint's model (round trip, scipy CG iterations,
bad inputs leaving no partial output)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch
from torch_geometric.data import Batch

from learnsolve.data import GENERATORS, load_system, read_matrix_market
from learnsolve.export import (
    ExportError,
    export_model,
    export_preconditioners,
    load_exported_model,
    load_preconditioner,
    load_program,
    read_config,
)
from learnsolve.export.programs import compile_program
from learnsolve.export.reader import load_program_file
from learnsolve.linalg import LowRankDiagonal, SparseMatrix, cg
from learnsolve.models import LowRankPreconditioner, NeuralIF
from learnsolve.models.base import LearnedModel, ProgramModule, ProgramSpec
from learnsolve.models.checkpoint import load_model as load_checkpoint
from learnsolve.nn.features import diagonal

from .cli_runner import run_cli
from .conftest import SHARED_MATRICES, convdiff2d, diffusion2d

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
MODELS = ("neural_if", "lowrank_precond", "gnn_solver")
RTOL = 1e-8


# ------------------------------------------------------------------------------------------------
# fixtures: three tiny checkpoints (shared by the session), matrices, exported folders
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ckpts(tiny_checkpoint) -> dict[str, Path]:
    # gnn_solver's nonlinear (per-iteration) form; lowrank_precond's forward side (M = D + U U^T per matrix)
    mode = {"gnn_solver": ["model.net.mode=fcg"], "lowrank_precond": ["model.net.side=forward"]}
    return {model: tiny_checkpoint(model, *mode.get(model, [])) for model in MODELS}


@pytest.fixture(scope="module")
def mats(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("mats")
    files = {"diff12": diffusion2d(12, seed=4, contrast=2.0), "diff8": diffusion2d(8, seed=5)}
    out = {}
    for stem, A in files.items():
        scipy.io.mmwrite(str(d / f"{stem}.mtx"), A)
        out[stem] = d / f"{stem}.mtx"
    bad = tmp_path_factory.mktemp("bad")
    if (SHARED_MATRICES / "sherman5.mtx").is_file():
        out["nonsym"] = SHARED_MATRICES / "sherman5.mtx"
    else:
        scipy.io.mmwrite(str(bad / "convdiff.mtx"), convdiff2d(6))
        out["nonsym"] = bad / "convdiff.mtx"
    (bad / "garbage.mtx").write_text("this is not a matrix\n1 2 3\n")
    out["garbage"] = bad / "garbage.mtx"
    scipy.io.mmwrite(str(bad / "rect.mtx"), sp.random(3, 4, density=0.5, random_state=0))
    out["rect"] = bad / "rect.mtx"
    return out


def export_cli_run(*overrides: str):
    """``python scripts/export.py OVERRIDES`` from the repository root, in this process."""
    return run_cli("export", *overrides, cwd=ROOT)


@pytest.fixture(scope="module")
def cli_export(ckpts, mats, tmp_path_factory):
    """neural_if through the real command: two good matrices and three bad ones (nonsymmetric, malformed,
    non-square)."""
    out = tmp_path_factory.mktemp("cli") / "neural_if_export"
    files = [mats[k] for k in ("diff12", "diff8", "nonsym", "garbage", "rect")]
    res = export_cli_run(f"ckpt_path={ckpts['neural_if']}", f"out_dir={out}",
                         f"matrices=[{','.join(str(f) for f in files)}]")
    return out, res


@pytest.fixture(scope="module")
def exported(ckpts, mats, cli_export, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exported")
    folders = {"neural_if": cli_export[0]}
    for model in ("lowrank_precond", "gnn_solver"):
        rep = export_model(ckpts[model], root / model, matrices=[mats["diff12"], mats["diff8"]])
        folders[model] = rep.folder
    return folders


def _held_out(size: int = 10, seed: int = 123):
    return GENERATORS["diffusion2d"](size, seed=seed)


def _outputs(model, data, name: str, r: torch.Tensor | None = None) -> tuple:
    """What defines each model's preconditioner on one system, computed by the model itself."""
    batch = Batch.from_data_list([data])
    with torch.no_grad():
        if name == "neural_if":
            return (model.factor(batch)[1].to_dense(),)
        if name == "lowrank_precond":
            return tuple(model.factors(batch))
        return (model.preconditioner_for(batch).apply(r.view(1, -1, 1)).view(-1),)


def _program_outputs(prog, data, name: str, r: torch.Tensor | None = None, model=None) -> tuple:
    args = (data.edge_index, data.edge_attr.double(), data.feat.double()) + ((r,) if name == "gnn_solver" else ())
    if name == "neural_if" and model is not None and model.base != "none":
        args = model.export_program().inputs(data, 0)  # the system's tensors and its base factor (IC(0)/MIC(0))
    with torch.no_grad():
        out = prog(*args)
    if name == "neural_if":
        lr, lc, vals = out
        n = int(data.num_nodes)
        L = torch.zeros(n, n, dtype=torch.float64)
        L[lr, lc] = vals
        return (L,)
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _tree(p: Path) -> list[str]:
    return sorted(str(q.relative_to(p)) for q in p.rglob("*")) if p.exists() else []


# ------------------------------------------------------------------------------------------------
# round trip: reloaded model and compiled program == the checkpoint's model
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", MODELS)
def test_model_round_trip(name, ckpts, exported):
    folder = exported[name]
    cfg = read_config(folder)
    assert cfg["format"] == 1 and cfg["model"] == name and cfg["target"].startswith("learnsolve.models.")
    assert (folder / "model.safetensors").is_file()
    # all three compile through torch.export, with n and E dynamic
    assert cfg["program"] == "program.pt2" and cfg["program_format"] == "torch.export", cfg["program_note"]
    assert cfg["program_inputs"]["dynamic"] == ["n", "E"]
    assert cfg["preconditioner"] == {"neural_if": "llt", "lowrank_precond": "lowrank_diag"}.get(name)

    ref_model, _ = load_checkpoint(ckpts[name])
    model = load_exported_model(folder)
    assert type(model) is type(ref_model)
    data = _held_out(10)  # n = 100: neither of the export's check sizes (30, 63)
    r = torch.randn(100, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = _outputs(ref_model, data, name, r)
    for a, b in zip(_outputs(model, data, name, r), ref):  # same weights, same code: bit for bit
        assert torch.equal(a, b)
    # the compiled program on a system of yet another size (float32 network: 1e-5 relative)
    prog = load_program(folder)
    for size in (10, 13):
        data = _held_out(size, seed=size)
        r = torch.randn(size * size, generator=torch.Generator().manual_seed(size), dtype=torch.float64)
        for a, b in zip(_program_outputs(prog, data, name, r, ref_model), _outputs(ref_model, data, name, r)):
            assert a.shape == b.shape and _rel(a, b) < 1e-5


def test_torchscript_fallback_and_fixed_size(tmp_path, monkeypatch):
    """When torch.export fails the program is traced with TorchScript; it is kept because it matches the model on
    a system of another size. A fixed-size low-rank model exports a program for its own size."""
    torch.manual_seed(0)
    model = NeuralIF(hidden=8, layers=1).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))

    def broken(*args, **kwargs):
        raise RuntimeError("torch.export unavailable (test)")

    monkeypatch.setattr(torch.export, "export", broken)
    info = compile_program(model, tmp_path)
    assert info["program"] == "program.ts" and info["program_format"] == "torchscript"
    assert "torch.export failed" in info["program_note"] and not (tmp_path / "program.pt2").exists()
    monkeypatch.undo()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated in favour of torch.export
        prog = torch.jit.load(str(tmp_path / "program.ts"))
    data = _held_out(11, seed=7)
    assert _rel(_program_outputs(prog, data, "neural_if")[0], _outputs(model, data, "neural_if")[0]) < 1e-5

    fixed = LowRankPreconditioner(side="forward", variant="fixed", num_nodes=64, rank=3).eval()
    d2 = tmp_path / "fixed"
    d2.mkdir()
    info = compile_program(fixed, d2)
    assert info["program_format"] == "torch.export" and info["program_inputs"]["dynamic"] == ["E"]


# ------------------------------------------------------------------------------------------------
# per-matrix files and scipy / torch preconditioners
# ------------------------------------------------------------------------------------------------

def test_cli_per_matrix_files(cli_export, mats):
    out, res = cli_export
    # two good matrices exported; nonsymmetric, malformed and non-square ones reported: exit status 1
    assert res.returncode == 1, res.stderr[-3000:]
    nonsym = mats["nonsym"].name.removesuffix(".mtx")
    assert f"could not export {nonsym}" in res.stderr and "not symmetric" in res.stderr
    assert "could not export garbage" in res.stderr and "missing %%MatrixMarket banner" in res.stderr
    assert "could not export rect" in res.stderr and "square" in res.stderr
    pre = out / "preconditioners"
    assert sorted(p.name for p in pre.iterdir()) == sorted(
        f"{s}{suffix}" for s in ("diff12", "diff8") for suffix in (".json", "_L.mtx", "_L.npz"))
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left
    cfg = read_config(out)
    assert cfg["matrices"]["exported"] == ["diff12", "diff8"]
    assert set(cfg["matrices"]["failed"]) == {nonsym, "garbage", "rect"}
    meta = json.loads((pre / "diff12.json").read_text())
    assert meta["matrix"] == "diff12" and meta["type"] == "llt" and meta["model"] == "neural_if"
    assert meta["n"] == 144 and meta["nnz_A"] == sp.csr_matrix(read_matrix_market(mats["diff12"])).nnz
    assert meta["files"] == {"L_mtx": "diff12_L.mtx", "L_npz": "diff12_L.npz"}
    assert meta["apply"].startswith("M = L L^T") and "L^-T (L^-1 r)" in meta["apply"]
    # the Matrix Market factor is the npz factor, lower triangular, general coordinate real
    assert (pre / "diff12_L.mtx").read_text().startswith("%%MatrixMarket matrix coordinate real general")
    L_mtx, L_npz = read_matrix_market(pre / "diff12_L.mtx"), sp.load_npz(pre / "diff12_L.npz")
    assert L_npz.format == "csr" and (L_mtx != L_npz).nnz == 0 and sp.triu(L_npz, 1).nnz == 0
    # and it is the checkpoint model's factor of that matrix where its safeguard keeps it, its fallback's where not
    model = load_exported_model(out)
    batch = Batch.from_data_list([load_system(mats["diff12"])])
    _, check = model.safe_preconditioner_for(batch, rhs=False)
    assert meta["factor"] == ("learned" if check.all_accepted else f"fallback:{check.fallback_key}")
    assert meta["safeguard"]["accepted"] == check.all_accepted
    assert meta["safeguard"]["fallback"] == check.fallback_name  # the model's fallback_for: its base by default
    with torch.no_grad():  # the inference path, as export runs it (test_neural_if_light: it equals the training path)
        L_model = (model.factor(batch)[1] if check.all_accepted else check.fallback.L).to_scipy()
    assert abs(L_model - L_npz).max() == 0.0


def _scipy_cg_iterations(A, b, M) -> int:
    count = [0]

    def cb(_):
        count[0] += 1

    _, info = spla.cg(A, b, rtol=RTOL, atol=0.0, M=M, maxiter=2000, callback=cb)
    assert info == 0
    return count[0]


@pytest.mark.parametrize("name", ["neural_if", "lowrank_precond"])
def test_scipy_cg_with_exported_preconditioner(name, ckpts, exported, mats):
    """scipy's CG with the exported M^-1 takes the iterations of learnsolve's PCG with the checkpoint's model
    (+-1: only the rounding of the dot products differs); the torch backend the same. Export keeps the model's M where
    its safeguard accepts it and writes the fallback (IC(0); lowrank_precond: Jacobi, as a diagonal factor)
    elsewhere: the comparison is with what the safeguard chose."""
    pre = exported[name] / "preconditioners"
    ref_model, _ = load_checkpoint(ckpts[name])
    for stem in ("diff12", "diff8"):
        data = load_system(mats[stem])
        batch = Batch.from_data_list([data])
        chosen, check = ref_model.safe_preconditioner_for(batch, rhs=False)
        meta = json.loads((pre / f"{stem}.json").read_text())
        assert meta["factor"] == ("learned" if check.all_accepted else f"fallback:{check.fallback_key}")
        if name == "lowrank_precond" and check.all_accepted:
            assert sorted(p.name for p in pre.glob(f"{stem}[._]*")) == [f"{stem}.json", f"{stem}_lowrank.npz"]
            z = np.load(pre / f"{stem}_lowrank.npz")
            assert z["D"].shape == (data.num_nodes,) and z["U"].shape == (data.num_nodes, 4)
            assert np.array_equal(z["U"], z["V"])
            assert meta["type"] == "lowrank_diag" and "Woodbury" in meta["apply"]
        _, info = ref_model.solve_with(batch, chosen, rtol=RTOL, maxiter=2000)
        pcg_iters = int(info.iterations.sum())
        A, b = read_matrix_market(mats[stem]), data.b.numpy()
        M = load_preconditioner(pre / f"{stem}.json")
        assert isinstance(M, spla.LinearOperator) and M.shape == A.shape and M.dtype == np.float64
        # the same M^-1 as the model's (Woodbury / triangular solves: to rounding)
        R = np.random.default_rng(0).standard_normal((A.shape[0], 2))
        with torch.no_grad():
            ref = chosen.apply(torch.from_numpy(R).unsqueeze(0))[0].numpy()
        assert np.abs(M.matmat(R) - ref).max() <= 1e-10 * np.abs(ref).max()
        assert np.abs(M @ R[:, 0] - ref[:, 0]).max() <= 1e-10 * np.abs(ref).max()
        scipy_iters = _scipy_cg_iterations(A, b, M)
        assert abs(scipy_iters - pcg_iters) <= 1, (stem, scipy_iters, pcg_iters)
        Mt = load_preconditioner(pre / f"{stem}.json", backend="torch")
        _, tinfo = cg(SparseMatrix.from_scipy(A), torch.from_numpy(b), M=Mt, rtol=RTOL, maxiter=2000)
        assert bool(tinfo.converged.all()) and abs(int(tinfo.iterations.sum()) - pcg_iters) <= 1
        if stem == "diff12":  # the exported M (learned or its fallback) helps: fewer iterations than plain CG
            assert scipy_iters < _scipy_cg_iterations(A, b, None)


def test_nonlinear_model_exports_program_only(exported, ckpts, mats, tmp_path, capsys):
    folder = exported["gnn_solver"]
    cfg = read_config(folder)
    assert cfg["preconditioner"] is None and not (folder / "preconditioners").exists()
    nonlinear = ("gnn_solver is a nonlinear preconditioner (z = f(r)); it cannot be written as a fixed matrix: "
                 "exported the model and its program only")
    assert cfg["matrices"]["skipped"] == nonlinear
    assert "inside flexible CG" in cfg["program_inputs"]["outputs"][0]
    # the command: the same message, the model and its program written, exit status 0
    code = _cli(f"ckpt_path={ckpts['gnn_solver']}", f"out_dir={tmp_path / 'g'}", f"matrices={mats['diff8']}")
    err = capsys.readouterr().err
    assert code == 0 and nonlinear in err
    assert _tree(tmp_path / "g") == ["config.json", "model.safetensors", "program.pt2"]
    with pytest.raises(ExportError, match="nonlinear preconditioner"):
        export_preconditioners(folder, [mats["diff8"]], tmp_path / "p")


def test_load_path_needs_no_hydra_or_lightning(exported):
    folder = exported["neural_if"]
    code = (
        "import sys\n"
        "from learnsolve.export import load_exported_model, load_preconditioner, load_program\n"
        f"m = load_exported_model({str(folder)!r}); p = load_program({str(folder)!r})\n"
        f"M = load_preconditioner({str(folder / 'preconditioners' / 'diff8.json')!r})\n"
        f"Mt = load_preconditioner({str(folder / 'preconditioners' / 'diff8.json')!r}, backend='torch')\n"
        "bad = [k for k in sys.modules if k.split('.')[0] in ('hydra', 'omegaconf', 'lightning', "
        "'pytorch_lightning', 'lightning_fabric')]\n"
        "assert not bad, bad\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=ENV,
                         check=False)
    assert res.returncode == 0, res.stderr[-3000:]


# ------------------------------------------------------------------------------------------------
# bad inputs: documented error, exit status 2, nothing written
# ------------------------------------------------------------------------------------------------

def _cli(*overrides: str) -> int:
    """The command in process (composed like Hydra composes it)."""
    from hydra import compose, initialize_config_dir

    from learnsolve.cli._hydra import CONF_DIR
    from learnsolve.cli.export import export_cli

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("export", overrides=list(overrides))
    return export_cli(cfg)


def test_bad_checkpoints(ckpts, tmp_path, capsys):
    out = tmp_path / "out"
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    foreign = tmp_path / "foreign.ckpt"
    ck = torch.load(ckpts["neural_if"], map_location="cpu", weights_only=False)
    ck["learnsolve_config"]["model"]["name"] = "not_a_model"
    torch.save(ck, foreign)
    cases = {tmp_path / "missing.ckpt": "does not exist", corrupt: "cannot be read",
             foreign: "from model family 'not_a_model', which this learnsolve does not know"}
    for ckpt, msg in cases.items():
        assert _cli(f"ckpt_path={ckpt}", f"out_dir={out}") == 2
        assert msg in capsys.readouterr().err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt.ckpt", "foreign.ckpt"]  # nothing written
    with pytest.raises(ExportError, match="not_a_model"):
        export_model(foreign, out)
    assert _cli() == 2 and "give ckpt_path=PATH" in capsys.readouterr().err
    # a matrices path that does not exist is a bad argument too, checked before anything is written
    assert _cli(f"ckpt_path={ckpts['neural_if']}", f"out_dir={out}", f"matrices={tmp_path / 'nope'}") == 2
    assert "neither a Matrix Market file nor a folder" in capsys.readouterr().err and not out.exists()


def test_existing_output_folder_and_atomicity(ckpts, tmp_path, capsys, monkeypatch):
    out = tmp_path / "deep" / "out"
    out.mkdir(parents=True)
    (out / "keep.txt").write_text("old")
    assert _cli(f"ckpt_path={ckpts['lowrank_precond']}", f"out_dir={out}") == 2
    assert "already exists and is not empty" in capsys.readouterr().err
    assert _tree(tmp_path) == ["deep", "deep/out", "deep/out/keep.txt"]
    # a failure half way (here: while compiling the program) leaves the old folder as it was, no temporary files
    from learnsolve.export import model as model_mod

    def fail(*args, **kwargs):
        raise RuntimeError("disk full (test)")

    monkeypatch.setattr(model_mod, "compile_program", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        export_model(ckpts["lowrank_precond"], out, overwrite=True)
    with pytest.raises(RuntimeError, match="disk full"):
        export_model(ckpts["lowrank_precond"], tmp_path / "new" / "sub" / "out")
    assert _tree(tmp_path) == ["deep", "deep/out", "deep/out/keep.txt"]  # the parents it made are gone too
    monkeypatch.undo()
    # overwrite=true replaces the folder once the new export is complete
    assert _cli(f"ckpt_path={ckpts['lowrank_precond']}", f"out_dir={out}", "overwrite=true", "program=false") == 0
    assert _tree(out) == ["config.json", "model.safetensors"]
    assert read_config(out)["program_note"] == "not requested (program=false)"
    assert _tree(tmp_path) == ["deep", "deep/out", "deep/out/config.json", "deep/out/model.safetensors"]
    # no out_dir: <paths.log_dir>/export/<model>_<time>
    assert _cli(f"ckpt_path={ckpts['lowrank_precond']}", f"paths.log_dir={tmp_path / 'logs'}", "program=false") == 0
    (made,) = (tmp_path / "logs" / "export").iterdir()
    assert made.name.startswith("lowrank_precond_") and (made / "config.json").is_file()


def test_matrix_of_wrong_size_for_fixed_model(mats, tmp_path):
    model = LowRankPreconditioner(side="forward", variant="fixed", num_nodes=64, rank=2).eval()
    # safeguard=False: the untrained model's own M is written (the format under test), not its Jacobi fallback
    written, failed = export_preconditioners(model, [mats["diff12"], mats["diff8"]], tmp_path, name="lowrank_precond",
                                             safeguard=False)
    assert list(written) == ["diff8"] and "trained for n = 64 unknowns; this matrix has n = 144" in failed["diff12"]
    assert _tree(tmp_path) == ["diff8.json", "diff8_lowrank.npz"]
    # the exported M^-1 is the model's (Woodbury, M = D + U U^T)
    M = load_preconditioner(tmp_path / "diff8.json")
    A = read_matrix_market(mats["diff8"])
    D, U = model.factors(Batch.from_data_list([load_system(mats["diff8"])]))
    Mdense = np.diag(D.detach().numpy()) + U.detach().numpy() @ U.detach().numpy().T
    x = np.random.default_rng(1).standard_normal(A.shape[0])
    assert np.allclose(Mdense @ (M @ x), x, rtol=0, atol=1e-10 * np.abs(x).max())


@pytest.mark.parametrize("name", ["unrolled_cg", "physics_nn", "neural_ode"])
def test_models_without_a_matrix(name, mats, tmp_path):
    """The other registry entries (learned solver, surrogates): weights + config round trip, no program for them
    (the reason recorded), matrices skipped with a message saying why."""
    from omegaconf import OmegaConf

    from learnsolve.models import MODELS

    net = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "model" / f"{name}.yaml"))["net"]
    kwargs = {k: v for k, v in net.items() if k != "_target_"}
    torch.manual_seed(0)
    model = MODELS[name](**kwargs)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ckpt = tmp_path / "fake.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "learnsolve_config": {"model": {"name": name, "net": net}}}, ckpt)
    rep = export_model(ckpt, tmp_path / "out", matrices=str(mats["diff8"]))
    assert rep.program is None and rep.program_note and not rep.preconditioners
    assert rep.skipped and "exported the model only" in rep.skipped and name in rep.skipped
    assert _tree(tmp_path / "out") == ["config.json", "model.safetensors"]
    back = load_exported_model(tmp_path / "out")
    assert type(back) is type(model)
    ref = model.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in back.state_dict().items())


def test_load_errors_name_the_file(exported, tmp_path):
    src = exported["neural_if"] / "preconditioners"
    pre = tmp_path / "pre"
    shutil.copytree(src, pre)
    with pytest.raises(ExportError, match="does not exist"):
        load_preconditioner(pre / "nothing.json")
    with pytest.raises(ExportError, match="backend"):
        load_preconditioner(pre / "diff8.json", backend="jax")
    meta = json.loads((pre / "diff8.json").read_text())
    (pre / "wrongtype.json").write_text(json.dumps(dict(meta, type="ilu")))
    with pytest.raises(ExportError, match=r"wrongtype\.json: preconditioner type 'ilu'"):
        load_preconditioner(pre / "wrongtype.json")
    (pre / "diff8_L.npz").unlink()
    with pytest.raises(ExportError, match=r"diff8\.json: file .*diff8_L\.npz.* is missing"):
        load_preconditioner(pre / "diff8.json")
    (pre / "notjson.json").write_text("{")
    with pytest.raises(ExportError, match=r"notjson\.json.*not readable JSON"):
        load_preconditioner(pre / "notjson.json")
    # a model config may only name learnsolve's own model classes
    folder = tmp_path / "model"
    shutil.copytree(exported["neural_if"], folder)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(dict(cfg, target="os.system")))
    with pytest.raises(ExportError, match="outside learnsolve.models; refusing"):
        load_exported_model(folder)
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ExportError, match=r"model\.safetensors: not a readable safetensors file"):
        load_exported_model(folder)


class _NewPreconditioner(LearnedModel):
    """A learned preconditioner export has never heard of: M = exp(s) diag(A) + u u^T with u_i = w sqrt(a_ii)."""

    kind = "preconditioner"
    is_linear = True
    matrix_type = "lowrank_diag"

    def __init__(self):
        super().__init__()
        self.s = torch.nn.Parameter(torch.tensor(0.3, dtype=torch.float64))
        self.w = torch.nn.Parameter(torch.tensor([0.2, -0.1], dtype=torch.float64))

    def arrays(self, row, col, values, n: int):
        d = diagonal(row, col, values, n)
        return torch.exp(self.s) * d, torch.sqrt(d).unsqueeze(-1) * self.w

    def preconditioner_for(self, batch):
        A = SparseMatrix.from_pyg(batch).detach()
        red = A.reducer()
        D, U = self.arrays(A.pattern.row.long(), A.pattern.col.long(), A.values, A.shape[0])
        return LowRankDiagonal(D, U, segment=red.segment, num_blocks=red.G)

    def training_loss(self, batch):
        return (self.s - 1.0) ** 2, {}

    def export_program(self):
        def reference(data, _inputs):
            P = self.preconditioner_for(Batch.from_data_list([data]))
            return P.D[0], P.U[0]

        return ProgramSpec(_NewProgram(self), reference=reference, outputs=["D (n,)", "U (n, 2)"])


class _NewProgram(ProgramModule):
    def forward(self, edge_index, values, feat):
        return self.model.arrays(edge_index[0], edge_index[1], values, feat.shape[0])


def test_new_learned_preconditioner_exports_without_export_changes(mats, tmp_path):
    """Export asks the model: a new class implementing the base's methods gets its per-matrix files and its compiled
    program (checked against the model) with no line of export code of its own."""
    model = _NewPreconditioner().eval()
    assert model.matrix_export_reason("new") is None
    # safeguard=False: this Jacobi-like M loses to IC(0), and the point here is writing the model's own arrays
    written, failed = export_preconditioners(model, [mats["diff8"]], tmp_path / "pre", name="new", safeguard=False)
    assert list(written) == ["diff8"] and not failed
    meta = json.loads(written["diff8"].read_text())
    assert meta["type"] == "lowrank_diag" and meta["model"] == "new" and meta["rank"] == 2
    M = load_preconditioner(written["diff8"])
    A = read_matrix_market(mats["diff8"])
    D = np.exp(0.3) * A.diagonal()
    u = np.sqrt(A.diagonal())[:, None] * np.array([0.2, -0.1])
    x = np.random.default_rng(2).standard_normal(A.shape[0])
    assert np.allclose((np.diag(D) + u @ u.T) @ (M @ x), x, rtol=0, atol=1e-10 * np.abs(x).max())
    (tmp_path / "prog").mkdir()
    info = compile_program(model, tmp_path / "prog")
    assert info["program"] == "program.pt2" and info["program_inputs"]["outputs"] == ["D (n,)", "U (n, 2)"]
    prog = load_program_file("torch.export", tmp_path / "prog" / "program.pt2")
    data = _held_out(9)
    Dp, Up = prog(data.edge_index, data.edge_attr.double(), data.feat.double())
    P = model.preconditioner_for(Batch.from_data_list([data]))
    assert torch.allclose(Dp, P.D[0]) and torch.allclose(Up, P.U[0])
