"""The documentation site stays true to the code.

- Every ```python block of every page under docs/ runs: the blocks of one page in order, in one namespace, in a
  temporary working directory. A block that cannot run here (it needs a trained checkpoint, a GPU, an account) has
  ``<!-- not-run: reason -->`` on the line before its fence.
- Every command in a ```bash block names a script that exists (``train.py``, ``scripts/X.py``, a ``learnsolve-*``
  console script), and the Hydra commands' overrides compose with Hydra's compose API on ``conf/`` (``hydra.*``
  overrides and flags such as ``-m`` or ``--cfg job`` are left to Hydra's launcher). Commands in a not-run block are
  checked for their script only.
- mkdocs.yml's nav lists only pages that exist, and every page under docs/ is in the nav.
"""

from __future__ import annotations

import ast
import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path
from textwrap import dedent

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md") if not any(part.startswith("_") for part in p.relative_to(DOCS).parts))
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
                   re.MULTILINE | re.DOTALL)
NOT_RUN = re.compile(r"<!--\s*not-run:\s*(?P<reason>.+?)\s*-->")
# the Hydra commands and the top-level config each composes
HYDRA_SCRIPTS = {"train.py": "train", "scripts/evaluate.py": "evaluate", "scripts/export.py": "export",
                 "scripts/tune.py": "tune", "scripts/generate_data.py": "generate"}
SEPARATORS = {"&&", "||", ";", "|"}


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    lang: str
    code: str
    not_run: str | None  # the reason, for a block marked not-run

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def _blocks(page: Path) -> list[Block]:
    text = page.read_text()
    out = []
    for m in FENCE.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        before = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = NOT_RUN.search(before)
        out.append(Block(page, line, m["lang"], dedent(m["body"]), marker["reason"] if marker else None))
    return out


BLOCKS = [b for page in PAGES for b in _blocks(page)]
PYTHON_PAGES = sorted({b.page for b in BLOCKS if b.lang == "python"})


def _console_scripts() -> dict[str, str]:
    """``learnsolve-X`` -> the config its command composes (``learnsolve.cli.X:main`` -> ``X``)."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    return {name: target.split(":")[0].rsplit(".", 1)[-1] for name, target in scripts.items()}


CONSOLE = _console_scripts()


@dataclass(frozen=True)
class Command:
    block: Block
    script: str
    args: tuple[str, ...]

    @property
    def config(self) -> str | None:
        return CONSOLE.get(self.script) or HYDRA_SCRIPTS.get(self.script)

    @property
    def overrides(self) -> list[str]:
        """The overrides to compose; in a multirun (``-m``) the first value of each comma-separated sweep."""
        out = [a for a in self.args if "=" in a and not a.startswith(("-", "hydra.", "hydra/", "+hydra.", "~hydra."))]
        if "-m" in self.args or "--multirun" in self.args:
            out = [_first_sweep_value(a) for a in out]
        return out


def _first_sweep_value(override: str) -> str:
    key, value = override.split("=", 1)
    depth, cut = 0, len(value)
    for i, ch in enumerate(value):
        depth += ch in "[({"
        depth -= ch in "])}"
        if ch == "," and depth == 0:
            cut = i
            break
    return f"{key}={value[:cut]}"


def _commands() -> list[Command]:
    out = []
    for block in BLOCKS:
        if block.lang not in ("bash", "sh", "shell"):
            continue
        for line in block.code.replace("\\\n", " ").splitlines():
            tokens = shlex.split(line, comments=True)
            segments, seg = [], []
            for t in tokens:
                if t in SEPARATORS:
                    segments.append(seg)
                    seg = []
                else:
                    seg.append(t)
            segments.append(seg)
            for seg in segments:
                for i, t in enumerate(seg):
                    if t.endswith(".py") or t in CONSOLE or t.startswith("learnsolve-"):
                        out.append(Command(block, t, tuple(seg[i + 1:])))
                        break
    return out


COMMANDS = _commands()


def _nav_pages(nav) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, list):
        return [p for item in nav for p in _nav_pages(item)]
    if isinstance(nav, dict):
        return [p for item in nav.values() for p in _nav_pages(item)]
    return []


def test_the_docs_have_runnable_examples_and_commands():
    assert PYTHON_PAGES and COMMANDS
    assert any(c.script == "train.py" for c in COMMANDS)


@pytest.mark.parametrize("page", PYTHON_PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_python_blocks_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace = {"__name__": "__docs__"}
    blocks = [b for b in _blocks(page) if b.lang == "python"]
    for block in blocks:
        if block.not_run is None:
            exec(compile(block.code, block.where, "exec"), namespace)  # noqa: S102 (our own documentation)
    assert any(b.not_run is None for b in blocks), f"{page}: every python block is marked not-run"


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: f"{c.block.where}:{c.script}")
def test_commands_name_existing_scripts(command):
    if command.script.startswith("learnsolve-"):
        assert command.script in CONSOLE, f"{command.block.where}: no console script {command.script}"
    else:
        assert (ROOT / command.script).is_file(), f"{command.block.where}: no script {command.script}"


def test_hydra_commands_compose():
    from hydra import compose, initialize_config_dir

    from learnsolve.cli._hydra import CONF_DIR

    cases = {}
    for c in COMMANDS:
        if c.config is not None and c.block.not_run is None:
            cases.setdefault((c.config, tuple(c.overrides)), c.block.where)
    assert any(config == "train" for config, _ in cases)
    failed = []
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        for (config, overrides), where in cases.items():
            try:
                cfg = compose(config, overrides=list(overrides))
            except Exception as e:  # noqa: BLE001 (every failure is reported with its page and line)
                failed.append(f"{where}: {config} {' '.join(overrides)}: {type(e).__name__}: {e}")
                continue
            assert cfg.task_name in ("train", "evaluate", "export", "tune", "generate", "debug")
    assert not failed, "commands in the docs that do not compose:\n" + "\n".join(failed)


def test_a_bad_override_is_caught():
    """The compose check is not vacuous: an unknown group option or key fails to compose."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import ConfigKeyError

    from learnsolve.cli._hydra import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        for overrides in (["model=no_such_model"], ["data.no_such_key=1"]):
            with pytest.raises((HydraException, ConfigKeyError)):
                compose("train", overrides=overrides)


