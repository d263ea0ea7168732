"""What a W&B offline run wrote, read back from its `run-ID.wandb` file: the file is W&B's
LevelDB-style log of `Record` protobufs (wandb.proto.wandb_internal_pb2), in blocks of 32 KiB,
each record chunked with a 7-byte header (checksum, length, FULL/FIRST/MIDDLE/LAST)."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, Dict, Iterator, List

from wandb.proto.wandb_internal_pb2 import Record

BLOCK, HEADER = 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> Iterator[Record]:
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    index, pending = HEADER, b""
    while index + HEADER <= len(data):
        if BLOCK - index % BLOCK < HEADER:  # the rest of a block too small for a header is padding
            index += BLOCK - index % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[index:index + HEADER])
        chunk = data[index + HEADER:index + HEADER + length]
        index += HEADER + length
        if kind == FULL:
            pending = chunk
        elif kind in (FIRST, MIDDLE):
            pending = (b"" if kind == FIRST else pending) + chunk
            continue
        elif kind == LAST:
            pending += chunk
        else:
            break
        record = Record()
        record.ParseFromString(pending)
        yield record


def _items(items) -> Dict[str, Any]:
    return {item.key or ".".join(item.nested_key): json.loads(item.value_json) for item in items}


def offline_run(wandb_dir: Path, run_id: str) -> Dict[str, Any]:
    """Every offline process of one run id (a resumed run writes a new folder), in order: its history
    rows, config, summary and logged artifacts (name, type, file paths)."""
    found: Dict[str, Any] = {"history": [], "config": {}, "summary": {}, "artifacts": []}
    for path in sorted(Path(wandb_dir).glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb")):
        for record in records(path):
            kind = record.WhichOneof("record_type")
            if kind == "history":
                found["history"].append(_items(record.history.item))
            elif kind == "run":
                found["config"].update(_items(record.run.config.update))
            elif kind == "config":
                found["config"].update(_items(record.config.update))
            elif kind == "summary":
                found["summary"].update(_items(record.summary.update))
            elif kind == "artifact":
                found["artifacts"].append({"name": record.artifact.name, "type": record.artifact.type,
                                           "files": [entry.path for entry in record.artifact.manifest.contents]})
    return found


def runs(wandb_dir: Path) -> List[str]:
    return sorted({path.name.rsplit("-", 1)[1] for path in Path(wandb_dir).glob("wandb/offline-run-*")})
