"""Classify a list of images in one process or in N worker processes, each holding its own
Classifier (an interpreter is not thread-safe, and int8 Lite0 scales better across processes
than across threads: one decodes while another infers). Outcomes come back in input order.

An outcome is (kind, payload, notes): ("ok", ClassificationResult, notes),
("image", one-line error, notes) or ("model", one-line error, []); `notes` are what the
libraries said on stderr or as warnings while decoding that image (see quiet.py).
"""
from __future__ import annotations

import multiprocessing
import signal
import threading
from contextlib import contextmanager
from dataclasses import asdict
from typing import Iterable, Iterator

from effnet_lite import BackendUnavailableError, Classifier, ClassifierOptions, ImageError, ModelError

from effnet_lite.quiet import Captured, is_noise

_worker: dict = {}


def outcome(quiet: Captured, work, path) -> tuple:
    try:
        with quiet:
            payload = work(path)
        kind = "ok"
    except ImageError as e:
        kind, payload = "image", str(e)
    except ModelError as e:
        return "model", str(e), []
    return kind, payload, [line for line in quiet.lines() if not is_noise(line)]


def classify_one(clf: Classifier, quiet: Captured, path) -> tuple:
    return outcome(quiet, clf.classify, path)


def scores_one(clf: Classifier, quiet: Captured, path) -> tuple:
    """Like classify_one, with every class's probability (a float32 array) as the payload."""
    return outcome(quiet, lambda p: clf.scores(clf.preprocess(p)), path)


def sequential(clf: Classifier, quiet: Captured, paths: Iterable) -> Iterator[tuple]:
    for path in paths:
        yield classify_one(clf, quiet, path)


def _init(model: str, options: dict, want_scores: bool, digest: str | None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)      # Ctrl-C is the parent's to handle
    quiet = Captured()
    # A failure here must not escape: the pool would start another worker, forever.
    try:
        with quiet:
            clf = Classifier.from_file(model, ClassifierOptions(**options))
        if digest and clf.backend.digest != digest:
            clf.close()
            raise ModelError(f"{model}: the file changed on disk after it was checked "
                             "(it is not the model this job started with)")
        _worker["clf"] = clf
    except (ModelError, BackendUnavailableError) as e:
        _worker["error"] = str(e)
    _worker["quiet"], _worker["call"] = quiet, scores_one if want_scores else classify_one


def _classify(path) -> tuple:
    if "error" in _worker:
        return "model", _worker["error"], []
    return _worker["call"](_worker["clf"], _worker["quiet"], path)


def parallel(model: str, options: ClassifierOptions, paths: list, workers: int,
             want_scores: bool = False, digest: str | None = None) -> Iterator[tuple]:
    """Outcomes from `workers` processes, in input order (payloads: results, or with
    `want_scores` probability arrays). The parent must have opened the model once already
    (so that a bad model is reported before any worker starts); `digest`, the one it
    verified, makes a worker refuse a file changed since. A worker that cannot open the
    model answers ("model", error, []). On KeyboardInterrupt or any error the workers are
    terminated at once."""
    # spawn, not fork: the parent has an interpreter with threads loaded
    with _sigint_ignored():
        pool = multiprocessing.get_context("spawn").Pool(workers, _init, (str(model), asdict(options), want_scores,
                                                                          digest))
    try:
        chunk = max(1, min(16, len(paths) // (workers * 8)))
        yield from pool.imap(_classify, paths, chunksize=chunk)
        pool.close()
        pool.join()
    except BaseException:
        stop_pool(pool)
        raise


@contextmanager
def _sigint_ignored():
    """SIGINT ignored while the workers are started: they inherit it, so a Ctrl-C that comes while
    one is still importing (before _init) cannot print its traceback. In the parent it lasts the
    few milliseconds of starting them (only the main thread can set it: elsewhere, nothing)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


def stop_pool(pool, grace: float = 3.0) -> None:
    """Pool.terminate(), but bounded: it can wait for ever when its task thread is blocked
    handing the workers their stop sentinels through a full pipe nobody reads any more (the
    workers are terminated first). Past `grace` the workers are killed and the pool's
    threads (daemons) are left to the exiting process."""
    stopper = threading.Thread(target=pool.terminate, daemon=True)
    stopper.start()
    stopper.join(grace)
    if not stopper.is_alive():
        pool.join()
        return
    for process in list(getattr(pool, "_pool", [])):
        if process.exitcode is None:
            process.kill()