@pytest.mark.parametrize("package", ["linalg", "data", "models", "nn", "training", "evaluation", "export", "jax",
                                     "tensorflow", "interop"])
def test_api_reference_documents_every_public_name(package):
    """Each name in a package's ``__all__`` has a ``::: learnsolve.<package>.<name>`` entry in docs/api/."""
    tree = ast.parse((ROOT / "src" / "learnsolve" / package / "__init__.py").read_text())
    public = next(ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                  and any(getattr(t, "id", None) == "__all__" for t in node.targets))
    documented = set(re.findall(r"^::: (learnsolve\.[\w.]+)", "\n".join(
        p.read_text() for p in (DOCS / "api").glob("*.md")), flags=re.MULTILINE))
    missing = [name for name in public if f"learnsolve.{package}.{name}" not in documented]
    assert not missing, f"learnsolve.{package}: not in the API reference: {missing}"


def test_nav_lists_every_page_and_only_existing_ones():
    cfg = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    nav = _nav_pages(cfg["nav"])
    missing = [p for p in nav if not (DOCS / p).is_file()]
    assert not missing, f"nav entries without a page: {missing}"
    assert len(nav) == len(set(nav)), "a page is listed twice in the nav"
    pages = {str(p.relative_to(DOCS)) for p in PAGES}
    assert not pages - set(nav), f"pages that are not in the nav: {sorted(pages - set(nav))}"


def test_raises_sections_name_exceptions():
    """A parameter written under ``Raises:`` renders as an exception in the API reference: every item there must
    name an exception class (``ValueError``, ``learnsolve.linalg.ConvergenceError``, ...)."""
    bad = []
    for path in sorted((ROOT / "src").rglob("*.py")):
        lines = path.read_text().split("\n")
        for i, line in enumerate(lines):
            if line.strip() != "Raises:":
                continue
            indent = len(lines[i + 1]) - len(lines[i + 1].lstrip())
            j = i + 1
            while j < len(lines) and lines[j].strip() and '"""' not in lines[j]:
                item = lines[j]
                if len(item) - len(item.lstrip()) == indent:
                    name = item.strip().split(":")[0].split(".")[-1]
                    if not re.fullmatch(r"[A-Z]\w*(Error|Warning|Exception|Exit|Interrupt)", name):
                        bad.append(f"{path.relative_to(ROOT)}:{j + 1}: {item.strip()[:60]}")
                j += 1
    assert not bad, bad
