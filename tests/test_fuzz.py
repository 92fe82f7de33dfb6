"""The fuzz suite: seeded hostile model files and images, through the Python API (in a child
process under a memory limit) and through effnet-infer (subprocesses with timeouts).

For every case: no traceback, no signal, no hang, and either a result or a clean one-line
error of the documented type. A change to one of our files is refused wherever its digest
looks (all of an .onnx file; a .tflite file's graph, weights and settings), and a change
elsewhere in a .tflite file (padding, the standard metadata's prose, the packed zip, which has
its own CRC-32) is refused or gives exactly the original answer. `--fuzz-long` multiplies the case counts by 10.
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fuzz_cases
from tests_helpers import run_module

HERE = Path(__file__).resolve().parent
MEMORY_LIMIT = 6 << 30      # address space of a child (ulimit -v): the model and a few images
CHILD_MAX_RSS_MB = 1500     # what a child may really use


@pytest.fixture(scope="module")
def scale(request) -> int:
    return 10 if request.config.getoption("--fuzz-long") else 1


def _limit():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run_worker(cases: list[dict], tmp_path: Path, timeout: int) -> dict:
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    proc = subprocess.run([sys.executable, str(HERE / "fuzz_worker.py"), str(tmp_path / "cases.json")],
                          capture_output=True, text=True, timeout=timeout, preexec_fn=_limit)
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    done = {r["id"]: r for r in rows}
    assert proc.returncode == 0, (f"worker died (code {proc.returncode}) after case "
                                  f"{rows[-1]['id'] if rows else None}: {proc.stderr[-2000:]}")
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert done["<done>"]["maxrss_mb"] < CHILD_MAX_RSS_MB, done["<done>"]
    return done


def one_line(message: str) -> bool:
    return "\n" not in message and 0 < len(message) < 400


def write(folder: Path, cases) -> list[tuple[str, Path]]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, (case_id, data) in enumerate(cases):
        suffix = ".onnx" if case_id.startswith(("onnx", "meta")) else ".tflite"
        path = folder / f"{i:04d}{suffix}"
        path.write_bytes(data)
        out.append((case_id, path))
    return out


@pytest.fixture(scope="module")
def model_cases(lite0_files, tmp_path_factory, scale):
    """(case id, path, must_fail) for damaged and hostile model files."""
    from effnet_lite.model_export import tflite_writer
    rng, folder = np.random.default_rng(1234), tmp_path_factory.mktemp("fuzz_models")
    ours_tflite = lite0_files["uint8.tflite"].read_bytes()
    ours_onnx = lite0_files["int8.onnx"].read_bytes()
    foreign = tflite_writer.write_int8(lite0_files["exporter"].quantized, {}, "", "uint8")
    cases = [*((i, d, f) for i, d, f in fuzz_cases.model_mutations("tflite", ours_tflite, rng, 12 * scale, True)),
             *((i, d, f) for i, d, f in fuzz_cases.model_mutations("onnx", ours_onnx, rng, 6 * scale, True)),
             *((i, d, f) for i, d, f in fuzz_cases.model_mutations("foreign", foreign, rng, 12 * scale, False)),
             *((i, d, True) for i, d in fuzz_cases.random_behind_header(rng, 20 * scale)),
             *((i, d, True) for i, d in fuzz_cases.metadata_mutations(lite0_files["int8.onnx"])),
             ("onnx-metadata-invalid-utf8", fuzz_cases.invalid_utf8_onnx(lite0_files["int8.onnx"]), True)]
    written = [(cid, path, fail) for (cid, path), (_, _, fail)
               in zip(write(folder, [(c, d) for c, d, _ in cases]), cases)]
    # wrong types and extensions, and huge sparse files (never read whole)
    extra = {"jpeg-named.tflite": (lite0_files["photos"] / "coffee.jpg").read_bytes(),
             "tflite-named.onnx": ours_tflite, "onnx-named.tflite": ours_onnx, "text.tflite": b"hello\n"}
    for name, data in extra.items():
        (folder / name).write_bytes(data)
        written.append((name, folder / name, True))
    for name, size in (("sparse-100GiB.tflite", 100 << 30), ("sparse-3GiB.onnx", 3 << 30)):
        with open(folder / name, "wb") as f:
            f.write(ours_tflite[:8])
            f.truncate(size)
        written.append((name, folder / name, True))
    (folder / "dir.tflite").mkdir()
    written.append(("directory.tflite", folder / "dir.tflite", True))
    return written


def test_damaged_model_files_via_api(model_cases, lite0_files, tmp_path, scale):
    photo = str(lite0_files["photos"] / "coffee.jpg")
    cases = [{"id": cid, "kind": "model", "path": str(p), "image": photo} for cid, p, _ in model_cases]
    cases.append({"id": "pristine", "kind": "model", "path": str(lite0_files["uint8.tflite"]), "image": photo})
    done = run_worker(cases, tmp_path, timeout=600 * scale)
    pristine = done["pristine"]["answer"]
    assert done["pristine"]["outcome"] == "result" and pristine[0][1] == "espresso", done["pristine"]
    counts = {"result": 0, "error": 0, "unchanged": 0}
    for cid, _, must_fail in model_cases:
        row = done[cid]
        assert row["outcome"] in ("result", "error"), row
        counts[row["outcome"]] += 1
        if row["outcome"] == "error":
            assert one_line(row["message"]), row
        elif must_fail and cid.startswith("tflite-") and row["answer"] == pristine:
            counts["unchanged"] += 1        # a byte the answer does not depend on
        elif must_fail:
            pytest.fail(f"{cid}: a damaged or hostile file gave a result: {row}")
    print(f"\nmodel files via the API: {len(model_cases)} cases, {counts['error']} clean errors, "
          f"{counts['result']} results ({counts['unchanged']} of our .tflite files with a change "
          "outside what the answer depends on, the rest damaged foreign files that still run)")
    flipped = [cid for cid, _, fail in model_cases if "-flip-weights" in cid and cid.startswith("tflite")]
    # every flipped weight is refused; the digest catches what the structure checks cannot
    # (1,000 flips may also hit a buffer's length prefix, refused first as malformed)
    assert flipped and all("model file is corrupt or was modified" in done[c]["message"] for c in flipped)
    by_digest = [c for c in flipped if done[c]["message"].endswith("digest does not match)")]
    assert len(by_digest) >= 0.8 * len(flipped), [(c, done[c]["message"]) for c in flipped]
    for cid in (c for c, _, _ in model_cases if c.startswith("meta-") and "=" in c):
        field = cid[len("meta-"):].split("=")[0]
        message = done[cid]["message"]
        assert any(n in message for n in fuzz_cases.NAMED_BY.get(field, (f"'{field}'",))), (cid, message)
    assert "not valid UTF-8" in done["onnx-metadata-invalid-utf8"]["message"]
    assert "nested too deeply" in done["meta-nested-7000"]["message"]
    assert "'crop_pct'" in done['meta-crop_pct=5']["message"]
    assert "GiB" in done["sparse-100GiB.tflite"]["message"]


def test_damaged_model_files_via_cli(model_cases, lite0_files, scale):
    """A sample of the cases through the command: exit 2, one line of ours, nothing else."""
    photo = lite0_files["photos"] / "coffee.jpg"
    sample = model_cases[::max(1, len(model_cases) // (25 * scale))]
    def categories(out: str):
        return [(c["index"], c["label"], c["score"]) for c in json.loads(out)["categories"]]
    code, out, err = run_module("effnet_lite.apps.infer", photo, "--model", lite0_files["uint8.tflite"], "--json")
    assert code == 0, err
    pristine = categories(out)
    for cid, path, must_fail in sample:
        code, out, err = run_module("effnet_lite.apps.infer", photo, "--model", path, "--json", timeout=120)
        assert code in (0, 2), (cid, code, err)
        if code == 0 and must_fail:     # only a .tflite byte the answer does not depend on
            assert cid.startswith("tflite-") and categories(out) == pristine, (cid, out, err)
        if code == 2:
            assert err.count("\n") == 1 and err.startswith("effnet-infer: error: "), (cid, err)


@pytest.fixture(scope="module")
def image_cases(photos, tmp_path_factory, scale):
    rng, folder = np.random.default_rng(99), tmp_path_factory.mktemp("fuzz_images")
    bases = fuzz_cases.image_bases(photos["chelsea"])
    cases = {**{f"good-{k}": v for k, v in bases.items()},
             **dict(fuzz_cases.image_mutations(bases, rng, 10 * scale)),
             **fuzz_cases.special_images(photos["coffee"])}
    out = []
    for i, (cid, data) in enumerate(cases.items()):
        path = folder / f"{i:04d}-{cid.replace('/', '_')}"
        path.write_bytes(data)
        out.append((cid, path))
    return out


@pytest.mark.parametrize("exact", [False, True], ids=["fast", "exact"])
def test_damaged_images_via_api(image_cases, lite0_files, tmp_path, exact):
    model = str(lite0_files["int8.tflite"])
    cases = [{"id": cid, "kind": "image", "path": str(p), "model": model, "exact": exact}
             for cid, p in image_cases]
    done = run_worker(cases, tmp_path, timeout=600)
    counts = {"result": 0, "error": 0}
    for cid, _ in image_cases:
        row = done[cid]
        assert row["outcome"] in ("result", "error"), row
        counts[row["outcome"]] += 1
        if row["outcome"] == "error":
            assert one_line(row["message"]), row
    print(f"\nimages via the API ({'exact' if exact else 'fast'}): {len(image_cases)} cases, "
          f"{counts['error']} clean errors, {counts['result']} results")
    for cid in (c for c, _ in image_cases if c.startswith("good-")):
        assert done[cid]["outcome"] == "result", done[cid]
    for cid in ("bomb-100000x100000.png", "tall-1x80000000-declared.png", "empty.jpg", "text.png"):
        assert done[cid]["outcome"] == "error", done[cid]
    assert done["one-pixel.png"]["outcome"] == "result"
    # the fast and exact paths define degenerate sizes alike
    assert done["wide-20000x1.png"]["outcome"] == done["tall-1x100000.png"]["outcome"] == "error"


def test_damaged_images_via_cli(image_cases, lite0_files):
    """One batch with every case and a good photo last: bad files are one line each on
    stderr, the rest are classified, the good photo too; exit 1."""
    good = lite0_files["photos"] / "coffee.jpg"
    code, out, err = run_module("effnet_lite.apps.infer", *[p for _, p in image_cases], good,
                                "--model", lite0_files["int8.tflite"], "--json", timeout=600)
    assert code == 1 and "Traceback" not in err
    lines = err.splitlines()
    assert all(line.startswith(("effnet-infer: ", "model: ")) for line in lines), \
        [line for line in lines if not line.startswith(("effnet-infer: ", "model: "))][:5]
    results = [json.loads(line) for line in out.splitlines()]
    assert results[-1]["source"] == str(good) and results[-1]["categories"][0]["label"] == "espresso"
    failed = sum(line.startswith("effnet-infer: ") and ": warning: " not in line for line in lines)
    assert failed + len(results) == len(image_cases) + 1


def test_zero_size_and_wrong_types_via_api(lite0_files):
    import io
    from PIL import Image
    from effnet_lite import Classifier, ImageError
    clf = Classifier.from_file(lite0_files["int8.tflite"])
    for bad in (np.zeros((0, 0, 3), np.uint8), np.zeros((0, 10, 3), np.uint8), Image.new("RGB", (0, 10))):
        with pytest.raises(ImageError, match="empty image"):
            clf.classify(bad)
    for bad in (None, 3, [1, 2], 2.5, {"a": 1}):
        with pytest.raises(TypeError, match="path, bytes, a binary file object, a PIL image or"):
            clf.classify(bad)
    truncated = Image.open(io.BytesIO((lite0_files["photos"] / "coffee.jpg").read_bytes()[:3000]))
    with pytest.raises(ImageError, match="cannot decode"):
        clf.classify(truncated)
    with open(lite0_files["photos"] / "coffee.jpg", "rb") as f:          # file objects work
        assert clf.classify(f).categories[0].label == "espresso"
    data = io.BytesIO((lite0_files["photos"] / "coffee.jpg").read_bytes())
    assert clf.classify(data).categories[0].label == "espresso"
