"""effnet-infer --video on a video the test makes from real photos, each held for one second
(lossless RGB, so a frame is exactly its photo): the per-second labels must be the labels
of classifying the photos directly."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from effnet_lite import Classifier
from tests_helpers import require_module, run_module, write_video

av = require_module("av", "the video tests need PyAV (video extra)")
FPS, SIZE = 5, (320, 240)
NAMES = ("coffee", "chelsea", "rocket", "astronaut")


@pytest.fixture(scope="module")
def video(photos, tmp_path_factory):
    """(path, frames): FPS frames of each photo in turn, FFV1 in Matroska, RGB (bgr0)."""
    from skimage import data
    frames = [np.asarray(Image.fromarray(getattr(data, n)()).convert("RGB").resize(SIZE)) for n in NAMES]
    path = tmp_path_factory.mktemp("video") / "photos.mkv"
    write_video(path, frames, FPS, "ffv1", "bgr0")
    return path, frames


def direct_top1(model, frames) -> list[int]:
    with Classifier.from_file(model) as clf:
        return [clf.classify(f).categories[0].index for f in frames]


@pytest.mark.parametrize("selection", [["--max-fps", "1"], ["--every", str(FPS)]])
def test_per_second_labels_match_the_photos(lite0_files, video, selection):
    path, frames = video
    code, out, err = run_module("effnet_lite.apps.infer", "--video", path, "--model", lite0_files["int8.tflite"],
                                "--json", *selection)
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["frame"] for r in rows] == [i * FPS for i in range(len(NAMES))]
    assert [r["time"] for r in rows] == pytest.approx([float(i) for i in range(len(NAMES))])
    assert [r["categories"][0]["index"] for r in rows] == direct_top1(lite0_files["int8.tflite"], frames)
    assert rows[0]["categories"][0]["label"] == "espresso"
    assert "frames/s" in err.splitlines()[-1] and "Traceback" not in err


def test_every_frame_and_table_output(lite0_files, video):
    path, _ = video
    code, out, err = run_module("effnet_lite.apps.infer", "--video", path, "--model", lite0_files["int8.tflite"])
    assert code == 0 and len(out.splitlines()) == FPS * len(NAMES)
    assert out.splitlines()[0].startswith("t=   0.000s frame      0:") and "espresso" in out.splitlines()[0]


def test_truncated_video_stops_cleanly_after_the_frames_it_read(lite0_files, video, tmp_path):
    path, _ = video
    data = path.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[:len(data) * 3 // 5])
    code, out, err = run_module("effnet_lite.apps.infer", "--video", cut, "--model", lite0_files["int8.tflite"], "--json")
    assert code in (0, 1) and "Traceback" not in err
    got = len(out.splitlines())
    assert 0 < got < FPS * len(NAMES)          # the frames before the cut, then a clean stop
    lines = [line for line in err.splitlines() if not line.startswith("model: ")]
    assert all(line.startswith("effnet-infer: ") for line in lines), lines


@pytest.mark.parametrize("args, says", [
    (["--video", "absent.mkv"], "no such video file"),
    (["--video", "garbage.mkv"], "cannot open video|no video stream"),
    (["a.jpg", "--video", "x.mkv"], "one of the two"),
])
def test_bad_video_sources(lite0_files, tmp_path, args, says):
    import re
    (tmp_path / "garbage.mkv").write_bytes(b"this is no video\n" * 50)
    args = [str(tmp_path / a) if a.endswith((".mkv", ".jpg")) else a for a in args]
    code, _, err = run_module("effnet_lite.apps.infer", *args, "--model", lite0_files["int8.tflite"])
    assert code == 2 and re.search(says, err) and "Traceback" not in err, err


def test_live_sources_hand_out_only_the_newest_frame():
    """A camera faster than the classifier: stale frames are dropped, order is kept, and
    the last frame still arrives. Lock-step, not timed: the classifier takes frame k only
    once the camera has produced three more."""
    import threading
    from effnet_lite.apps.video import _newest_only
    produced = threading.Semaphore(0)

    def camera():
        for i in range(60):
            yield i
            produced.release()        # frame i is in the reader's hands
    got = []
    for i in _newest_only(camera()):
        got.append(i)
        for _ in range(3):            # a slow classifier: three frames arrive meanwhile
            if i < 57:
                assert produced.acquire(timeout=30), "the camera thread stalled"
    assert got == sorted(set(got)) and got[-1] == 59 and len(got) < 40, got


@pytest.mark.parametrize("failure", [RuntimeError("a bug in a decoder"), MemoryError()])
def test_any_failure_of_the_reader_ends_the_run(failure):
    """Not only VideoError: whatever the reader thread meets reaches the consumer (which
    would otherwise wait forever on the queue)."""
    from effnet_lite.apps.video import _newest_only

    def camera():
        yield 0
        raise failure
    got = []
    with pytest.raises(type(failure)):
        for i in _newest_only(camera()):
            got.append(i)
    assert got in ([0], [])
