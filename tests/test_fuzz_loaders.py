"""Property tests of the checkpoint and exported-folder loaders (``learnsolve.models.checkpoint.load_checkpoint`` /
``load_model``, ``learnsolve.export.load_exported_model``): tampered bytes, truncations, wrong config values and
versions, missing files, wrong weight shapes, dtypes and values. Each ends in a CheckpointError / ExportError naming
the file, or in a model whose weights are exactly the ones written; never a pickle / safetensors / KeyError
traceback, never a half-loaded model, never an allocation the weights do not justify. The writers (export folder,
Lightning checkpoint) are checked to leave no partial file when a write fails. Each property runs a few dozen
examples here and 1,000 in its ``slow`` twin; the regression tests below pin the defects found.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import strategies as st
from omegaconf import OmegaConf
from safetensors.torch import load_file, save

from learnsolve.export import ExportError, export_model, load_exported_model
from learnsolve.models import MODELS
from learnsolve.models.checkpoint import CheckpointError, load_checkpoint, load_model

from .fuzz import twins

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("neural_if", "lowrank_precond", "unrolled_cg")
JSON = st.recursive(st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats(allow_nan=False)
                    | st.text(max_size=6), lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c,
                                                                                              max_size=3), max_leaves=6)


def _net(name: str) -> dict:
    net = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "model" / f"{name}.yaml"))["net"]
    return dict(net, hidden=4) if "hidden" in net else net


def _checkpoint_dict(name: str) -> dict:
    """A training checkpoint's content as learnsolve's LightningModule writes it, for a small model of ``name``."""
    net = _net(name)
    torch.manual_seed(0)
    model = MODELS[name](**{k: v for k, v in net.items() if k != "_target_"}).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "epoch": 1,
            "pytorch-lightning_version": "2.4.0", "learnsolve_config": {"model": {"name": name, "net": net},
                                                                          "seed": 0}}


@pytest.fixture(scope="module")
def originals(tmp_path_factory) -> dict:
    """Per family: the checkpoint dict, its file, its bytes, an exported folder (no program) and its weights."""
    root = tmp_path_factory.mktemp("originals")
    out = {}
    for name in FAMILIES:
        ck = _checkpoint_dict(name)
        path = root / f"{name}.ckpt"
        torch.save(ck, path)
        folder = root / f"{name}_export"
        export_model(path, folder, program=False)
        out[name] = {"ckpt": ck, "path": path, "bytes": path.read_bytes(), "folder": folder,
                     "weights": {k[len("model."):]: v for k, v in ck["state_dict"].items()}}
    return out


def _same_weights(model, weights: dict) -> None:
    """Accepted: every weight is exactly the one written (nothing half-loaded, nothing altered)."""
    got = model.state_dict()
    assert set(got) == set(weights)
    assert all(torch.equal(got[k], weights[k].to(got[k].dtype)) for k in weights)


def _flip(data, raw: bytes) -> bytes:
    b = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 4), label="edits")):
        kind = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]), label="edit")
        i = data.draw(st.integers(0, max(len(b) - 1, 0)), label="at")
        if kind == "flip" and b:
            b[i] = data.draw(st.integers(0, 255))
        elif kind == "insert":
            b[i:i] = data.draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del b[i:i + data.draw(st.integers(1, 16))]
        else:
            del b[i:]
    return bytes(b)


# ------------------------------------------------------------------------------------------------
# checkpoints
# ------------------------------------------------------------------------------------------------

def _prop_tampered_checkpoint_bytes(originals, tmp_path, data):
    o = originals[data.draw(st.sampled_from(FAMILIES), label="family")]
    p = tmp_path / "t.ckpt"
    p.write_bytes(_flip(data, o["bytes"]))
    try:
        model, _ = load_model(p)
    except CheckpointError as e:
        assert str(p) in str(e), str(e)
        return
    _same_weights(model, o["weights"])


test_tampered_checkpoint_bytes, test_tampered_checkpoint_bytes_slow = twins(_prop_tampered_checkpoint_bytes, 60)


def _mutate_checkpoint(data, ck: dict) -> tuple[dict, bool]:
    """(a structurally altered copy of the checkpoint dict, whether the alteration leaves the model as written)."""
    ck = {**ck, "state_dict": dict(ck["state_dict"]), "learnsolve_config": json.loads(json.dumps(
        ck["learnsolve_config"]))}
    sd, cfg, net = ck["state_dict"], ck["learnsolve_config"], ck["learnsolve_config"]["model"]["net"]
    key = data.draw(st.sampled_from(sorted(sd)), label="weight")
    kind = data.draw(st.sampled_from(["shape", "dtype", "nan", "drop", "extra", "not_tensor", "kwarg", "huge",
                                      "config", "net", "name", "target", "seed", "state", "top", "version"]))
    if kind == "shape":
        sd[key] = torch.zeros(*(s + data.draw(st.integers(1, 3)) for s in sd[key].shape), 2, dtype=sd[key].dtype)
    elif kind == "dtype":
        sd[key] = sd[key].to(data.draw(st.sampled_from([torch.int64, torch.bool, torch.complex128])))
    elif kind == "nan" and sd[key].numel():
        t = sd[key].clone()
        t.view(-1)[data.draw(st.integers(0, t.numel() - 1))] = data.draw(st.sampled_from([float("nan"), float("inf")]))
        sd[key] = t
    elif kind == "drop":
        del sd[key]
    elif kind == "extra":
        sd[f"model.{data.draw(st.text(min_size=1, max_size=5))}"] = torch.zeros(2)
    elif kind == "not_tensor":
        sd[key] = data.draw(JSON)
    elif kind == "kwarg":
        net[data.draw(st.sampled_from(sorted(k for k in net if k != "_target_")))] = data.draw(JSON)
    elif kind == "huge":
        net["hidden" if "hidden" in net else "steps"] = data.draw(st.integers(10**6, 2**62))
    elif kind == "config":
        ck["learnsolve_config"] = data.draw(JSON)
    elif kind == "net":
        cfg["model"]["net"] = data.draw(JSON)
    elif kind == "name":
        cfg["model"]["name"] = data.draw(JSON | st.sampled_from(sorted(MODELS)))
    elif kind == "target":
        net["_target_"] = data.draw(JSON | st.sampled_from(["os.system", "learnsolve.models.checkpoint.Path",
                                                            "learnsolve.models.NeuralIF"]))
    elif kind == "seed":
        cfg["seed"] = data.draw(JSON)
    elif kind == "state":
        ck["state_dict"] = data.draw(JSON)
    elif kind == "top":
        ck = data.draw(JSON) if data.draw(st.booleans()) else {k: v for k, v in ck.items() if k != "state_dict"}
    else:  # Lightning's version fields are not read: the model is unchanged
        ck["pytorch-lightning_version"] = data.draw(JSON)
    return ck, kind == "version" or (kind == "nan" and not sd[key].numel())


def _prop_altered_checkpoint_contents(originals, tmp_path, data):
    o = originals[data.draw(st.sampled_from(FAMILIES), label="family")]
    ck, benign = _mutate_checkpoint(data, o["ckpt"])
    p = tmp_path / "c.ckpt"
    torch.save(ck, p)
    try:
        c = load_checkpoint(p)
        model, how = c.untrained()  # the seed-rebuilt or stored initial model: same checks
    except CheckpointError as e:
        assert str(p) in str(e) or "checkpoint of" in str(e), str(e)
        assert not benign, f"an unaltered model was refused: {e}"
        return
    weights = {k[len("model."):]: v for k, v in ck["state_dict"].items()}
    _same_weights(c.model, weights)  # whatever was altered, the weights loaded are exactly the file's
    assert type(model) is type(c.model) and "seed" in how


test_altered_checkpoint_contents, test_altered_checkpoint_contents_slow = twins(_prop_altered_checkpoint_contents, 60)


# ------------------------------------------------------------------------------------------------
# exported folders
# ------------------------------------------------------------------------------------------------

def _prop_altered_export_folders(originals, tmp_path, data):
    o = originals[data.draw(st.sampled_from(FAMILIES), label="family")]
    folder = tmp_path / "f"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(o["folder"], folder)
    cfg = json.loads((folder / "config.json").read_text())
    weights = load_file(str(folder / "model.safetensors"))
    kind = data.draw(st.sampled_from(["delete", "config_bytes", "weights_bytes", "field", "kwarg", "weights_file",
                                      "restate", "restate_digest", "format", "harmless"]), label="alteration")
    benign = kind == "harmless"
    if kind == "delete":
        (folder / data.draw(st.sampled_from(["config.json", "model.safetensors"]))).unlink()
    elif kind in ("config_bytes", "weights_bytes"):
        f = folder / ("config.json" if kind == "config_bytes" else "model.safetensors")
        f.write_bytes(_flip(data, f.read_bytes()))
    elif kind in ("field", "kwarg", "format", "weights_file", "harmless"):
        if kind == "field":
            cfg[data.draw(st.sampled_from(["model", "target", "kwargs", "weights", "weights_sha256"]))] = data.draw(
                JSON)
        elif kind == "kwarg" and cfg["kwargs"]:
            cfg["kwargs"][data.draw(st.sampled_from(sorted(cfg["kwargs"])))] = data.draw(JSON)
        elif kind == "format":
            cfg["format"] = data.draw(JSON.filter(lambda v: v != 1))
        elif kind == "weights_file":
            cfg["weights"] = data.draw(st.sampled_from(["../f/model.safetensors", "/etc/hostname", "", ".", "x/y"]))
        else:  # fields the loader does not read
            cfg[data.draw(st.sampled_from(["learnsolve_version", "torch_version", "program_note", "extra"]))] = \
                data.draw(JSON)
        (folder / "config.json").write_text(json.dumps(cfg))
    else:  # weights rewritten with another shape / dtype / value / key (the digest updated too, or not)
        key = data.draw(st.sampled_from(sorted(weights)))
        how = data.draw(st.sampled_from(["shape", "dtype", "nan", "drop", "extra"]))
        w = dict(weights)
        if how == "shape":
            w[key] = torch.zeros(w[key].numel() + 1, dtype=w[key].dtype)
        elif how == "dtype":
            w[key] = w[key].to(torch.int64)
        elif how == "nan":
            w[key] = torch.full_like(w[key], float("nan")) if w[key].numel() else torch.zeros(1)
        elif how == "drop":
            del w[key]
        else:
            w["extra"] = torch.zeros(1)
        raw = save(w)
        (folder / "model.safetensors").write_bytes(raw)
        if kind == "restate_digest":
            import hashlib

            (folder / "config.json").write_text(json.dumps(dict(cfg, weights_sha256=hashlib.sha256(raw).hexdigest())))
    try:
        model = load_exported_model(folder)
    except ExportError as e:
        assert str(folder) in str(e), str(e)
        assert not benign, f"an unaltered model was refused: {e}"
        return
    _same_weights(model, o["weights"])


test_altered_export_folders, test_altered_export_folders_slow = twins(_prop_altered_export_folders, 60)


# ------------------------------------------------------------------------------------------------
# writers: a failure mid-write leaves no partial output
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fail_at", ["weights", "config"])
@pytest.mark.parametrize("existing", [False, True])
def test_export_writes_nothing_when_it_fails_midway(originals, tmp_path, monkeypatch, fail_at, existing):
    """export_model fills a hidden sibling folder and renames it into place: a failure while writing the weights
    (after half of them) or the config leaves no output folder, no temporary folder, and an existing output
    (overwrite=True) unchanged."""
    import learnsolve.export.model as em

    out = tmp_path / "out"
    if existing:
        shutil.copytree(originals["neural_if"]["folder"], out)
    before = sorted((p.relative_to(out), p.read_bytes()) for p in out.rglob("*") if p.is_file()) if existing else None
    real = em.write_bytes if fail_at == "weights" else em.write_json

    def half_then_fail(path, content, *a, **k):
        real(path, content[: len(content) // 2] if isinstance(content, bytes) else {"partial": True})
        raise OSError("disk full (injected)")

    monkeypatch.setattr(em, "write_bytes" if fail_at == "weights" else "write_json", half_then_fail)
    with pytest.raises(OSError, match="injected"):
        export_model(originals["unrolled_cg"]["path"], out, program=False, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == (["out"] if existing else [])
    if existing:
        assert sorted((p.relative_to(out), p.read_bytes()) for p in out.rglob("*") if p.is_file()) == before
        _same_weights(load_exported_model(out), originals["neural_if"]["weights"])


def test_checkpoint_writer_leaves_no_partial_file(originals, tmp_path, monkeypatch):
    """Checkpoints are written by Lightning's TorchCheckpointIO (the trainer's ModelCheckpoint): the state is
    serialised in memory, then written in an fsspec transaction (a temporary file moved into place). A write that
    fails halfway leaves the previous checkpoint as it was."""
    from fsspec.implementations.local import LocalFileOpener
    from pytorch_lightning.plugins.io import TorchCheckpointIO

    path = tmp_path / "last.ckpt"
    path.write_bytes(originals["neural_if"]["bytes"])
    real = LocalFileOpener.write

    def half_then_fail(self, b):
        real(self, bytes(b)[: len(b) // 2])
        raise OSError("disk full (injected)")

    monkeypatch.setattr(LocalFileOpener, "write", half_then_fail)
    with pytest.raises(OSError, match="injected"):
        TorchCheckpointIO().save_checkpoint(originals["unrolled_cg"]["ckpt"], path)
    monkeypatch.undo()
    assert path.read_bytes() == originals["neural_if"]["bytes"] and sorted(p.name for p in tmp_path.iterdir()) == [
        "last.ckpt"]
    with pytest.raises((TypeError, AttributeError)):  # unpicklable: fails while serialising, before any file is opened
        TorchCheckpointIO().save_checkpoint({**originals["unrolled_cg"]["ckpt"], "bad": lambda: 0}, path)
    _same_weights(load_model(path)[0], originals["neural_if"]["weights"])


# ------------------------------------------------------------------------------------------------
# regression tests of the defects the properties found
# ------------------------------------------------------------------------------------------------

def _save(tmp_path, ck: dict, name: str = "r.ckpt") -> Path:
    p = tmp_path / name
    torch.save(ck, p)
    return p


def test_checkpoint_arguments_larger_than_the_weights_are_refused_before_allocating(originals, tmp_path):
    """hidden = 10**6 in the stored config made the loader allocate 8 TB (a RuntimeError from the allocator; for
    smaller values, gigabytes): the arguments are now checked against the weights' shapes on the meta device."""
    ck = originals["neural_if"]["ckpt"]
    net = dict(ck["learnsolve_config"]["model"]["net"], hidden=10**6)
    p = _save(tmp_path, {**ck, "learnsolve_config": {"model": {"name": "neural_if", "net": net}}})
    with pytest.raises(CheckpointError, match=r"weights do not fit NeuralIF built from its arguments .*1000000"):
        load_checkpoint(p)
    folder = tmp_path / "f"
    shutil.copytree(originals["neural_if"]["folder"], folder)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(dict(cfg, kwargs=dict(cfg["kwargs"], hidden=10**6))))
    with pytest.raises(ExportError, match="weights do not fit NeuralIF"):
        load_exported_model(folder)


