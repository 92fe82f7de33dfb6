"""effnet-label --engine ray: the collection through Ray Data (the `cluster` extra).

read (the list of paths) → decode + preprocess as Ray tasks → a pool of actors, each holding
a Classifier → rows back to the driver, which writes the shards (so resuming works the same
as with the local engine). The model file is shipped to the workers through Ray's object
store, so they need no shared filesystem for it; the images must be readable from every
worker: a shared filesystem path, or a location pyarrow reads (s3://, gs://, hdfs://...).
"""
from __future__ import annotations

import hashlib
import logging
import os
import socket
import stat
import sys
import tempfile
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np

from effnet_lite import Classifier, ClassifierOptions, ImageError
from effnet_lite.preprocess import preprocess

from effnet_lite.quiet import Captured

BATCH = 16


def ray_paths(source: str) -> list[str]:
    """A local folder or list file, or every file under a pyarrow-readable location."""
    from .label import list_source
    if Path(source).exists():
        return list_source(Path(source))
    import pyarrow.fs as pafs
    from effnet_lite.dataset import IMAGE_SUFFIXES
    fs, root = pafs.FileSystem.from_uri(source)
    scheme = source.split("://", 1)[0]
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    return sorted(f"{scheme}://{i.path}" for i in infos
                  if i.type == pafs.FileType.File and Path(i.path).suffix.lower() in IMAGE_SUFFIXES)


def _read(path: str):
    """A local path as it is (Pillow opens it); a remote location's bytes through pyarrow."""
    if "://" not in path:
        return path
    import pyarrow.fs as pafs
    fs, inner = pafs.FileSystem.from_uri(path)
    with fs.open_input_file(inner) as f:
        return f.read()


def _preprocess(batch: dict, config, exact: bool) -> dict:
    """Ray task: decode and crop; a bad image carries its error and an empty crop."""
    crops, errors = [], []
    for path in batch["path"]:
        try:
            crops.append(preprocess(_read(path), config, exact))
            errors.append("")
        except (ImageError, OSError) as e:
            crops.append(np.zeros((config.size, config.size, 3), np.uint8))
            errors.append(str(e).removeprefix(f"{path}: ").removeprefix("<bytes>: "))
    return {"path": list(batch["path"]), "crop": np.stack(crops), "error": errors}


def model_copy(model: bytes, suffix: str) -> Path:
    """The node's one copy of the model, named by its digest in a private folder of the temp
    folder: every actor of every job with that model opens the same file, so a long job
    whose actors restart, or many jobs, leave one file per model, not one per actor. A file
    already there is used only if its bytes are the model's."""
    digest = hashlib.sha256(model).hexdigest()
    folder = Path(tempfile.gettempdir()) / f"effnet-models-{os.getuid()}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        info = folder.lstat()
        ours = stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid()
    except OSError:             # e.g. a file of that name
        ours = False
    if not ours:                # another user's name in a shared temp folder: not trusted
        folder = Path(tempfile.mkdtemp(prefix="effnet-models-"))
    path = folder / f"{digest}{suffix}"
    try:
        if hashlib.sha256(path.read_bytes()).hexdigest() == digest:
            return path
    except OSError:
        pass
    fd, tmp = tempfile.mkstemp(prefix=".", suffix=suffix, dir=folder)
    with os.fdopen(fd, "wb") as f:
        f.write(model)
    os.replace(tmp, path)       # atomic: an actor beside this one never opens half a file
    return path


class _Scorer:
    """Ray actor: one Classifier, opened from the model's bytes. Rows carry the top-k
    categories, or with `probabilities` every class's probability (for effnet-eval)."""

    def __init__(self, model_ref, suffix: str, options: dict, probabilities: bool = False):
        import ray
        model_bytes = ray.get(model_ref[0])     # wrapped in a list: Ray passes a bare ref as is
        self.clf = Classifier.from_file(model_copy(model_bytes, suffix), ClassifierOptions(**options))
        self.probabilities = probabilities
        self.node = ray.get_runtime_context().get_node_id()     # where the work ran, for the report

    def __call__(self, batch: dict) -> dict:
        out = {"path": [], "indices": [], "labels": [], "scores": [], "error": [], "node": []}
        if self.probabilities:
            out = {"path": [], "probs": [], "error": [], "node": []}
        for path, crop, error in zip(batch["path"], batch["crop"], batch["error"]):
            probs = None if error else self.clf.scores(self.clf.io.to_input(crop))
            out["path"].append(path)
            out["error"].append(error or None)
            out["node"].append(self.node)
            if self.probabilities:
                out["probs"].append(probs if probs is not None else np.zeros(len(self.clf.labels), np.float32))
                continue
            cats = [] if probs is None else self.clf.top(probs)
            out["indices"].append([c.index for c in cats])
            out["labels"].append([c.label for c in cats])
            out["scores"].append([c.score for c in cats])
        return out


