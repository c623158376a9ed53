"""What training buys, and whether it beats the best classical method: learned vs untrained vs classical baselines on
the hard families (i.i.d. lognormal cells, rotated anisotropy, high-contrast channels, graph Laplacians), in
iterations and total time, at several sizes. The columns are explained in ``docs/benchmarks/learning-gain.md``.

Run (from the repository root; Hydra-style ``key=value`` arguments, no run folder)::

    python scripts/bench_learning_gain.py ckpt_path=outputs/train/runs/<time>/checkpoints/last.ckpt
    python scripts/bench_learning_gain.py ckpt_path=[a.ckpt,b.ckpt] sizes=[64,256] num_systems=5
    python scripts/bench_learning_gain.py ckpt_path=null                 # the classical rows alone
    python scripts/bench_learning_gain.py ckpt_path=CKPT quick=true      # smoke run: sizes 16, 32; 1 system

Keys [defaults]: ``ckpt_path`` (required: a checkpoint, a list, or null); ``families`` [those under ``benchmark``'s
``params``]; ``sizes`` [[64, 256, 1024]]: grid sides, a family sized by its number of nodes (``graph_laplacian``)
gets side^2 nodes (4,096 / 65,536 / 1,048,576); ``num_systems`` [3] held-out systems per family and size, seeds
``8_000_000 + i`` (training uses ``seed + [0, 3e6 + 1e6 * extra test sizes)``); ``rtol`` [1e-6], ``repeats`` [3],
``maxiter`` [5000], ``safeguard`` [true] as in ``scripts/evaluate.py``; ``baselines`` [the registry ``BASELINES`` less
``none`` and ``jacobi``, hopeless here]; ``benchmark`` [conf/benchmark/hard.yaml]: its ``params`` are each family's
generator arguments, so this script and ``scripts/evaluate.py benchmark=hard`` draw alike; ``threads`` [1, as the
other benchmarks: 2 threads on a busy 2-core machine made a 256-unknown learned setup 0.4 s instead of 12 ms; null:
torch's default]; ``progress`` [true]; ``out`` [outputs/bench_learning_gain/<date>_<time>]; ``quick`` [false]: sizes
[16, 32], num_systems 1, repeats 1 (keys given explicitly win).

Each system is generated once (no reference solve: the evaluation checks the true residual b - A x itself) and reused
by every checkpoint: :func:`learnsolve.evaluation.evaluate_suite` solves it with every baseline (once, whatever the
number of checkpoints), then with each model at its initial parameters (``untrained``: its classical start) and
trained (``learned``): one row per (system, method) with iterations to ``rtol`` and setup / inference / solve / total
seconds (medians of ``repeats`` timed solves). A model that cannot run gives ``skipped`` rows saying why:

- surrogates (``kind == "surrogate"``: ``physics_nn``, ``neural_ode``) predict solutions and solve nothing;
- a model built for one size (``num_nodes`` set: ``lowrank_precond`` with ``variant=fixed``) on another size;
- models without a classical start (``classical_start()`` is None: the surrogates, and ``lowrank_precond`` with
  ``variant=fixed`` or ``side=forward``, whose untrained low-rank term is random): no untrained rows, no gain.

Summary, one row per model x family x size (``model`` null without checkpoints): per method (learned, untrained, each
baseline) the median and the spread, MIN-MAX, over the systems that converged, of iterations and setup / inference /
solve / total ms, and counts of ok / not_converged / failed / skipped systems and safeguard fallbacks;
``best_classical``: the baseline converged on every system with the lowest median total time; ``gain_iters`` /
``gain_time`` = learned / untrained, ``edge_iters`` / ``edge_time`` = learned / best_classical, each the MEDIAN OF
PER-SYSTEM RATIOS over the systems both methods converged on (paired: the spread between systems cancels;
``gain_pairs`` / ``edge_pairs`` count them). Below 1: training helped (gain), learning beat the best classical
method (edge).

Outputs (atomic writes): ``OUT/learning_gain.json`` (the list of summary rows), ``OUT/learning_gain.meta.json`` (date,
command, configuration, torch threads, versions, seeds, generator parameters, checkpoints), ``OUT/learning_gain.md``
(the Markdown table, also printed), ``OUT/results.csv`` (every per-system row) and
``OUT/plots/learning_gain_<family>.png`` (median total ms and iterations against unknowns, log scales).
"""
from __future__ import annotations

