"""The README's Python examples run as written (keeps the README true)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert blocks, "README has no python example"
    for code in blocks:
        exec(compile(code, str(README), "exec"), {})  # noqa: S102 (our own README)
    out = capsys.readouterr().out
    assert out.count("cg: 1/1 systems converged") == 2  # forward and adjoint summaries
