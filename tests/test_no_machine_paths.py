"""The project cites papers and reference repositories, never a path of a development machine (issue 19, section 2)."""

from __future__ import annotations

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PATTERN = re.compile(r"shared/(specs|design)|/work/(main|wt|shared)\b|\.\./shared\b")
SUFFIXES = {".py", ".yaml", ".yml", ".md", ".txt", ".toml", ".cfg", ".sh", ".ini"}
SKIP_DIRS = {"logs", "outputs", "runs", "build", "data", "multirun"}


def test_no_file_points_to_a_machine_path():
    hits = []
    for folder, dirs, files in os.walk(ROOT):
        top = Path(folder) == ROOT  # run outputs and data live at the top only (cl/data is code)
        dirs[:] = [d for d in dirs if not (d.startswith(".") or d.endswith(".egg-info") or (top and d in SKIP_DIRS))]
        for name in files:
            path = Path(folder) / name
            if path.suffix not in SUFFIXES or path == Path(__file__).resolve():
                continue
            for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                if PATTERN.search(line):
                    hits.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not hits, "cite the paper / reference repository instead of:\n" + "\n".join(hits)