import datetime
import inspect
import math
import os
import platform
import shlex
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import OmegaConf

from learnsolve.data import GENERATORS
from learnsolve.data.suites import GeneratedSuite, SuiteConfigError
from learnsolve.evaluation.baselines import BASELINES, REFERENCE_LABELS
from learnsolve.evaluation.pipeline import untrained_row
from learnsolve.evaluation.report import save_figure, write_csv
from learnsolve.evaluation.runner import EVALUATED, columns, evaluate_suite, rtol_key
from learnsolve.files import write_json, write_text
from learnsolve.models.checkpoint import CheckpointError, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SEED0 = 8_000_000  # held-out seeds: above every training / validation / test range of the datamodule
# the datamodule's seed offsets of its extra test sizes (learnsolve.training.datamodule, which loads Lightning: the
# tests check that these agree)
EXTRA_TEST_OFFSET, EXTRA_TEST_STRIDE = 3_000_000, 1_000_000
HOPELESS = ("none", "jacobi")  # thousands of iterations on the hard families: off by default
DEFAULT_BASELINES = tuple(b for b in BASELINES if b not in HOPELESS)
MODEL_ROWS = ("learned", "untrained")
ILU_AS_IC = {"ilu0": "ic0"}  # the ic0 baseline runs as ILU(0) on a nonsymmetric matrix (its row label)
QUICK = {"sizes": [16, 32], "num_systems": 1, "repeats": 1}
DEFAULTS = {"ckpt_path": "???", "families": None, "sizes": [64, 256, 1024], "num_systems": 3, "rtol": 1e-6,
            "repeats": 3, "maxiter": 5000, "baselines": None,
            "benchmark": str(ROOT / "conf" / "benchmark" / "hard.yaml"), "safeguard": True, "threads": 1,
            "progress": True, "out": None, "quick": False}
TIMES = ("setup", "inference", "solve", "total")
RAW_KEYS = ("model", "ckpt_path", "family", "size", "seed")  # prepended to the evaluation's columns in results.csv
SPREAD = "min-max over the systems that converged"
RATIO = "median over systems of the per-system ratio, on the systems both methods converged on"
BEST = "the baseline converged on every system with the lowest median total time"


class LearningGainConfigError(ValueError):
    """A bad argument of this script (the message names the key and says what it accepts)."""


def _as_list(key: str, value, kind: type, what: str) -> list:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, kind) and not isinstance(v, bool) for v in items):
        raise LearningGainConfigError(f"{key} must be {what} or a list of them, e.g. {key}=[...], got {value!r}")
    return items


