"""effnet-label: label a large photo collection, resumably, on one machine or a Ray cluster.

Results go to OUT as shards of JSON Lines (or Parquet with --format parquet), one row per
image: path, top-k indices, labels and scores, error (null when classified). Each shard is
written whole (temporary name, then renamed) every --shard-size images, so a crashed or
interrupted job loses at most one shard; a rerun skips every image already in OUT.

Engines: `local` (this machine, --workers processes; the default) and `ray` (Ray Data:
decoding and preprocessing as tasks, a pool of actors each holding a Classifier;
`ray.init()` locally, or the cluster at --ray-address / RAY_ADDRESS; the `cluster` extra).
Exit status: 0 all labelled, 1 some images failed (recorded in OUT), 2 usage or model error.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

from effnet_lite import BackendUnavailableError, Classifier, ClassifierOptions, ModelError, __version__
from effnet_lite.dataset import image_files
from effnet_lite.errors import needs_extra
from effnet_lite.progress import Progress

from effnet_lite.quiet import Captured

EXAMPLES = """\
examples:
  effnet-label photos/ --model lite0_int8.tflite --output labels/
  effnet-label list.txt --model lite0_int8.tflite --output labels/ --workers 4 --format parquet
  effnet-label /data/archive --model lite0_int8.tflite --output labels/ --engine ray \\
      --ray-address ray://head:10001
Run it again with the same --output to continue after a crash: finished images are skipped.
OUT records what made its rows (_effnet-label.json): a rerun with another model, other
labels, --top-k or --format is refused unless --restart says to start over.
"""


class LabelError(RuntimeError):
    pass


def list_source(source: Path) -> list[str]:
    """The images of a folder (recursive, sorted) or of a list file (one path per line)."""
    if source.is_dir():
        return [str(p) for p in image_files(source)]
    if source.is_file():
        base = source.parent
        lines = [line.strip() for line in source.read_text(encoding="utf-8").splitlines()]
        return [str(base / line) if not os.path.isabs(line) else line for line in lines if line and not line.startswith("#")]
    raise LabelError(f"{source}: no such folder or list file")


class ShardWriter:
    """Rows into OUT/part-NNNNN.{jsonl,parquet}, one whole file per shard."""

    def __init__(self, out: Path, fmt: str, shard_size: int):
        self.out, self.fmt, self.shard_size, self.rows = out, fmt, shard_size, []
        out.mkdir(parents=True, exist_ok=True)
        self.next = 1 + max((int(p.stem.split("-")[1]) for p in out.glob("part-*.*")
                             if p.stem.split("-")[1].isdigit()), default=-1)

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        path = self.out / f"part-{self.next:05d}.{self.fmt}"
        tmp = self.out / f".{path.name}.tmp"
        if self.fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq
            pq.write_table(pa.Table.from_pylist(self.rows), tmp)
        else:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in self.rows), encoding="utf-8")
        os.replace(tmp, path)
        self.next, self.rows = self.next + 1, []


RUN_FILE = "_effnet-label.json"      # what made OUT's shards ("_": Parquet readers skip it)


def run_record(clf: Classifier, model: str, args) -> dict:
    """What decides the rows: the model's content and labels, top-k and the shard format."""
    digest = clf.backend.digest
    if digest is None:       # a file without our digest: hash it whole
        with open(model, "rb") as f:
            digest = "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()
    labels = hashlib.sha256("\n".join(clf.labels).encode()).hexdigest()
    return {"model": Path(model).name, "model_digest": digest, "labels_sha256": labels,
            "top_k": args.top_k, "format": args.format}


def check_resume(out: Path, record: dict, restart: bool) -> None:
    """Refuse to add rows to shards another model or other settings made (unless --restart,
    which removes them); then record what makes this run's rows."""
    shards = sorted(out.glob("part-*.*")) + sorted(out.glob(".part-*.tmp"))
    path = out / RUN_FILE
    if shards and restart:
        for shard in shards:
            shard.unlink()
    elif shards:
        try:
            before = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise LabelError(f"{out} holds result shards but no {RUN_FILE} saying what made them; "
                             "give --restart to replace them, or another --output") from None
        except (ValueError, UnicodeDecodeError):
            raise LabelError(f"{path} is not valid JSON; give --restart to start over") from None
        changed = [k for k in record if not isinstance(before, dict) or before.get(k) != record[k]]
        if changed:
            was = before.get(changed[0]) if isinstance(before, dict) else None
            raise LabelError(f"{out} was labelled with other settings ({changed[0]}: {str(was)[:80]!r}, now "
                             f"{str(record[changed[0]])[:80]!r}); give --restart to replace its results, "
                             "or another --output")
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{RUN_FILE}.tmp"
    tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def done_paths(out: Path) -> set[str]:
    """Paths already labelled in OUT's finished shards."""
    done = set()
    for shard in sorted(out.glob("part-*.jsonl")):
        for line in shard.read_text(encoding="utf-8").splitlines():
            done.add(json.loads(line)["path"])
    parquet = sorted(out.glob("part-*.parquet"))
    if parquet:
        import pyarrow.parquet as pq
        for shard in parquet:
            done.update(pq.read_table(shard, columns=["path"]).column("path").to_pylist())
    return done


