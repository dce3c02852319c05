"""The results files of a benchmark: rows of one fixed schema appended to `<dir>/<stem>.csv` and `.jsonl`.

Reading them back is `wdl.io.read_jsonl` (the repository's one JSONL reader).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from wdl.io import atomic_write_text


def _csv_cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(round(v, 6)) if abs(v) < 1e15 else repr(v)
    return str(v)


class ResultsWriter:
    """Appends rows of one fixed schema to `<dir>/<stem>.csv` and `<dir>/<stem>.jsonl`.

    Each append rewrites each file through a temporary file and a rename, so a reader (or a run killed
    mid-write) sees the previous complete file or the new one. An existing file whose header differs from
    the schema is an error (start a new file instead of mixing schemas).
    """

    def __init__(self, out_dir: str | os.PathLike, columns: Sequence[str], stem: str = "results",
                 with_csv: bool = True):
        if len(set(columns)) != len(columns):
            raise ValueError(f"duplicate column names in {columns}")
        self.columns = tuple(columns)
        self.dir = Path(out_dir)
        self.csv_path = self.dir / f"{stem}.csv" if with_csv else None
        self.jsonl_path = self.dir / f"{stem}.jsonl"
        if self.csv_path is not None and self.csv_path.exists():
            header = self.csv_path.read_text().splitlines()[:1]
            if header and next(csv.reader(header)) != list(self.columns):
                raise ValueError(f"{self.csv_path} was written with another schema; pass a new output directory")

    def append(self, rows: Iterable[dict]) -> None:
        rows = list(rows)
        for r in rows:
            unknown = set(r) - set(self.columns)
            if unknown:
                raise ValueError(f"row has columns outside the schema: {sorted(unknown)}")
        full = [{c: r.get(c) for c in self.columns} for r in rows]
        old_jsonl = self.jsonl_path.read_text() if self.jsonl_path.exists() else ""
        atomic_write_text(self.jsonl_path, old_jsonl + "".join(json.dumps(r) + "\n" for r in full))
        if self.csv_path is None:
            return
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        if not self.csv_path.exists():
            w.writerow(self.columns)
        for r in full:
            w.writerow([_csv_cell(r[c]) for c in self.columns])
        old_csv = self.csv_path.read_text() if self.csv_path.exists() else ""
        atomic_write_text(self.csv_path, old_csv + buf.getvalue())

