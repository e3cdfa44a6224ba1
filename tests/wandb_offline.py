"""Read a W&B offline run back (no network, no wandb service), for tests.

An offline run writes ``<save_dir>/wandb/offline-run-*/run-<id>.wandb``: a
LevelDB-log style file (W&B's "datastore"):

* a 7-byte file header ``b":W&B" + version:u16(le) + magic:u8``;
* then 32 KiB blocks of records, each with a 7-byte header
  ``crc32c:u32, length:u16, type:u8`` (FULL=1, FIRST=2, MIDDLE=3, LAST=4);
  a record never straddles a block: fewer than 7 bytes left in a block are
  zero padding, and long payloads are split FIRST/MIDDLE.../LAST;
* each reassembled payload is a serialized ``wandb_internal_pb2.Record``.

Usage::

    run = read_offline_run(tmp_path)          # finds the newest offline run
    run.history        # list of dicts, one per logged row (json-decoded values)
    run.summary        # dict
    run.config         # dict (values json-decoded, W&B's {"value": ...} unwrapped)
    run.keys()         # every key seen in history
    run.dir            # the offline-run-* folder (media under run.dir/files/media)
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

BLOCK_SIZE = 32 * 1024
HEADER_SIZE = 7
FILE_HEADER_SIZE = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def iter_payloads(path: str | Path) -> Iterator[bytes]:
    """Yield the raw record payloads of a ``.wandb`` file (CRC not checked)."""
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B datastore file (header {data[:7]!r})")
    pos = FILE_HEADER_SIZE
    pending: bytearray | None = None
    n = len(data)
    while pos + HEADER_SIZE <= n:
        left_in_block = BLOCK_SIZE - (pos % BLOCK_SIZE)
        if left_in_block < HEADER_SIZE:  # block trailer padding
            pos += left_in_block
            continue
        _crc, length, rtype = struct.unpack("<IHB", data[pos : pos + HEADER_SIZE])
        pos += HEADER_SIZE
        if rtype == 0 and length == 0:  # zero padding / preallocated tail
            pos += BLOCK_SIZE - (pos % BLOCK_SIZE) if pos % BLOCK_SIZE else 0
            continue
        if pos + length > n:  # a record still being written: stop at the last complete one
            return
        chunk = data[pos : pos + length]
        pos += length
        if rtype == FULL:
            pending = None
            yield bytes(chunk)
        elif rtype == FIRST:
            pending = bytearray(chunk)
        elif rtype == MIDDLE:
            if pending is not None:
                pending += chunk
        elif rtype == LAST:
            if pending is not None:
                pending += chunk
                yield bytes(pending)
            pending = None
        else:
            raise ValueError(f"{path}: bad record type {rtype} at offset {pos - length - HEADER_SIZE}")


def iter_records(path: str | Path) -> Iterator[Any]:
    """Yield ``wandb_internal_pb2.Record`` messages of a ``.wandb`` file."""
    from wandb.proto import wandb_internal_pb2 as pb

    from google.protobuf.message import DecodeError

    for payload in iter_payloads(path):
        rec = pb.Record()
        try:
            rec.ParseFromString(payload)
        except DecodeError:  # torn write at the end of a file still being written
            return
        yield rec


def _decode(value_json: str) -> Any:
    try:
        return json.loads(value_json)
    except (TypeError, ValueError):
        return value_json


def _key(item: Any) -> str:
    # W&B items carry either ``key`` or a nested path ``nested_key``.
    if item.key:
        return item.key
    return "/".join(item.nested_key)


def _path(item: Any) -> list[str]:
    return [item.key] if item.key else list(item.nested_key)


def _assign(target: dict[str, Any], path: list[str], value: Any) -> None:
    """``target[p0][p1]... = value``; media values (``wandb.Image``, tables, ...)
    arrive as one item per field (``["img", "path"]``) and are rebuilt into a dict."""
    for part in path[:-1]:
        nxt = target.get(part)
        if not isinstance(nxt, dict):
            nxt = target[part] = {}
        target = nxt
    target[path[-1]] = value


@dataclass
class OfflineRun:
    dir: Path
    file: Path
    # one dict per logged row; keys are the logged keys ("cam/liftcam/insertion"),
    # media values are dicts ({"_type": "image-file", "path": "media/images/...png", ...})
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    record_types: dict[str, int] = field(default_factory=dict)
    # artifacts logged by the run (tables are artifacts too): name, type and
    # {path in artifact: local staging file} (offline runs keep staging files
    # under $WANDB_DATA_DIR/artifacts/staging until synced)
    artifacts: list[dict[str, Any]] = field(default_factory=list)

    def keys(self) -> set[str]:
        out: set[str] = set()
        for row in self.history:
            out.update(row)
        return out

    def rows_with(self, key: str) -> list[dict[str, Any]]:
        return [row for row in self.history if key in row]

    def media(self, kind: str = "images") -> list[Path]:
        return sorted((self.dir / "files" / "media" / kind).rglob("*"))

    def media_path(self, ref: dict[str, Any]) -> Path:
        """The local file a media history value (image, table) points at."""
        return self.dir / "files" / ref["path"]

    def load_media_json(self, ref: dict[str, Any]) -> Any:
        """Load the JSON file a table history value points at: ``{"columns": [...], "data": [[...]]}``.

        In offline runs this copy holds media cells only as their type name
        (``"Image"``); :meth:`table` returns the full artifact copy when it exists.
        """
        return json.loads(self.media_path(ref).read_text())

    def table(self, key: str, row: int = -1) -> dict[str, Any]:
        """The table logged under ``key`` (``row``-th history row holding it).

        Prefers the run-table artifact's JSON (image cells are dicts with a
        ``path`` inside the artifact, resolvable with :meth:`artifact_file`),
        falling back to ``files/media/table``.
        """
        ref = self.rows_with(key)[row][key]
        latest = ref.get("_latest_artifact_path") or ref.get("artifact_path") or ""
        # "wandb-client-artifact://<id>:latest/<path in artifact>" (the path may contain "/")
        inner = latest.split("://", 1)[-1].split("/", 1)[-1]
        for art in reversed(self.artifacts):
            local = art["entries"].get(inner)
            if local and Path(local).exists():
                out = json.loads(Path(local).read_text())
                out["_artifact"] = art
                return out
        return self.load_media_json(ref)

    @staticmethod
    def artifact_file(table: dict[str, Any], path: str) -> Path:
        """Local staging file for ``path`` (e.g. an image cell's ``path``) of an artifact table."""
        return Path(table["_artifact"]["entries"][path])


def find_run_files(save_dir: str | Path) -> list[Path]:
    """All ``run-*.wandb`` files under ``save_dir`` (oldest first)."""
    files = [p for p in Path(save_dir).rglob("run-*.wandb") if p.is_file()]
    return sorted(files, key=lambda p: p.stat().st_mtime)


def read_run_file(path: str | Path) -> OfflineRun:
    path = Path(path)
    run = OfflineRun(dir=path.parent, file=path)
    for rec in iter_records(path):
        kind = rec.WhichOneof("record_type") or "?"
        run.record_types[kind] = run.record_types.get(kind, 0) + 1
        if kind == "history":
            row: dict[str, Any] = {}
            for it in rec.history.item:
                _assign(row, _path(it), _decode(it.value_json))
            run.history.append(row)
        elif kind == "summary":
            for it in rec.summary.update:
                _assign(run.summary, _path(it), _decode(it.value_json))
            for it in rec.summary.remove:
                run.summary.pop(_key(it), None)
        elif kind == "artifact":
            art = rec.artifact
            run.artifacts.append(
                {
                    "name": art.name,
                    "type": art.type,
                    "entries": {e.path: e.local_path for e in art.manifest.contents},
                }
            )
        elif kind == "config":
            for it in rec.config.update:
                val = _decode(it.value_json)
                if isinstance(val, dict) and set(val) == {"value"}:
                    val = val["value"]
                run.config[_key(it)] = val
            for it in rec.config.remove:
                run.config.pop(_key(it), None)
    return run


def read_offline_run(save_dir: str | Path, index: int = -1, wait: float = 30.0) -> OfflineRun:
    """Read the offline run under ``save_dir`` (``index``: -1 = newest).

    ``wandb.finish()`` can return before W&B's service process has written the
    last records, so this polls (up to ``wait`` seconds) until the run's
    ``exit`` record is in the file; after that it returns what is there.
    """
    import time

    deadline = time.monotonic() + wait
    while True:
        files = find_run_files(save_dir)
        if files:
            run = read_run_file(files[index])
            if "exit" in run.record_types or time.monotonic() > deadline:
                return run
        elif time.monotonic() > deadline:
            raise FileNotFoundError(f"no run-*.wandb file under {save_dir}")
        time.sleep(0.1)


__all__ = ["OfflineRun", "find_run_files", "iter_payloads", "iter_records", "read_offline_run", "read_run_file"]