def _positive_int(key: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise LearningGainConfigError(f"{key} must be a positive integer, got {value!r}")
    return value


def _bool(key: str, value) -> bool:
    if not isinstance(value, bool):
        raise LearningGainConfigError(f"{key} must be true or false, got {value!r}")
    return value


def parse_args(argv: Sequence[str]) -> dict:
    """The checked configuration of ``key=value`` arguments (see the module docstring)."""
    given: dict = {}
    for item in argv:
        key = item.partition("=")[0]
        if "=" not in item or not key:
            raise LearningGainConfigError(f"argument {item!r} is not key=value (known keys: {', '.join(DEFAULTS)})")
        try:
            parsed = OmegaConf.to_container(OmegaConf.from_dotlist([item]), resolve=True)
        except Exception as e:  # omegaconf / yaml grammar errors: say which argument
            raise LearningGainConfigError(f"argument {item!r} cannot be parsed: {type(e).__name__}: "
                                          f"{' '.join(str(e).split())}") from e
        if "." in key or key not in DEFAULTS:
            raise LearningGainConfigError(f"unknown key {key!r}; known keys: {', '.join(DEFAULTS)}")
        given[key] = parsed[key]
    cfg = {**DEFAULTS, **given}
    if _bool("quick", cfg["quick"]):
        cfg.update({k: v for k, v in QUICK.items() if k not in given})
    if cfg["ckpt_path"] == "???":
        raise LearningGainConfigError("give ckpt_path=PATH (a training checkpoint, e.g. .../checkpoints/last.ckpt), "
                                      "ckpt_path=[A,B] (several) or ckpt_path=null (the classical rows alone)")
    ck = cfg["ckpt_path"]
    cfg["ckpt_path"] = [] if ck is None else _as_list("ckpt_path", ck, str, "a checkpoint path")
    dup = sorted({p for p in cfg["ckpt_path"] if cfg["ckpt_path"].count(p) > 1})
    if dup:
        raise LearningGainConfigError(f"ckpt_path: {dup} given more than once")
    cfg["sizes"] = _as_list("sizes", cfg["sizes"], int, "a positive integer (grid side)")
    if any(s < 2 for s in cfg["sizes"]) or len(set(cfg["sizes"])) != len(cfg["sizes"]):
        raise LearningGainConfigError(f"sizes must be distinct grid sides >= 2, got {cfg['sizes']}")
    cfg["sizes"] = sorted(cfg["sizes"])
    for key in ("num_systems", "repeats", "maxiter"):
        cfg[key] = _positive_int(key, cfg[key])
    rtol = cfg["rtol"]
    if isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not 0 < rtol < 1:
        raise LearningGainConfigError(f"rtol must be a tolerance in (0, 1), e.g. rtol=1e-6, got {rtol!r}")
    cfg["rtol"] = float(rtol)
    for key in ("safeguard", "progress"):
        cfg[key] = _bool(key, cfg[key])
    if cfg["threads"] is not None:
        cfg["threads"] = _positive_int("threads", cfg["threads"])
    if cfg["out"] is not None and not isinstance(cfg["out"], str):
        raise LearningGainConfigError(f"out must be a folder path, got {cfg['out']!r}")
    bl = list(DEFAULT_BASELINES) if cfg["baselines"] is None else _as_list("baselines", cfg["baselines"], str,
                                                                           "a baseline name")
    bad = [b for b in bl if b not in BASELINES]
    if bad:
        raise LearningGainConfigError(f"baselines: unknown {bad}; choose from {', '.join(BASELINES)}")
    cfg["baselines"] = list(dict.fromkeys(bl))
    cfg["params"] = _benchmark_params(cfg["benchmark"])
    fams = list(cfg["params"]) if cfg["families"] is None else _as_list("families", cfg["families"], str,
                                                                        "a generator family")
    bad = [f for f in fams if f not in GENERATORS]
    if bad:
        raise LearningGainConfigError(f"families: unknown {bad}; choose from {', '.join(sorted(GENERATORS))}")
    if not fams:
        raise LearningGainConfigError(f"families: none given, and {cfg['benchmark']} names no family under params")
    cfg["families"] = list(dict.fromkeys(fams))
    return cfg


def _benchmark_params(path) -> dict:
    """``params`` of the benchmark YAML: {family: {generator keyword: value}}."""
    if not isinstance(path, str) or not Path(path).is_file():
        raise LearningGainConfigError(f"benchmark={path!r} is not a file (give a benchmark YAML with per-family "
                                      f"params, e.g. conf/benchmark/hard.yaml)")
    try:
        params = OmegaConf.to_container(OmegaConf.load(path), resolve=True).get("params") or {}
    except Exception as e:  # a YAML error: say which file
        raise LearningGainConfigError(f"benchmark={path!r} cannot be read: {type(e).__name__}: {e}") from e
    if not isinstance(params, dict) or not all(isinstance(v, dict) for v in params.values()):
        raise LearningGainConfigError(f"benchmark={path!r}: params must map families to keyword mappings, "
                                      f"got {params!r}")
    return params


def generator_size(family: str, side: int) -> int:
    """The generator's size argument for grid side ``side``: side^2 for a generator sized by its number of nodes
    (its first parameter is ``n``: graph_laplacian), else the side itself."""
    first = next(iter(inspect.signature(GENERATORS[family]).parameters))
    return side * side if first == "n" else side


def _accepts(family: str, keyword: str) -> bool:
    ps = inspect.signature(GENERATORS[family]).parameters.values()
    return any(p.kind is p.VAR_KEYWORD or p.name == keyword for p in ps)


def build_suite(family: str, side: int, cfg: Mapping) -> GeneratedSuite:
    """The ``num_systems`` held-out systems of ``family`` at grid side ``side`` (checked, not yet generated)."""
    specs = [[family, generator_size(family, side), SEED0 + i] for i in range(cfg["num_systems"])]
    params = {family: cfg["params"][family]} if family in cfg["params"] else {}
    try:
        return GeneratedSuite(specs, name=f"{family}_{side}", params=params,
                              reference=not _accepts(family, "reference"))
    except SuiteConfigError as e:
        raise LearningGainConfigError(f"families={family} with benchmark={cfg['benchmark']}: {e}") from e


@dataclass
class Entry:
    """One checkpoint: its label in the tables, its model trained and untrained, and what it cannot do."""

    label: str
    path: str
    model: object
    untrained: object | None
    start: dict = field(default_factory=dict)  # classical start: method / initial parameters, or a note why none
    config: dict = field(default_factory=dict)  # the checkpoint's run config
    surrogate: str | None = None  # why the model solves nothing (a surrogate)

    def cannot_run(self, n: int) -> str | None:
        if self.surrogate:
            return self.surrogate
        nn = getattr(self.model, "num_nodes", None)
        if nn is not None and int(nn) != n:
            return (f"{self.label} ({type(self.model).__name__}) serves systems of n = {nn} unknowns only; this one "
                    f"has {n}")
        return None


def load_entries(paths: Sequence[str]) -> list[Entry]:
    loaded = []
    for p in paths:
        try:
            loaded.append((p, load_checkpoint(p)))
        except CheckpointError as e:
            raise LearningGainConfigError(f"ckpt_path: {e}") from e
    names = [ck.name for _, ck in loaded]
    out = []
    for p, ck in loaded:
        run = Path(p).parent.parent if Path(p).parent.name == "checkpoints" else Path(p).parent
        label = ck.name if names.count(ck.name) == 1 else f"{ck.name}:{run.name}/{Path(p).name}"  # tell runs apart
        cls = type(ck.model).__name__
        if ck.model.kind == "surrogate":
            why = (f"{label} ({cls}) is a surrogate model: it predicts solutions and does not solve A x = b, so it "
                   "has no learned or untrained rows")
            out.append(Entry(label, p, ck.model, None, {"method": None, "note": why}, ck.config, surrogate=why))
            continue
        untrained, start = untrained_row(ck, ["untrained"])
        out.append(Entry(label, p, ck.model, untrained, start or {}, ck.config))
    return out


class _Progress:
    """A rich progress bar of evaluations (one system with the baselines, or with one checkpoint) on stderr."""

    def __init__(self, enabled: bool, total: int):
        self.enabled, self.total, self.bar, self.task = enabled, total, None, None

    def __enter__(self):
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("learning gain {task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), console=Console(stderr=True))
            self.bar.start()
            self.task = self.bar.add_task("", total=self.total)
        return self

    def update(self, text: str, advance: int = 0) -> None:
        if self.bar is not None:
            self.bar.update(self.task, description=text, advance=advance)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()
        return False


def _skipped_row(data, name: str, label: str, rtol: float, reason: str) -> dict:
    row = dict.fromkeys(columns([rtol]))
    row.update(matrix=name, n=int(data.num_nodes), nnz=int(data.edge_index.shape[1]), preconditioner=label,
               status="skipped", reason=reason)
    return row


def _ratio_to_reference(rows: list[dict], classical: list[dict], rtol: float) -> None:
    """``ratio_ic0_<rtol>`` of rows evaluated apart from IC(0) (the model rows), from the same system's IC(0) row."""
    it, key = rtol_key("iters", rtol), rtol_key("ratio_ic0", rtol)
    base = next((r for r in classical if r["preconditioner"] in REFERENCE_LABELS and r["status"] in EVALUATED), None)
    b = None if base is None else base.get(it)
    for r in rows:
        r[key] = r[it] / b if (b and r.get(it) is not None) else None


def evaluate_group(family: str, side: int, suite: GeneratedSuite, entries: Sequence[Entry], cfg: Mapping,
                   bar: _Progress) -> list[dict]:
    """Every raw row of one (family, size): the baselines once per system, then each checkpoint's model rows."""
    rtol = cfg["rtol"]
    kw = {"rtols": [rtol], "repeats": cfg["repeats"], "maxiter": cfg["maxiter"], "safeguard": cfg["safeguard"],
          "progress": False}
    rows: list[dict] = []
    seeds = [spec[2] for spec in suite.specs]
    bar.update(f"{family} {side}: generating {len(seeds)} system(s)")
    systems = list(suite)  # generated once, reused by every checkpoint
    for seed, (name, data) in zip(seeds, systems):
        tag = {"family": family, "size": side, "seed": seed}
        bar.update(f"{family} {side} seed {seed}: classical")
        classical = evaluate_suite(None, [(name, data)], preconditioners=cfg["baselines"], **kw)
        rows += [{"model": None, "ckpt_path": None, **tag, **r} for r in classical]
        bar.update(f"{family} {side} seed {seed}: classical", advance=1)
        for e in entries:
            bar.update(f"{family} {side} seed {seed}: {e.label}")
            why = e.cannot_run(int(data.num_nodes))
            no_start = e.untrained is None and not e.surrogate
            mine = [] if not (no_start or why) else [_skipped_row(data, name, "untrained", rtol, why if not no_start
                                                                  else e.start.get("note") or "no classical start")]
            if why:
                mine.append(_skipped_row(data, name, "learned", rtol, why))
            else:
                precs = ["learned"] if no_start else ["untrained", "learned"]
                mine += evaluate_suite(e.model, [(name, data)], preconditioners=precs, untrained=e.untrained, **kw)
                _ratio_to_reference(mine, classical, rtol)
            rows += [{"model": e.label, "ckpt_path": e.path, **tag, **r} for r in mine]
            bar.update(f"{family} {side} seed {seed}: {e.label}", advance=1)
    return rows


def _spread(values: list[float]) -> dict | None:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)} if values else None


