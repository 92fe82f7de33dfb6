"""effnet-label: the same answers as effnet-infer, bad files recorded, crash-safe resuming,
and the Ray engine on a local Ray (one session start)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import DEV_DIR
from tests_helpers import require_module, run_module, wait_for


@pytest.fixture(scope="module")
def collection(lite0_files, tmp_path_factory):
    """(folder, paths in label order, the truncated one): real photos and one broken file."""
    folder = tmp_path_factory.mktemp("collection")
    photos = sorted(DEV_DIR.glob("*.JPEG"))[:30] or sorted(lite0_files["photos"].glob("*.jpg"))
    for p in photos:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "zz_broken.jpg").write_bytes(photos[0].read_bytes()[:1200])
    return folder, sorted(str(p) for p in folder.iterdir()), str(folder / "zz_broken.jpg")


def rows_of(out_dir) -> list[dict]:
    rows = []
    for shard in sorted(out_dir.glob("part-*.jsonl")):
        rows += [json.loads(line) for line in shard.read_text().splitlines()]
    if any(out_dir.glob("part-*.parquet")):
        import pyarrow.parquet as pq
        rows += pq.read_table(out_dir).to_pylist()
    return rows


def infer_answers(model, paths) -> dict:
    code, out, _ = run_module("effnet_lite.apps.infer", *paths, "--model", model, "--json")
    return {r["source"]: r["categories"] for r in map(json.loads, out.splitlines())}


def check_rows(rows, paths, broken, answers):
    assert sorted(r["path"] for r in rows) == sorted(paths)          # each image once
    for r in rows:
        if r["path"] == broken:
            assert r["error"] and not r["indices"], r
            continue
        cats = answers[r["path"]]
        assert r["error"] is None and r["indices"] == [c["index"] for c in cats]
        assert r["labels"] == [c["label"] for c in cats]
        assert r["scores"] == pytest.approx([c["score"] for c in cats], abs=1e-6)


def test_local_engine_labels_like_effnet_infer(lite0_files, collection, tmp_path):
    folder, paths, broken = collection
    model = lite0_files["int8.tflite"]
    code, _, err = run_module("effnet_lite.apps.label", folder, "--model", model, "--output", tmp_path / "out",
                              "--workers", "2", "--shard-size", "8")
    assert code == 1 and "Traceback" not in err          # one image failed, recorded
    assert f"labelled {len(paths) - 1}, errors 1" in err.splitlines()[-1]
    assert len(list((tmp_path / "out").glob("part-*.jsonl"))) == -(-len(paths) // 8)
    check_rows(rows_of(tmp_path / "out"), paths, broken, infer_answers(model, paths))


def test_a_killed_job_continues_where_it_stopped(lite0_files, collection, tmp_path):
    folder, paths, broken = collection
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(paths) + "\n")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "effnet_lite.apps.label", str(listing), "--model", str(lite0_files["int8.tflite"]),
           "--output", str(out), "--workers", "1", "--shard-size", "4"]
    proc = subprocess.Popen(cmd + ["--top-k", "3"], stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: len(list(out.glob("part-*.jsonl"))) >= 2 or proc.poll() is not None, 120,
                 "two finished shards")
        assert proc.poll() is None, "the job ended before it could be killed"
        os.killpg(proc.pid, signal.SIGSTOP)         # frozen at once, then a crash: no clean-up
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    first = rows_of(out)
    assert 8 <= len(first) < len(paths), len(first)
    done = subprocess.run(cmd + ["--top-k", "3"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    assert f"{len(first)} already in" in done.stderr and f"skipped (already done) {len(first)}" in done.stderr
    rows = rows_of(out)
    assert sorted(r["path"] for r in rows) == sorted(paths)          # nothing twice, nothing missing
    assert rows[:len(first)] == first                                # finished shards untouched


def test_a_rerun_with_other_settings_is_refused(lite0_files, collection, tmp_path):
    """OUT records what made its rows: another --top-k, another model or a folder of shards
    nobody recorded are one-line errors (exit 2) that leave the shards alone; --restart
    labels everything again."""
    folder, paths, broken = collection
    out = tmp_path / "out"
    some = tmp_path / "some"
    some.mkdir()
    for p in paths[:5]:
        (some / Path(p).name).write_bytes(Path(p).read_bytes())
    base = ["effnet_lite.apps.label", some, "--output", out, "--workers", "1", "--shard-size", "2"]
    code, _, err = run_module(*base, "--model", lite0_files["int8.tflite"], "--top-k", "3")
    assert code == 0, err
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    record = json.loads((out / "_effnet-label.json").read_text())
    assert record["top_k"] == 3 and record["model"] == "int8.tflite" and record["model_digest"].startswith("sha256:")
    for extra, says in ((["--model", lite0_files["int8.tflite"], "--top-k", "2"], "(top_k: '3', now '2')"),
                        (["--model", lite0_files["uint8.tflite"], "--top-k", "3"], "(model: 'int8.tflite', now 'uint8.tflite')")):
        code, _, err = run_module(*base, *extra)
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
        assert err.startswith(f"effnet-label: error: {out} was labelled with other settings {says}") and \
            "--restart" in err, err
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before      # untouched
    code, _, err = run_module(*base, "--model", lite0_files["int8.tflite"], "--top-k", "2", "--restart")
    assert code == 0, err
    rows = rows_of(out)
    assert len(rows) == 5 and all(len(r["labels"]) == 2 for r in rows) and "0 already in" in err
    assert json.loads((out / "_effnet-label.json").read_text())["top_k"] == 2
    (out / "_effnet-label.json").unlink()
    code, _, err = run_module(*base, "--model", lite0_files["int8.tflite"], "--top-k", "2")
    assert code == 2 and "holds result shards but no _effnet-label.json" in err and err.count("\n") == 1, err


def test_ray_engine_on_a_local_ray(lite0_files, collection, tmp_path):
    """effnet-label on a Ray it starts itself (no --ray-address); effnet-eval on Ray, and a
    real cluster, are in test_ray_cluster.py."""
    require_module("ray", "the Ray engine needs ray (cluster extra)")
    folder, paths, broken = collection
    model = lite0_files["int8.tflite"]
    temp = Path(tempfile.gettempdir())
    loose = set(temp.glob("*.tflite"))
    # the source as a location pyarrow reads (file://, as s3:// or gs:// would be on a cluster)
    code, _, err = run_module("effnet_lite.apps.label", f"file://{folder}", "--model", model, "--output",
                              tmp_path / "out", "--engine", "ray", "--workers", "2", "--format", "parquet", timeout=600)
    assert code == 1, err
    # the two actors opened one copy of the model, named by its digest, and left no other behind
    data = Path(model).read_bytes()
    copy = temp / f"effnet-models-{os.getuid()}" / f"{hashlib.sha256(data).hexdigest()}.tflite"
    assert copy.read_bytes() == data
    assert set(temp.glob("*.tflite")) <= loose
    lines = [line for line in err.strip().splitlines() if not line.startswith("effnet-label: ")]
    assert not lines, lines          # Ray's own logs stay off stderr
    rows = rows_of(tmp_path / "out")
    assert len(rows) == len(paths) and all(r["path"].startswith("file:///") for r in rows)
    check_rows([{**r, "path": r["path"].removeprefix("file://")} for r in rows], paths, broken,
               infer_answers(model, paths))


def test_ray_actors_share_one_trusted_copy_of_the_model(tmp_path, monkeypatch):
    """Each node's copy of the model: one file per model, whatever the number of actors; a
    file at its name that is not the model is replaced; a folder name taken by something
    else gives a private folder instead."""
    from effnet_lite.apps.label_ray import model_copy
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    model = b"TFL3" * 1000
    first = model_copy(model, ".tflite")
    assert model_copy(model, ".tflite") == first and first.read_bytes() == model
    assert [f.name for f in first.parent.iterdir()] == [f"{hashlib.sha256(model).hexdigest()}.tflite"]
    first.write_bytes(b"something else")
    assert model_copy(model, ".tflite") == first and first.read_bytes() == model
    shutil.rmtree(first.parent)
    first.parent.write_text("not a folder")
    other = model_copy(model, ".tflite")
    assert other.parent != first.parent and other.read_bytes() == model


def test_ray_head_that_is_not_there(lite0_files, collection, tmp_path):
    """A --ray-address nobody listens on: one line, exit 2, at once (Ray itself would wait
    40 s per attempt, 20 attempts)."""
    require_module("ray", "the Ray engine needs ray (cluster extra)")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]          # bound, never listening: refused
        started = time.monotonic()
        code, _, err = run_module("effnet_lite.apps.label", collection[0], "--model", lite0_files["int8.tflite"],
                                  "--output", tmp_path / "o", "--engine", "ray", "--ray-address", f"127.0.0.1:{port}",
                                  timeout=120)
    assert code == 2 and "Traceback" not in err, err
    assert err.splitlines()[-1] == (f"effnet-label: error: cannot reach a Ray head at 127.0.0.1:{port} "
                                    "(Connection refused): give its host:port"), err
    assert time.monotonic() - started < 20


@pytest.mark.parametrize("args, says", [(["absent_folder"], "no such folder or list file"),
                                        (["--shard-size", "0"], "at least 1")])
def test_bad_arguments(lite0_files, collection, tmp_path, args, says):
    folder = collection[0]
    source = [str(tmp_path / args[0])] if args[0] == "absent_folder" else [str(folder), *args]
    code, _, err = run_module("effnet_lite.apps.label", *source, "--model", lite0_files["int8.tflite"],
                              "--output", tmp_path / "o")
    assert code == 2 and says in err and "Traceback" not in err