@pytest.mark.parametrize("alter, match", [
    (lambda ck: {**ck, "state_dict": [1]}, "has no state_dict"),
    (lambda ck: {**ck, "state_dict": {**ck["state_dict"], "model.net.encoder.weight": [1, 2]}}, "is a list"),
    (lambda ck: {**ck, "learnsolve_config": {"model": {**ck["learnsolve_config"]["model"], "net": {
        **ck["learnsolve_config"]["model"]["net"], "_target_": ["x"]}}}}, "not a dotted class name"),
    (lambda ck: {**ck, "learnsolve_config": {**ck["learnsolve_config"], "model": {
        **ck["learnsolve_config"]["model"], "name": ["neural_if"]}}}, "model family"),
    (lambda ck: {**ck, "state_dict": {k: v.long() for k, v in ck["state_dict"].items()}}, "torch.int64"),
    (lambda ck: {**ck, "state_dict": {k: v * float("nan") for k, v in ck["state_dict"].items()}}, "NaN or Inf"),
])
def test_malformed_checkpoint_contents_are_checkpoint_errors(originals, tmp_path, alter, match):
    """A list state_dict or a non-tensor weight raised AttributeError, a list model name or _target_ TypeError
    (unhashable); integer weights were cast into the float model and NaN weights loaded silently."""
    p = _save(tmp_path, alter(originals["neural_if"]["ckpt"]))
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(p)