def method_stats(rows: Sequence[Mapping], rtol: float) -> dict:
    """Counts and medians / spreads of one method's rows (one per system)."""
    it = rtol_key("iters", rtol)
    ok = [r for r in rows if r["status"] == "ok"]
    st = {"label": rows[0]["preconditioner"] if rows else None, "systems": len(rows),
          **{s: sum(r["status"] == s for r in rows) for s in ("ok", "not_converged", "failed", "skipped", "error")},
          "fallbacks": sum(bool(r.get("fallback")) for r in rows),
          "iters": _spread([float(r[it]) for r in ok if r.get(it) is not None])}
    for t in TIMES:
        st[f"{t}_ms"] = _spread([1e3 * float(r[f"{t}_s"]) for r in ok if r.get(f"{t}_s") is not None])
    reasons = [r["reason"] for r in rows if r["status"] != "ok" and r.get("reason")]
    st["reason"] = reasons[0] if reasons else None
    return st


def paired_ratio(num: Sequence[Mapping], den: Sequence[Mapping], key: str) -> tuple[float | None, int]:
    """(median over systems of num[key] / den[key], number of systems) on the systems where both rows are ok."""
    d = {r["matrix"]: r for r in den if r["status"] == "ok" and r.get(key)}
    ratios = [float(r[key]) / float(d[r["matrix"]][key]) for r in num
              if r["status"] == "ok" and r.get(key) is not None and r["matrix"] in d]
    return (statistics.median(ratios) if ratios else None), len(ratios)


