"""The runnable example of an integration's docs page, as the page shows it."""

from __future__ import annotations

import re
from pathlib import Path

PAGES = Path(__file__).resolve().parents[2] / "docs" / "pages"
MARK = "# Runs as is"


def example(page: str) -> str:
    """The page's one ```python block that starts with ``# Runs as is``."""
    blocks = [b for b in re.findall(r"```python\n(.*?)```", (PAGES / page).read_text(), flags=re.S)
              if b.startswith(MARK)]
    assert len(blocks) == 1, f"{page}: {len(blocks)} runnable examples"
    return blocks[0]


def run(page: str, cwd: Path, name: str = "__main__") -> dict:
    """Execute the example with ``cwd`` as the working folder, in this process; its
    namespace back. (Functions defined there are pickled by value, as a script's are.)"""
    import os

    old = os.getcwd()
    os.chdir(cwd)
    try:
        namespace = {"__name__": name}
        exec(compile(example(page), str(PAGES / page), "exec"), namespace)
        return namespace
    finally:
        os.chdir(old)