def test_untrained_with_a_bad_seed_and_bad_map_location(originals, tmp_path):
    """A non-integer seed raised ValueError from int(); an unknown map_location torch's RuntimeError."""
    ck = originals["neural_if"]["ckpt"]
    p = _save(tmp_path, {**ck, "learnsolve_config": {**ck["learnsolve_config"], "seed": "x"}})
    with pytest.raises(CheckpointError, match="seed 'x' is not an integer"):
        load_checkpoint(p).untrained()
    with pytest.raises(ValueError, match="map_location 'nodevice'"):
        load_checkpoint(p, map_location="nodevice")


def test_a_flipped_byte_in_checkpoint_data_is_detected(originals, tmp_path):
    """A byte flipped inside a tensor's record loaded as a silently different weight: the zip records' CRC-32 is
    checked now."""
    raw = bytearray(originals["neural_if"]["bytes"])
    w = originals["neural_if"]["ckpt"]["state_dict"]["model.net.encoder.weight"]
    i = raw.index(w.numpy().tobytes()) + 5  # inside the tensor's stored bytes
    raw[i] ^= 0x40
    p = tmp_path / "flip.ckpt"
    p.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(p)


VARIANTS = {"gnn_solver": {"mode": ["multigrid", "fcg"], "strength": ["classical", "learned", "evolution"]},
            "lowrank_precond": {"variant": ["gnn", "fixed"], "side": ["inverse", "forward"],
                                "base": ["ic0", "mic0", "jacobi"]},
            "neural_if": {"arch": ["gnn", "light"], "base": ["none", "ic0", "mic0", "auto"]},
            "neural_ode": {"form": ["mass", "forced"], "method": ["euler", "dopri5"]},
            "physics_nn": {"variant": ["sparse", "dense"], "dense_form": ["spd", "general"]},
            "unrolled_cg": {"precond": ["none", "jacobi"], "loss": ["energy", "residual"]}}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_variant_passes_the_meta_precheck(name):
    """The loaders build a model on the meta device first (no memory) to compare its shapes with the weights; every
    registered model, in each of its variants, must build there and match its real build exactly."""
    from learnsolve.models.checkpoint import build_model

    assert set(VARIANTS) == set(MODELS)
    base = {k: v for k, v in _net(name).items() if k != "_target_"}
    for arg, values in VARIANTS[name].items():
        for value in values:
            kw = dict(base, **{arg: value}, **({"num_nodes": 9} if value in ("fixed", "dense") else {}))
            state = MODELS[name](**kw).state_dict()
            built = build_model(MODELS[name], kw, "variant", state).state_dict()
            assert {k: v.shape for k, v in built.items()} == {k: v.shape for k, v in state.items()}


def test_export_config_paths_names_and_nesting_are_checked(originals, tmp_path):
    """weights '../x' or an absolute path was read from outside the folder; a list model name was ignored; JSON
    nested 100,000 deep raised RecursionError; an altered weights file whose shapes still fit loaded silently (the
    export records the weights' SHA-256 now)."""
    src = originals["neural_if"]["folder"]
    folder = tmp_path / "f"
    cfg = json.loads((src / "config.json").read_text())
    cases = [(dict(cfg, weights="/etc/hostname"), "inside the folder"), (dict(cfg, weights="../f/model.safetensors"),
             "inside the folder"), (dict(cfg, model=[1]), "does not name the class")]
    for bad, match in cases:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(src, folder)
        (folder / "config.json").write_text(json.dumps(bad))
        with pytest.raises(ExportError, match=match):
            load_exported_model(folder)
    (folder / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ExportError, match="not readable JSON"):
        load_exported_model(folder)
    (folder / "config.json").write_text(json.dumps(cfg))
    w = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").write_bytes(save({k: v + 1 for k, v in w.items()}))
    with pytest.raises(ExportError, match="SHA-256 does not match"):
        load_exported_model(folder)