def summarize(raw: Sequence[Mapping], cfg: Mapping, entries: Sequence[Entry]) -> list[dict]:
    """One summary row per model x family x size (see the module docstring)."""
    rtol, it = cfg["rtol"], rtol_key("iters", cfg["rtol"])
    models = [(e.label, e) for e in entries] or [(None, None)]
    out = []
    for family in cfg["families"]:
        for side in cfg["sizes"]:
            group = [r for r in raw if r["family"] == family and r["size"] == side]
            classical = [r for r in group if r["model"] is None]
            by_base = {b: [r for r in classical if ILU_AS_IC.get(r["preconditioner"], r["preconditioner"]) == b]
                       for b in cfg["baselines"]}
            n_sys = len({r["matrix"] for r in classical})
            stats = {b: method_stats(rs, rtol) for b, rs in by_base.items()}
            complete = [b for b in cfg["baselines"] if stats[b]["ok"] == n_sys > 0 and stats[b]["total_ms"]]
            best = min(complete, key=lambda b: stats[b]["total_ms"]["median"]) if complete else None
            ns = sorted({r["n"] for r in classical if r.get("n") is not None})
            nnz = sorted({r["nnz"] for r in classical if r.get("nnz") is not None})
            for label, e in models:
                mine = {p: [r for r in group if r["model"] == label and r["preconditioner"] == p] for p in MODEL_ROWS}
                row = {"model": label, "ckpt_path": e.path if e else None,
                       "classical_start": e.start.get("method") if e else None, "family": family, "size": side,
                       "generator_size": generator_size(family, side), "n": ns[0] if len(ns) == 1 else ns or None,
                       "nnz": statistics.median(nnz) if nnz else None, "systems": n_sys,
                       "seeds": sorted({r["seed"] for r in classical}), "rtol": rtol, "best_classical": best,
                       "gain_iters": None, "gain_time": None, "gain_pairs": 0,
                       "edge_iters": None, "edge_time": None, "edge_pairs": 0}
                if e is not None:
                    row["gain_iters"], row["gain_pairs"] = paired_ratio(mine["learned"], mine["untrained"], it)
                    row["gain_time"], _ = paired_ratio(mine["learned"], mine["untrained"], "total_s")
                    if best is not None:
                        row["edge_iters"], row["edge_pairs"] = paired_ratio(mine["learned"], by_base[best], it)
                        row["edge_time"], _ = paired_ratio(mine["learned"], by_base[best], "total_s")
                methods = {p: method_stats(mine[p], rtol) for p in MODEL_ROWS if e is not None}
                row["methods"] = {**methods, **stats}
                out.append(row)
    return out


