"""Every table on the benchmark pages names the command that reproduces it and its date.

A table is a ``|`` row followed by a ``|---|`` separator row (outside fenced code). It
passes when the line above its first row (blank lines skipped) is the marker
``<!-- not-measured -->`` (option tables, lists of pages), or when the text between the
end of the previous table (or the previous heading, whichever is later) and its first
row holds a date ``20YY-MM-DD`` and a command in backticks (``python ...``,
``learnsolve-...`` or ``pytest ...``).
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "docs" / "benchmarks"
MARKER = "<!-- not-measured -->"
DATE = re.compile(r"\b20\d\d-\d\d-\d\d\b")
CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.DOTALL)  # paired left to right: the text between two spans is not one
COMMAND = re.compile(r"(?:^|\s)(?:python |learnsolve-|pytest)")
SEPARATOR = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")
HEADING = re.compile(r"^#{1,6}\s")
FENCE = re.compile(r"^\s*(```|~~~)")


def _is_row(line: str) -> bool:
    return line.lstrip().startswith("|")


def tables(lines: list[str]) -> list[tuple[int, int]]:
    """(first row, last row) indices of each table, fenced code skipped."""
    found = []
    in_fence = False
    i = 0
    while i < len(lines):
        if FENCE.match(lines[i]):
            in_fence = not in_fence
            i += 1
            continue
        if (
            not in_fence
            and _is_row(lines[i])
            and i + 1 < len(lines)
            and "-" in lines[i + 1]
            and SEPARATOR.match(lines[i + 1])
        ):
            end = i + 1
            while end + 1 < len(lines) and _is_row(lines[end + 1]):
                end += 1
            found.append((i, end))
            i = end + 1
            continue
        i += 1
    return found


def offending(text: str) -> list[int]:
    """1-based first-row line numbers of the tables that name no date and command."""
    lines = text.splitlines()
    bad = []
    previous_end = -1
    for start, end in tables(lines):
        above = start - 1
        while above >= 0 and not lines[above].strip():
            above -= 1
        marked = above >= 0 and lines[above].strip() == MARKER
        lo = previous_end + 1
        for j in range(start - 1, previous_end, -1):
            if HEADING.match(lines[j]):
                lo = j
                break
        context = "\n".join(lines[lo:start])
        named = any(COMMAND.search(span.group(2).strip()) for span in CODE_SPAN.finditer(context))
        if not marked and not (DATE.search(context) and named):
            bad.append(start + 1)
        previous_end = end
    return bad


def test_checker_on_examples():
    good = "# T\n\nMeasured 2026-01-02 with `python scripts/x.py`.\n\n| a |\n|---|\n| 1 |\n"
    assert offending(good) == []
    marked = "# T\n\n<!-- not-measured -->\n| key | meaning |\n|---|---|\n| a | b |\n"
    assert offending(marked) == []
    # the date and command of an earlier section do not cover a table under a later heading
    split = good + "\n## Next\n\n| b |\n|:---:|\n| 2 |\n"
    assert offending(split) == [11]
    # a table right after another needs its own line
    twice = good + "\nMore.\n\n| c |\n|---|\n| 3 |\n"
    assert offending(twice) == [11]
    # rows inside fenced code are not tables; a date without a command is not enough
    # a command word between two code spans is not a command in backticks
    between = "# T\n\nOn 2026-01-02 `a` then python x `b`.\n\n| e |\n|---|\n"
    assert offending(between) == [5]
    # inline code may wrap over lines
    wrapped = "# T\n\nOn 2026-01-02 with `python scripts/x.py\n--flag`.\n\n| e |\n|---|\n"
    assert offending(wrapped) == []
    fenced = "# T\n\n```\n| a |\n|---|\n```\n\nOn 2026-01-02.\n\n| d |\n|---|\n"
    assert offending(fenced) == [10]


def test_every_benchmark_table_names_command_and_date():
    pages = sorted(BENCH.rglob("*.md"))
    assert pages, BENCH
    problems = []
    count = 0
    for page in pages:
        text = page.read_text(encoding="utf-8")
        count += len(tables(text.splitlines()))
        problems += [f"{page.relative_to(BENCH)}:{n}" for n in offending(text)]
    assert count > 0
    assert not problems, "tables without a date and command (or <!-- not-measured -->): " + ", ".join(problems)
