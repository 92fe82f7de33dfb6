"""Which photos are the same photo: byte-identical files (SHA-256), and re-encoded or resized
copies (a 16x16 grey thumbnail within a few grey levels of another's). Reading every photo
once here also finds the unreadable ones before anything is trained.

Fingerprints are cached by (path, size, mtime), so a resumed or repeated run reads only new
or changed files.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from effnet_lite.errors import ImageError
from effnet_lite.preprocess import PreprocessConfig, load_image
from effnet_lite.progress import Progress

THUMB = 16
# RMS difference of two thumbnails (grey levels of 255) at or under which two photos are one.
# Measured (2026-12-03): JPEG re-encodes (quality 60-95), PNG copies and half-size resizes of
# 40 dev photos were at most 2.8 from their originals; the closest two different photos were
# 10.9 apart (hand signs on one background), 12.2 (product shots), 25 (the dev photos)
NEAR = 4.0
CACHE_NAME = "fingerprints.jsonl"


@dataclass(frozen=True)
class Fingerprint:
    digest: str            # SHA-256 of the file's bytes
    thumb: bytes           # THUMB x THUMB grey pixels


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def fingerprint(path: Path, config: PreprocessConfig) -> Fingerprint:
    """ImageError when the photo cannot be read (as the runtime would refuse it)."""
    try:
        digest = _sha256(path)
    except OSError as e:
        raise ImageError(f"{path}: cannot read ({e.strerror or e})") from None
    img = load_image(path, config, draft=True)          # the runtime's checks and decoding
    grey = img.convert("L").resize((THUMB, THUMB), Image.Resampling.BOX)
    return Fingerprint(digest, grey.tobytes())


def fingerprints(paths: list[Path], config: PreprocessConfig, cache_dir: Path | None, desc: str,
                 new: list) -> tuple[dict[Path, Fingerprint], list[tuple[Path, str]]]:
    """(fingerprint of each readable photo, [(unreadable photo, why)]); what was not in the
    cache is appended to `new` (for `remember`, once the cache's folder may be written)."""
    cached = _read_cache(cache_dir)
    found, bad = {}, []
    with Progress(len(paths), desc) as bar:
        for p in paths:
            try:
                st = p.stat()
                key = f"{p}\0{st.st_size}\0{st.st_mtime_ns}"
            except OSError as e:
                bad.append((p, e.strerror or str(e)))
                bar.update()
                continue
            if key in cached:
                found[p] = cached[key]
            else:
                try:
                    found[p] = fingerprint(p, config)
                    new.append((key, found[p]))
                except ImageError as e:
                    bad.append((p, str(e)))
            bar.update()
    return found, bad


def remember(cache_dir: Path, new: list) -> None:
    if new:
        with open(cache_dir / CACHE_NAME, "a", encoding="utf-8") as f:
            for key, fp in new:
                f.write(json.dumps({"key": key, "sha256": fp.digest, "thumb": fp.thumb.hex()}) + "\n")


def _read_cache(cache_dir: Path | None) -> dict[str, Fingerprint]:
    out = {}
    if cache_dir is None or not (cache_dir / CACHE_NAME).is_file():
        return out
    with open(cache_dir / CACHE_NAME, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:                # a line cut by a kill, or damaged: that photo is read again
                row = json.loads(line)
                thumb = bytes.fromhex(row["thumb"])
                if len(thumb) == THUMB * THUMB and len(row["sha256"]) == 64:
                    out[row["key"]] = Fingerprint(row["sha256"], thumb)
            except (ValueError, KeyError, TypeError):
                continue
    return out


def groups(prints: list[Fingerprint], near: float = NEAR) -> list[int]:
    """A group number per photo: photos are in one group when they are byte-identical or their
    thumbnails are within `near` RMS grey levels (transitively)."""
    n = len(prints)
    parent = list(range(n))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def join(i, j):
        a, b = root(i), root(j)
        if a != b:
            parent[max(a, b)] = min(a, b)
    first = {}
    for i, fp in enumerate(prints):
        if fp.digest in first:
            join(first[fp.digest], i)
        else:
            first[fp.digest] = i
    if n > 1:
        t = np.frombuffer(b"".join(fp.thumb for fp in prints), np.uint8).reshape(n, -1).astype(np.float32)
        sq = (t * t).sum(1)
        limit = near * near * t.shape[1]
        for s in range(0, n, 512):             # squared distances by blocks: memory stays bounded
            d = sq[s:s + 512, None] + sq[None, :] - 2 * t[s:s + 512] @ t.T
            for i, j in zip(*np.nonzero(d <= limit)):
                if s + i < j:
                    join(s + i, int(j))
    return [root(i) for i in range(n)]