def _num(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}"


def _cell(st: Mapping | None, key: str) -> str:
    """``median (min-max)`` of a method's ``key``, or why there is none."""
    if not st or not st.get("systems"):
        return "-"
    s = st.get(key)
    if s is None:
        return "skipped" if st["skipped"] == st["systems"] else "failed" if st["ok"] == 0 else "-"
    if s["min"] == s["max"]:
        return _num(s["median"])
    return f"{_num(s['median'])} ({_num(s['min'])}-{_num(s['max'])})"


def _fails(st: Mapping | None) -> str:
    return "-" if not st else str(st["not_converged"] + st["failed"] + st["error"])


HEADER = ["model", "family", "size", "n", "best classical", "iters learned", "iters untrained", "iters best",
          "total ms learned", "total ms untrained", "total ms best", "gain iters", "gain time", "edge iters",
          "edge time", "fails L/U/best"]
LEGEND = ("Cells: median (min-max) over the systems that converged. gain = learned / untrained, edge = learned / best "
          f"classical ({BEST}); each the median of per-system ratios over the systems both converged on ((k/N): on k "
          "of N systems only); below 1 the learned model wins. fails: systems not converged or failed (learned / "
          "untrained / best classical).")


def markdown(rows: Sequence[Mapping], meta: Mapping) -> str:
    """The summary as Markdown: a header with the command and date, the table, the skipped / failed reasons."""
    c = meta["config"]
    date = (f"Date: {meta['date']}; torch threads: {meta['torch_threads']}; rtol {c['rtol']:g}, {c['repeats']} timed "
            f"repeat(s), {c['num_systems']} system(s) per family and size.")
    lines = ["# Learning gain: learned vs untrained vs the best classical method", "",
             f"Command: `{meta['command']}`  ", date, "",
             "| " + " | ".join(HEADER) + " |", "|" + "|".join("---" for _ in HEADER) + "|"]
    notes: dict = {}
    for r in rows:
        m = r["methods"]
        lrn, unt, best = m.get("learned"), m.get("untrained"), m.get(r["best_classical"] or "")
        n = "/".join(map(str, r["n"])) if isinstance(r["n"], list) else str(r["n"])
        ratios = [("-" if r[k] is None else f"{r[k]:.2f}" if r[f"{k[:4]}_pairs"] == r["systems"]
                   else f"{r[k]:.2f} ({r[f'{k[:4]}_pairs']}/{r['systems']})")
                  for k in ("gain_iters", "gain_time", "edge_iters", "edge_time")]
        cells = [r["model"] or "(classical only)", r["family"], str(r["size"]), n, r["best_classical"] or "-",
                 *(_cell(st, key) for key in ("iters", "total_ms") for st in (lrn, unt, best)), *ratios,
                 f"{_fails(lrn)}/{_fails(unt)}/{_fails(best)}"]
        lines.append("| " + " | ".join(x.replace("|", "\\|") for x in cells) + " |")
        for p, st in m.items():
            if st.get("reason") and st["ok"] < st["systems"]:
                notes.setdefault((r["model"], p, st["reason"]), []).append(f"{r['family']} {r['size']}")
    lines += ["", LEGEND]
    if notes:
        lines += ["", "Not evaluated or not converged:", ""]
        lines += [f"- {f'{model} {p}' if p in MODEL_ROWS else p} on {', '.join(where)}: {reason}"
                  for (model, p, reason), where in notes.items()]
    return "\n".join(lines) + "\n"


