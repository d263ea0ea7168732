"""A benchmark's table into its page of the docs (docs/benchmarks/PAGE.md), with the date, the
machine and the command that measured it, so a figure on the site always says where it came from.

A page holds its latest table between `<!-- bench:latest -->` and `<!-- /bench:latest -->`; a script
calls `write_table("store-sync", table)` (its `--write-docs` flag) and only that block is
replaced, the page's prose kept. A page without the block gets it at its end.
"""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Optional, Sequence

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"
START, END = "<!-- bench:latest -->", "<!-- /bench:latest -->"


def machine() -> str:
    """The CPU, its cores and the GPU if torch sees one: what a reader needs to compare figures."""
    cpu = platform.processor() or platform.machine()
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    except ImportError:
        gpu = "torch not installed"
    return f"{cpu}, {os.cpu_count()} CPU cores, {gpu}, {platform.system()}"


def write_table(page: str, table: str, *, command: Optional[Sequence[str]] = None,
                docs: Path = DOCS, today: Optional[datetime.date] = None) -> Path:
    """Replace `page`'s latest-table block with `table`, headed by the date, the machine and the command."""
    path = docs / f"{page}.md"
    text = path.read_text(encoding="utf-8")
    argv = command if command is not None else ["python", *sys.argv]
    block = (f"{START}\nMeasured {(today or datetime.date.today()).isoformat()} on {machine()}, with "
             f"`{shlex.join(argv)}`:\n\n{table.strip()}\n{END}")
    if START in text and END in text:
        text = text[:text.index(START)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n## Latest run\n\n" + block + "\n"
    path.write_text(text, encoding="utf-8")
    return path