def local_address_towards(host: str, port: int) -> str:
    """The address this machine reaches `host` from (no packet is sent): the node address a
    driver must present. Ray would otherwise take the one towards the internet, which is not
    a node's address on a cluster of loopback or private-network nodes."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect((host, port))
        return probe.getsockname()[0]


def connect(address: str | None) -> None:
    """ray.init() here, or on the cluster at `address` (host:port of its head, or ray://);
    a refused token or an unreachable head is one LabelError line."""
    from .label import LabelError
    # Ray's own logging stays off our stderr (its C++ core reads this before starting)
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "CRITICAL")
    import ray
    from ray.exceptions import AuthenticationError
    where = {}          # a cluster's head: present this machine's address towards it
    if address and "://" not in address and address != "auto":
        host, _, port = address.rpartition(":")
        try:
            where["_node_ip_address"] = local_address_towards(host.strip("[]"), int(port))
            # (Ray would wait 40 s per attempt, 20 attempts, for a head that is not there)
            socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
        except (OSError, ValueError) as e:
            raise LabelError(f"cannot reach a Ray head at {address} "
                             f"({getattr(e, 'strerror', None) or e}): give its host:port") from None
    try:
        with Captured():      # the C++ core announces its log level on stderr
            if where:
                _check_token(address)
            ray.init(address=address, ignore_reinit_error=True, include_dashboard=False,
                     log_to_driver=False, logging_level=logging.ERROR, **where)
    except (AuthenticationError, ConnectionError, RuntimeError, ValueError) as e:
        if _refused_token(e):
            mode = os.environ.get("RAY_AUTH_MODE") or "unset"
            raise LabelError(f"the Ray cluster at {address} refused this driver's token (RAY_AUTH_MODE is {mode}): "
                             "set RAY_AUTH_MODE=token and give the head's token in RAY_AUTH_TOKEN_PATH, "
                             "RAY_AUTH_TOKEN or ~/.ray/auth_token") from None
        raise LabelError(f"cannot use the Ray cluster at {address}: {' '.join(str(e).split())[:300]}") from None


def _check_token(address: str) -> None:
    """One call to the head's GCS: a wrong or missing token fails at once, where ray.init
    would retry for 20 s and then report only that it could not connect."""
    try:
        from ray._raylet import GcsClient        # (what ray.init itself connects with)
    except ImportError:
        return
    try:
        GcsClient(address=address)
    except Exception as e:                        # anything else: ray.init retries and says
        if _refused_token(e):
            raise


def _refused_token(error: BaseException | None) -> bool:
    from ray.exceptions import AuthenticationError
    while error is not None:
        if isinstance(error, AuthenticationError) or "InvalidAuthToken" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def _rows(model: str, options: ClassifierOptions, paths: list[str], actors: int, address: str | None,
          probabilities: bool, program: str):
    """Ray's output rows, in input order; at the end, one line on stderr of where they ran."""
    import ray
    connect(address)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    with Captured(), Classifier.from_file(model, options) as clf:     # (LiteRT's banner)
        config = clf.io.config
    model_ref = ray.put(Path(model).read_bytes())
    # a block per batch, at least one per actor (up to 200, Ray Data's default): a small job
    # still reaches every actor; no more actors than blocks
    blocks = max(1, min(200, len(paths), max(actors, -(-len(paths) // BATCH))))
    actors = min(actors, blocks)
    ds = ray.data.from_items([{"path": p} for p in paths], override_num_blocks=blocks)
    ds = ds.map_batches(_preprocess, batch_size=BATCH, fn_kwargs={"config": config, "exact": options.exact})
    ds = ds.map_batches(_Scorer, batch_size=BATCH, concurrency=actors,
                        fn_constructor_args=([model_ref], Path(model).suffix, asdict(options), probabilities))
    nodes: Counter = Counter()
    try:
        for row in ds.iter_rows():
            nodes[row["node"]] += 1
            yield row
    except ray.exceptions.RayError as e:     # a worker's failure, as one line
        from .label import LabelError
        raise LabelError(f"Ray: {' '.join(str(e).split())[:300]}") from None
    print(f"{program}: Ray scored {sum(nodes.values())} images on {len(nodes)} node(s): " +
          ", ".join(f"{node[:12]} {n}" for node, n in nodes.most_common()), file=sys.stderr)


def label_ray(model: str, options: ClassifierOptions, paths: list[str], actors: int, address: str | None):
    """effnet-label's rows, in input order, labelled by Ray."""
    if not paths:
        return
    for row in _rows(model, options, paths, actors, address, probabilities=False, program="effnet-label"):
        yield {"path": row["path"], "indices": list(map(int, row["indices"])), "labels": list(row["labels"]),
               "scores": list(map(float, row["scores"])), "error": row["error"]}


def probabilities_ray(model: str, options: ClassifierOptions, paths: list[str], actors: int,
                      address: str | None):
    """effnet-eval's outcomes, in input order: each image's probabilities, or its ImageError."""
    for row in _rows(model, options, [str(p) for p in paths], actors, address, probabilities=True,
                     program="effnet-eval"):
        yield ImageError(f"{row['path']}: {row['error']}") if row["error"] else np.asarray(row["probs"])