def plot_family(rows: Sequence[Mapping], family: str, path: Path) -> Path:
    """Median total ms (left) and median iterations (right) against unknowns n, log scales; one line per method
    (each baseline once, learned and untrained per model)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogFormatter, NullFormatter

    fig, (ax_t, ax_i) = plt.subplots(1, 2, figsize=(11, 4.5))
    mine = [r for r in rows if r["family"] == family]
    lines: dict[str, dict] = {}  # method -> {n: stats}; a baseline appears in every model's row: plotted once
    for r in mine:
        n = r["n"] if not isinstance(r["n"], list) else statistics.median(r["n"])
        for p, st in r["methods"].items():
            key = f"{r['model']} {p}" if p in MODEL_ROWS else p
            if st["total_ms"] is not None and st["iters"] is not None:
                lines.setdefault(key, {})[n] = st
    for key, by_n in lines.items():
        pts = sorted(by_n.items())
        xs = [n for n, _ in pts]
        learned = key.endswith(" learned")
        style = {"marker": "o" if learned else "s" if key.endswith(" untrained") else ".",
                 "linestyle": "-" if learned else ":" if key.endswith(" untrained") else "--",
                 "linewidth": 2.0 if learned else 1.2}
        ax_t.plot(xs, [s["total_ms"]["median"] for _, s in pts], label=key, **style)
        ax_i.plot(xs, [s["iters"]["median"] for _, s in pts], label=key, **style)
    for ax, what in ((ax_t, "median total ms (setup + solve)"), (ax_i, "median iterations")):
        ax.set(xscale="log", yscale="log", xlabel="unknowns n", ylabel=what)
        ax.set_xticks(sorted({n for by_n in lines.values() for n in by_n}))  # the sizes run, written out
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.4)))
        ax.grid(True, which="major", alpha=0.3)
    ax_t.set_title(f"{family}: total time"), ax_i.set_title(f"{family}: iterations")
    if lines:
        ax_i.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return save_figure(fig, path)


def _finite(obj):
    """A copy with non-finite floats as None (JSON has no NaN / Inf)."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _versions() -> dict:
    import importlib.metadata as md

    found = {(d.metadata["Name"] or "").lower().replace("-", "_"): d.version for d in md.distributions()}
    pkgs = ("learnsolve", "torch", "torch_geometric", "numpy", "scipy", "pyamg", "omegaconf", "matplotlib")
    return {"python": platform.python_version(), **{p: found.get(p) for p in pkgs}}