def row_of(path: str, kind: str, payload) -> dict:
    if kind == "ok":
        cats = payload.categories
        return {"path": path, "indices": [c.index for c in cats], "labels": [c.label for c in cats],
                "scores": [c.score for c in cats], "error": None}
    message = payload.removeprefix(f"{path}: ")
    return {"path": path, "indices": [], "labels": [], "scores": [], "error": message}


def label_local(model: str, options: ClassifierOptions, paths: list[str], workers: int,
                digest: str | None = None):
    """A row per image, in order: this machine, `workers` processes (which refuse a file
    whose digest is no longer `digest`)."""
    from .parallel import parallel, sequential
    if workers > 1:
        outcomes = parallel(model, options, paths, workers, digest=digest)
    else:
        quiet = Captured()
        with quiet:
            clf = Classifier.from_file(model, options)
        outcomes = sequential(clf, quiet, paths)
    for path, (kind, payload, _) in zip(paths, outcomes):
        if kind == "model":
            raise ModelError(payload)
        yield row_of(path, kind, payload)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="effnet-label", description=__doc__, epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="a folder of images, a list file of paths, or (ray) a location Ray Data reads")
    p.add_argument("-m", "--model", required=True, help=".tflite or .onnx model file")
    p.add_argument("-o", "--output", type=Path, required=True, help="folder for the result shards")
    p.add_argument("--engine", choices=("local", "ray"), default="local")
    p.add_argument("--workers", type=int, default=max(1, min(os.cpu_count() or 1, 4)),
                   help="processes (local) or Classifier actors (ray); default: cores, at most 4")
    p.add_argument("--threads", type=int, default=1, help="inference threads per worker (1)")
    p.add_argument("-k", "--top-k", type=int, default=5)
    p.add_argument("--format", choices=("jsonl", "parquet"), default="jsonl")
    p.add_argument("--shard-size", type=int, default=1000, help="images per result shard (1000)")
    p.add_argument("--restart", action="store_true",
                   help="remove the results already in --output and label everything again (needed when "
                        "the model, its labels, --top-k or --format changed)")
    p.add_argument("--ray-address", default=os.environ.get("RAY_ADDRESS"),
                   help="Ray cluster to use (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--version", action="version", version=f"effnet-label {__version__}")
    args = p.parse_args(argv)
    for name in ("workers", "threads", "top_k", "shard_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    for wanted, module, what in (("ray", "ray", "--engine ray"), ("parquet", "pyarrow", "--format parquet")):
        if wanted in (args.engine, args.format) and importlib.util.find_spec(module) is None:
            p.exit(2, needs_extra(p.prog, what, "cluster") + "\n")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    options = ClassifierOptions(max_results=args.top_k, num_threads=args.threads)
    start = time.perf_counter()
    try:
        with Captured():
            with Classifier.from_file(args.model, options) as clf:     # a bad model: an error now
                record, digest = run_record(clf, args.model, args), clf.backend.digest
        if args.output.exists() and not args.output.is_dir():
            raise LabelError(f"{args.output}: exists and is not a folder")
        check_resume(args.output, record, args.restart)
        done = done_paths(args.output)
        if args.engine == "ray":
            from .label_ray import label_ray, ray_paths
            paths = ray_paths(args.source)
        else:
            paths = list_source(Path(args.source))
        todo = [p for p in paths if p not in done]
        print(f"effnet-label: {len(paths)} images, {len(paths) - len(todo)} already in {args.output}, "
              f"{len(todo)} to label ({args.engine} engine)", file=sys.stderr)
        writer = ShardWriter(args.output, args.format, args.shard_size)
        results = (label_ray(args.model, options, todo, args.workers, args.ray_address) if args.engine == "ray"
                   else label_local(args.model, options, todo, min(args.workers, max(len(todo), 1)),
                                    digest))
        errors = 0
        with Progress(len(todo), "labelling") as bar:
            for row in results:
                errors += row["error"] is not None
                writer.add(row)
                bar.update()
        writer.flush()
    except (ModelError, BackendUnavailableError, LabelError, OSError) as e:
        print(f"effnet-label: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("effnet-label: interrupted (finished shards are kept: run again to continue)", file=sys.stderr)
        return 130
    seconds = time.perf_counter() - start
    print(f"effnet-label: labelled {len(todo) - errors}, errors {errors}, skipped (already done) "
          f"{len(paths) - len(todo)}; {len(todo) / max(seconds, 1e-9):.1f} images/s; results in {args.output}",
          file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    # run the package's module, not this __main__ copy: label_ray raises that module's LabelError
    from effnet_lite.apps.label import main as package_main
    sys.exit(package_main())
