"""effnet-infer --video: classify the frames of a video file, a V4L2 camera (/dev/video0), a
network stream (rtsp://, http://...) or, on a Raspberry Pi, the Pi camera ("picamera", through
picamera2 when it is installed). Decoding uses PyAV (FFmpeg), an optional extra: `video`.

Frame selection: every Nth frame (--every) and/or at most F frames per second of stream
time (--max-fps). Live sources (cameras, network streams) are read by a thread that keeps
only the newest frame, so results stay current when classifying is slower than the camera.
"""
from __future__ import annotations

import os
import queue
import sys
import threading
import time
from typing import Iterator

import numpy as np

LIVE_PREFIXES = ("/dev/video", "rtsp://", "rtmp://", "http://", "https://", "udp://", "tcp://")


class VideoError(RuntimeError):
    """The source cannot be opened, or stops with a decoding error (one line)."""


def _av():
    try:
        import av
    except ImportError:
        raise VideoError("video needs PyAV: pip install 'effnet-lite-edge[video]'") from None
    return av


def is_live(source: str) -> bool:
    return source == "picamera" or source.startswith(LIVE_PREFIXES)


def _decoded(source: str) -> Iterator[tuple[float, np.ndarray]]:
    """(time in seconds, HxWx3 uint8 RGB) for every frame of a PyAV source."""
    av = _av()
    options = {"format": "v4l2"} if source.startswith("/dev/video") else {}
    try:
        container = av.open(source, **options, timeout=10 if is_live(source) else None)
    except (av.FFmpegError, OSError) as e:
        raise VideoError(f"{source}: cannot open video ({_first(e)})") from None
    with container:
        stream = next((s for s in container.streams if s.type == "video"), None)
        if stream is None:
            raise VideoError(f"{source}: no video stream")
        stream.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):
                t = float(frame.time) if frame.time is not None else 0.0
                yield t, frame.to_ndarray(format="rgb24")
        except (av.FFmpegError, OSError, ValueError) as e:
            raise VideoError(f"{source}: video ends with a decoding error ({_first(e)})") from None


def _picamera() -> Iterator[tuple[float, np.ndarray]]:
    """The Raspberry Pi camera through picamera2 (not testable here: no camera)."""
    try:
        from picamera2 import Picamera2
    except ImportError:
        raise VideoError("picamera: picamera2 is not installed (sudo apt install python3-picamera2)") from None
    camera = Picamera2()
    camera.configure(camera.create_video_configuration(main={"format": "RGB888", "size": (640, 480)}))
    camera.start()
    start = time.monotonic()
    try:
        while True:
            # picamera2's "RGB888" is BGR in memory order
            yield time.monotonic() - start, np.ascontiguousarray(camera.capture_array()[..., ::-1])
    finally:
        camera.stop()


class _Failed:
    """The reader thread's exception, on its way to the consumer."""

    def __init__(self, error: BaseException):
        self.error = error


def _newest_only(frames: Iterator) -> Iterator:
    """Read `frames` in a thread and hand out only the newest one: stale frames are dropped."""
    slot: queue.Queue = queue.Queue(maxsize=1)
    done = object()
    stop = threading.Event()

    def hand_over(item) -> None:
        try:
            slot.get_nowait()            # drop the frame nobody took
        except queue.Empty:
            pass
        slot.put(item)

    def reader():
        try:
            for item in frames:
                if stop.is_set():
                    break
                hand_over(item)
            slot.put(done)
        except BaseException as e:      # whatever it is, the consumer must hear of it, or it waits forever
            hand_over(_Failed(e))
    threading.Thread(target=reader, daemon=True).start()
    try:
        while (item := slot.get()) is not done:
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()


def frames(source: str, every: int = 1, max_fps: float | None = None) -> Iterator[tuple[int, float, np.ndarray]]:
    """(frame number, time in seconds, RGB frame) of the frames to classify."""
    if source != "picamera" and not is_live(source) and not os.path.isfile(source):
        raise VideoError(f"{source}: no such video file")
    decoded = _picamera() if source == "picamera" else _decoded(source)
    numbered = ((n, t, f) for n, (t, f) in enumerate(decoded))
    source_frames = _newest_only(numbered) if is_live(source) else numbered
    next_time = None
    for n, t, frame in source_frames:
        if n % every:
            continue
        if max_fps:
            if next_time is not None and t < next_time - 1e-6:
                continue
            step = 1 / max_fps     # keep a regular grid of times; restart it after a gap
            on_grid = next_time is not None and t - next_time < step
            next_time = (next_time if on_grid else t) + step
        yield n, t, frame


def _first(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def run(args, clf, quiet) -> int:
    """The --video loop: a line (or JSON object) per classified frame, frames/s on stderr."""
    import json
    classified, start, last_report = 0, time.perf_counter(), time.perf_counter()
    try:
        for n, t, frame in frames(args.video, args.every, args.max_fps):
            with quiet:
                result = clf.classify(frame)
            result.source = f"{args.video}#t={t:.3f}"
            if args.json:
                print(json.dumps({"frame": n, "time": round(t, 3), **result.to_dict()}))
            else:
                top = result.categories[0] if result.categories else None
                print(f"t={t:8.3f}s frame {n:>6}: " + (f"{top.score:6.1%}  {top.label}  [{top.index}]"
                                                         if top else "(no class above the threshold)"))
            sys.stdout.flush()
            classified += 1
            now = time.perf_counter()
            if not args.quiet and now - last_report >= 2:
                print(f"effnet-infer: {classified / (now - start):.1f} frames/s classified", file=sys.stderr)
                last_report = now
    except VideoError as e:
        print(f"effnet-infer: {e} (after {classified} classified frame{'s' * (classified != 1)})",
              file=sys.stderr)
        return 1 if classified else 2
    except KeyboardInterrupt:
        print("effnet-infer: interrupted", file=sys.stderr)
        return 130
    except Exception as e:      # not the video's fault: a bug or no memory; still one line
        print(f"effnet-infer: error: internal error while reading {args.video}: {type(e).__name__}: "
              f"{_first(e)} (after {classified} classified frame{'s' * (classified != 1)})", file=sys.stderr)
        return 2
    if not args.quiet:
        seconds = time.perf_counter() - start
        print(f"effnet-infer: {classified} frame(s) in {seconds:.1f} s "
              f"({classified / max(seconds, 1e-9):.1f} frames/s)", file=sys.stderr)
    return 0