def _held_out(entries: Sequence[Entry], cfg: Mapping) -> list[str]:
    """Warnings for checkpoints whose training data seeds (every split, from their stored data config) overlap the
    benchmark's seeds."""
    warns, lo, hi = [], SEED0, SEED0 + cfg["num_systems"]
    for e in entries:
        data = e.config.get("data") or {}
        first = int(data.get("seed") or 0)
        last = first + EXTRA_TEST_OFFSET + EXTRA_TEST_STRIDE * max(len(data.get("extra_test_sizes") or []), 1)
        if first < hi and lo < last:
            warns.append(f"{e.label}: its training data seeds [{first}, {last}) overlap the benchmark seeds "
                         f"[{lo}, {hi}): the systems may not be held out")
    return warns


def _meta(cfg: Mapping, argv: list[str], entries: Sequence[Entry], now, warnings: list[str]) -> dict:
    return {"date": now.isoformat(timespec="seconds"),
            "command": shlex.join([sys.executable, "scripts/bench_learning_gain.py", *argv]), "argv": argv,
            "config": {k: v for k, v in cfg.items() if k != "params"}, "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "platform": platform.platform(), "versions": _versions(),
            "seeds": [SEED0 + i for i in range(cfg["num_systems"])],
            "generator_sizes": {f: {s: generator_size(f, s) for s in cfg["sizes"]} for f in cfg["families"]},
            "generator_params": {f: cfg["params"].get(f, {}) for f in cfg["families"]},
            "params_source": cfg["benchmark"],
            "checkpoints": [{"model": e.label, "path": e.path, "class": type(e.model).__name__, "kind": e.model.kind,
                             "num_nodes": getattr(e.model, "num_nodes", None), "classical_start": e.start}
                            for e in entries],
            "definitions": {"spread": SPREAD, "ratios": RATIO, "best_classical": BEST, "gain": "learned / untrained",
                            "edge": "learned / best_classical"},
            "warnings": warnings}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark (see the module docstring); 0 when something was evaluated, 1 when nothing could be.
    Bad arguments raise :class:`LearningGainConfigError` before anything is generated or solved."""
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = parse_args(argv)
    suites = {(f, s): build_suite(f, s, cfg) for f in cfg["families"] for s in cfg["sizes"]}  # checked up front
    entries = load_entries(cfg["ckpt_path"])
    now = datetime.datetime.now()
    out = Path(cfg["out"] or Path("outputs") / "bench_learning_gain" / now.strftime("%Y-%m-%d_%H-%M-%S"))
    warnings = _held_out(entries, cfg)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)

    threads = torch.get_num_threads()
    try:
        if cfg["threads"] is not None:
            torch.set_num_threads(cfg["threads"])
        meta = _meta(cfg, argv, entries, now, warnings)
        total = len(suites) * cfg["num_systems"] * (1 + len(entries))
        raw: list[dict] = []
        with _Progress(cfg["progress"], total) as bar:
            for (family, side), suite in suites.items():
                raw += evaluate_group(family, side, suite, entries, cfg, bar)
        rows = summarize(raw, cfg, entries)
        table = markdown(rows, meta)
        paths = {"rows": write_json(out / "learning_gain.json", _finite(rows), allow_nan=False),
                 "markdown": write_text(out / "learning_gain.md", table),
                 "raw": write_csv(out / "results.csv", raw, [*RAW_KEYS, *columns([cfg["rtol"]])])}
        for family in cfg["families"]:
            paths[f"plot_{family}"] = plot_family(rows, family, out / "plots" / f"learning_gain_{family}.png")
        meta["files"] = {k: str(p) for k, p in paths.items()}
        write_json(out / "learning_gain.meta.json", _finite(meta), allow_nan=False)
    finally:
        torch.set_num_threads(threads)
    print(table)
    print(f"wrote {out / 'learning_gain.json'}, {out / 'learning_gain.meta.json'}, {out / 'learning_gain.md'}, "
          f"{out / 'results.csv'} and {out / 'plots'}/")
    return 0 if any(r["status"] in EVALUATED for r in raw) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except LearningGainConfigError as err:
        print(f"bench_learning_gain.py: error: {err}", file=sys.stderr)
        sys.exit(2)
