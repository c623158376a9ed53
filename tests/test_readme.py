"""The README runs as written: its Python example, its links, its length (a user's page, not a log)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def test_readme_python_blocks_run(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert blocks, "README has no python example"
    for code in blocks:
        exec(compile(code, str(README), "exec"), {})  # noqa: S102 (our own README)
    out = capsys.readouterr().out
    assert out.count("cg: 1/1 systems converged") == 2  # forward and adjoint summaries


def test_readme_links_exist_and_the_page_stays_short():
    text = README.read_text()
    assert len(text.splitlines()) <= 300
    assert not re.search(r"\bissue ?#?\d+", text, flags=re.IGNORECASE)
    targets = [t for t in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text) if "://" not in t]
    assert targets
    inside = [t for t in targets if (ROOT / t).resolve().is_relative_to(ROOT)]  # ../shared is not in a clone
    missing = [t for t in inside if not (ROOT / t).exists()]
    assert not missing, missing
