"""effnet-infer --workers: N processes, each with its own interpreter; the same answers in the
same order as one process, bad files reported alike, and Ctrl-C ends everything promptly."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from effnet_lite.apps.infer import AUTO_WORKERS_FROM, choose_workers
from effnet_lite.apps.procs import processes
from conftest import DEV_DIR
from tests_helpers import readline_within, run_module


def test_default_workers_only_for_many_images():
    assert choose_workers(None, None, 10) == 1
    assert choose_workers(None, 2, 10_000) == 1                  # --threads given: one process
    assert choose_workers(None, None, AUTO_WORKERS_FROM) == (1 if (os.cpu_count() or 1) == 1
                                                               else min(os.cpu_count(), 4))
    assert choose_workers(3, None, 2) == 2                       # never more workers than images


@pytest.fixture(scope="module")
def mixed_inputs(lite0_files, tmp_path_factory):
    """Real photos with a truncated JPEG and a text file among them."""
    folder = tmp_path_factory.mktemp("mixed")
    photos = sorted(DEV_DIR.glob("*.JPEG"))[:40] or sorted(lite0_files["photos"].glob("*.jpg"))
    (folder / "truncated.jpg").write_bytes(photos[0].read_bytes()[:1500])
    (folder / "notes.png").write_text("not an image\n")
    return [*photos[:len(photos) // 2], folder / "truncated.jpg", *photos[len(photos) // 2:], folder / "notes.png"]


def test_two_workers_answer_like_one_process(lite0_files, mixed_inputs):
    model = lite0_files["int8.tflite"]
    one = run_module("effnet_lite.apps.infer", *mixed_inputs, "--model", model, "--json", "--workers", "1")
    two = run_module("effnet_lite.apps.infer", *mixed_inputs, "--model", model, "--json", "--workers", "2")
    assert one[0] == two[0] == 1
    answers = [[(r["source"], r["categories"]) for r in map(json.loads, out[1].splitlines())] for out in (one, two)]
    assert answers[0] == answers[1]              # the same classes and scores, in the same order
    assert [src for src, _ in answers[1]] == [str(p) for p in mixed_inputs
                                              if p.name not in ("truncated.jpg", "notes.png")]
    errors = [line for line in two[2].splitlines() if not line.startswith("model: ")]
    assert errors == [line for line in one[2].splitlines() if not line.startswith("model: ")]
    assert len(errors) == 2 and "truncated.jpg" in errors[0] and "notes.png" in errors[1]


def _group_alive(pgid: int) -> bool:
    """Whether a running process is left in the group. Zombies do not count: an exited
    helper (multiprocessing's resource tracker) waits there until init reaps it."""
    return any(p.pgrp == pgid and p.state != "Z" for p in processes())


def test_ctrl_c_stops_workers_promptly(lite0_files, tmp_path):
    photos = sorted(lite0_files["photos"].glob("*.jpg"))
    # Ctrl-C as a terminal delivers it: SIGINT not ignored, whatever this process inherited
    # (a shell without job control starts its background commands with SIGINT ignored).
    proc = subprocess.Popen([sys.executable, "-m", "effnet_lite.apps.infer", *(photos * 300), "--model",
                             str(lite0_files["int8.tflite"]), "-q", "--workers", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert readline_within(proc.stdout, 120, "first result from the workers")   # up and answering
        os.killpg(proc.pid, signal.SIGINT)     # Ctrl-C reaches the whole process group
        start = time.perf_counter()
        _, err = proc.communicate(timeout=15)
        assert time.perf_counter() - start < 5
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130 and "Traceback" not in err, err[-2000:]
    assert err.strip().splitlines()[-1] == "effnet-infer: interrupted"
    deadline = time.time() + 5
    while _group_alive(proc.pid) and time.time() < deadline:
        time.sleep(0.1)
    assert not _group_alive(proc.pid), "worker processes outlived effnet-infer"


def test_bench_throughput_mode(lite0_files, tmp_path):
    """The workers x threads grid runs and reports images/s and the ratio to the best
    single-process setting (the figures themselves are the benchmark's, not asserted)."""
    from effnet_lite.benchmarks import latency
    out = tmp_path / "throughput.json"
    assert latency.main([str(lite0_files["int8.tflite"]), "--mode", "throughput", "--data",
                         str(lite0_files["photos"]), "--workers", "1,2", "--threads", "1",
                         "--repeat", "2", "--rounds", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [(r["workers"], r["threads"]) for r in report["rows"]] == [(1, 1), (2, 1)]
    assert all(r["images"] == 16 and r["images_per_s"] > 0 for r in report["rows"])
    # the ratio each row reports is its rate over the single process's (the only one here)
    single = report["rows"][0]["images_per_s"]
    assert [r["vs_best_single"] for r in report["rows"]] == \
        [pytest.approx(r["images_per_s"] / single, rel=1e-9) for r in report["rows"]]
    with pytest.raises(SystemExit):
        latency.main([str(lite0_files["int8.tflite"]), "--mode", "throughput"])   # no --data


def test_eval_workers_give_the_same_figures(lite0_files, tmp_path):
    """effnet-eval --workers 2: the same accuracy, agreement and failures as one process."""
    from test_benchmarks import labelled_folders
    csv_dir, _, _ = labelled_folders(tmp_path, lite0_files["photos"])
    (csv_dir / "broken.jpg").write_bytes((lite0_files["photos"] / "coffee.jpg").read_bytes()[:900])
    with open(csv_dir / "labels.csv", "a") as f:
        f.write("broken.jpg,967,n07920052\n")
    figures = []
    for workers in ("1", "2"):
        out = tmp_path / f"eval{workers}.json"
        code, _, err = run_module("effnet_lite.benchmarks.evaluate", lite0_files["int8.tflite"], lite0_files["fp32.onnx"],
                                  "--data", csv_dir, "--workers", workers, "--json", out)
        assert code == 1 and "broken.jpg" in err and "Traceback" not in err   # one bad file: exit 1
        figures.append(json.loads(out.read_text())["results"])
    assert figures[0] == figures[1] and figures[0][0]["images"] == 4 and figures[0][0]["failed"] == 1


def test_workers_start_with_ctrl_c_ignored():
    """A worker still importing when Ctrl-C reaches the process group must not print a traceback:
    it is started with SIGINT already ignored (before its initializer could ignore it), and the
    parent's own handler is back once the workers are started."""
    import multiprocessing
    from effnet_lite.apps.parallel import _sigint_ignored
    before = signal.getsignal(signal.SIGINT)
    with _sigint_ignored():
        pool = multiprocessing.get_context("spawn").Pool(1)
    try:
        assert signal.getsignal(signal.SIGINT) is before
        assert pool.apply(signal.getsignal, (signal.SIGINT,)) == signal.SIG_IGN
    finally:
        pool.terminate()
