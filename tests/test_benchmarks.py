"""The harnesses' statistics and output formats, on small models and few runs (no speed
assertions: the machine is shared and noisy)."""
import csv
import json
import shutil

import numpy as np
import pytest

from effnet_lite.benchmarks import evaluate, latency
from effnet_lite.benchmarks.photos import SIZES, make_jpegs
from effnet_lite.benchmarks.stats import median_ratio, summarize
from effnet_lite.dataset import DatasetError, labelled_images
from tests_helpers import BLOCKER


def test_summarize():
    s = summarize([0.001, 0.002, 0.003, 0.004, 0.010])
    assert s["runs"] == 5 and s["median_ms"] == pytest.approx(3.0) and s["min_ms"] == pytest.approx(1.0)
    assert s["mean_ms"] == pytest.approx(4.0) and s["throughput_per_s"] == pytest.approx(250.0)
    assert s["p90_ms"] == pytest.approx(np.percentile([1, 2, 3, 4, 10], 90))
    assert s["p99_ms"] <= 10.0 and s["p99_ms"] >= s["p90_ms"]
    with pytest.raises(ValueError):
        summarize([])


def test_median_ratio_cancels_drift():
    base = np.array([10.0, 20.0, 40.0])      # the machine slows down round by round
    fast = base / 4
    assert median_ratio(base, fast) == pytest.approx(4.0)
    with pytest.raises(ValueError):
        median_ratio([1, 2], [1])


def test_end_to_end_target_ratios_and_their_floors():
    # three rounds (ms); the middle one ran on a machine slowed down 2x throughout
    slow = np.array([1.0, 2.0, 1.0])
    invoke, dec_vga, dec_12mp, e2e_vga = 4 * slow, 1 * slow, 20 * slow, 8 * slow
    r = latency.vga_and_12mp_ratios(invoke, dec_vga, dec_12mp, e2e_vga)
    assert r["640x480_over_invoke_plus_decode"] == pytest.approx(8 / 5)
    assert r["12MP_floor_over_640x480"] == pytest.approx(24 / 8)
    # had 640x480 taken 1.3 x 5 ms, even the bare 12 MP decode + invoke would be 3.69x it
    assert r["12MP_floor_if_640x480_on_target"] == pytest.approx(24 / (1.3 * 5))


def test_jpegs_have_the_promised_sizes():
    from PIL import Image
    import io
    from skimage import data
    jpegs = make_jpegs(Image.fromarray(data.chelsea()))
    for name, (w, h) in SIZES.items():
        assert Image.open(io.BytesIO(jpegs[name])).size == (w, h)


def test_bench_json_and_checks(lite0_files, tmp_path, capsys):
    out = tmp_path / "bench.json"
    plot = tmp_path / "bench.png"
    code = latency.main([str(lite0_files["int8.tflite"]), str(lite0_files["fp32.tflite"]),
                         str(lite0_files["int8.onnx"]), "--torch", "lite0", "--threads", "1",
                         "--runs", "3", "--warmup", "1", "--json", str(out), "--plot", str(plot)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "invoke (prepared input tensor)" in printed and "end to end" in printed
    assert "targets (ratios measured in this run)" in printed
    report = json.loads(out.read_text())
    assert report["machine"]["cores"] >= 1 and "numpy" in report["machine"]["versions"]
    assert report["baseline"] == "lite0 fp32 [torch eager] x1"
    rows = {r["name"]: r for r in report["candidates"]}
    assert len(rows) == 4
    for r in rows.values():
        assert r["invoke"]["runs"] == 3 and r["invoke"]["median_ms"] > 0
        assert set(SIZES) <= set(r["e2e"]) and r["e2e"]["12MP_over_640x480"] > 0
        assert r["peak_rss_mb"] and r["peak_rss_mb"] > 10
    assert rows["lite0 fp32 [torch eager] x1"]["invoke"]["speedup_vs_baseline"] == pytest.approx(1.0)
    names = [c["check"] for c in report["checks"]]
    assert any("vs PyTorch eager fp32" in n for n in names)
    assert any("int8 vs fp32 on litert" in n for n in names)
    assert any("e2e 640x480 / (invoke + decode)" in n for n in names)
    assert "12MP_draft_1/8" in report["jpeg_decode"]
    floors = [c for c in report["checks"] if "floor" in c]
    assert floors and all(c["floor"] > 0 and c["floor_if_640x480_on_target"] > 0 for c in floors)
    assert "if 640x480 met its target" in printed
    assert len(names) >= 3 and all(isinstance(c["ok"], bool) and c["ratio"] > 0 for c in report["checks"])
    assert plot.stat().st_size > 10_000 and plot.read_bytes()[:4] == b"\x89PNG"


def test_bench_e2e_only_prints_every_candidate(lite0_files, capsys):
    code = latency.main([str(lite0_files["int8.tflite"]), "--mode", "e2e", "--threads", "1",
                         "--quick", "--no-rss"])
    assert code == 0
    table = capsys.readouterr().out.split("end to end")[1]
    row = next(line for line in table.splitlines() if line.startswith(lite0_files["int8.tflite"].name))
    assert len(row.split()) >= 8        # name, backend, threads, three sizes, ratios


def test_bench_usage_errors(capsys, tmp_path):
    with pytest.raises(SystemExit):
        latency.main([])
    bad = tmp_path / "bad.tflite"
    bad.write_text("nope")
    assert latency.main([str(bad), "--quick", "--no-rss"]) == 2
    assert "effnet-bench: error:" in capsys.readouterr().err


BAD_ARGS = [  # (command, arguments; {m}: a .tflite file, {t}: the test's folder), expected words
    ("bench", ["{m}", "--threads", "x"], "--threads: expected positive integers"),
    ("bench", ["{t}/missing.tflite"], "missing.tflite: no such file"),
    ("bench", ["{t}/notes.txt"], "notes.txt: not a model file"),
    ("bench", ["--torch", "lite9"], "unknown variant 'lite9'"),
    ("bench", ["--torch", "lite3"], "--torch"),       # untrained: needs --torch-random-init
    ("bench", ["{m}", "--photo", "{t}/notes.txt"], "--photo {t}/notes.txt: not an image"),
    ("bench", ["{m}", "--json", "{t}/absent/b.json"], "folder {t}/absent does not exist"),
    ("bench", ["{m}", "--plot", "{t}/b.png", "--accuracy", "{t}/notes.txt"], "--accuracy {t}/notes.txt"),
    ("eval", ["{t}/missing.tflite", "--data", "{t}"], "missing.tflite: no such file"),
    ("eval", ["{m}", "--torch", "lite4", "--data", "{t}"], "--torch"),
    ("eval", ["{m}", "--data", "{t}", "--reference", "other.onnx"], "--reference other.onnx"),
    ("eval", ["{m}", "--data", "{t}", "--limit", "0"], "--limit: expected a positive integer"),
    ("eval", ["{m}", "--data", "{t}", "--json", "{t}/absent/e.json"], "folder {t}/absent does not exist"),
]


@pytest.mark.parametrize("command,args,expected", BAD_ARGS)
def test_bench_and_eval_reject_bad_arguments_before_any_work(command, args, expected, tmp_path, capsys):
    (tmp_path / "m.tflite").write_bytes(b"checked only when loaded, after the arguments")
    (tmp_path / "notes.txt").write_text("not an image, not JSON")
    fill = {"m": str(tmp_path / "m.tflite"), "t": str(tmp_path)}
    main = latency.main if command == "bench" else evaluate.main
    with pytest.raises(SystemExit) as exit_:
        main([a.format(**fill) for a in args])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    prog = "effnet-bench" if command == "bench" else "effnet-eval"
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"{prog}: error:") and expected.format(**fill) in last, err
    assert "Traceback" not in err


def labelled_folders(root, photos):
    """The same four photos in the three folder layouts effnet-eval reads."""
    chosen = {"coffee.jpg": ("n07920052", 967), "chelsea.jpg": ("n02123045", 281),
              "rocket.jpg": ("n04008634", 744), "astronaut.jpg": ("n10148035", 0)}
    csv_dir, synset_dir, prefix_dir = root / "csv", root / "synsets", root / "prefixed"
    for d in (csv_dir, synset_dir, prefix_dir):
        d.mkdir()
    with open(csv_dir / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "class_index", "wnid"])
        for name, (wnid, index) in chosen.items():
            shutil.copy(photos / name, csv_dir / name)
            w.writerow([name, index, wnid])
            if wnid != "n10148035":     # not an ImageNet-1k class: ignored in these layouts
                (synset_dir / wnid).mkdir()
                shutil.copy(photos / name, synset_dir / wnid / name)
                shutil.copy(photos / name, prefix_dir / f"{wnid}_{name}")
    return csv_dir, synset_dir, prefix_dir


def test_dataset_layouts(lite0_files, tmp_path):
    csv_dir, synset_dir, prefix_dir = labelled_folders(tmp_path, lite0_files["photos"])
    assert len(labelled_images(csv_dir)) == 4
    for d in (synset_dir, prefix_dir):
        items = labelled_images(d)
        assert sorted(label for _, label in items) == [281, 744, 967]
    (tmp_path / "none").mkdir()
    with pytest.raises(DatasetError, match="no labelled images"):
        labelled_images(tmp_path / "none")


def test_eval_reports_accuracy_and_agreement(lite0_files, tmp_path, capsys):
    """effnet-eval's figures equal a count made here with the API: top-1 and top-5 against
    the labels, top-1 agreement and KL(reference || model) against the fp32 reference."""
    from effnet_lite import Classifier, ClassifierOptions
    _, synset_dir, _ = labelled_folders(tmp_path, lite0_files["photos"])
    out = tmp_path / "eval.json"
    names = ["int8.tflite", "uint8.tflite", "fp32.onnx"]
    code = evaluate.main([str(lite0_files[n]) for n in names] + [
        "--data", str(synset_dir), "--json", str(out), "--reference", "fp32.onnx"])
    assert code == 0
    report = json.loads(out.read_text())
    items = labelled_images(synset_dir)
    labels = np.array([label for _, label in items])
    assert report["images"] == len(items) == 3

    def probabilities(name):
        with Classifier.from_file(lite0_files[name], ClassifierOptions(max_results=-1)) as clf:
            rows = []
            for path, _ in items:
                cats = clf.classify(path).categories
                row = np.zeros(len(cats))
                row[[c.index for c in cats]] = [c.score for c in cats]
                rows.append(row)
        return np.stack(rows)
    probs = {n: probabilities(n) for n in names}
    ref = probs["fp32.onnx"]
    by_model = {r["model"]: r for r in report["results"]}
    for n in names:
        p, r = probs[n], by_model[n]
        top5 = np.argsort(-p, axis=1)[:, :5]
        assert r["top1"] == pytest.approx(np.mean(p.argmax(1) == labels))
        assert r["top5"] == pytest.approx(np.mean([label in t for label, t in zip(labels, top5)]))
        assert r["top1_agreement"] == pytest.approx(np.mean(p.argmax(1) == ref.argmax(1)))
        eps = 1e-12
        kl = np.mean(np.sum(ref * (np.log(ref + eps) - np.log(p + eps)), axis=1))
        assert r["mean_kl"] == pytest.approx(kl, rel=1e-3, abs=1e-6)
    assert by_model["int8.tflite"]["mean_kl"] > 0      # int8 differs from fp32, a little
    assert "top-1" in capsys.readouterr().out


def test_eval_bad_folder_and_bad_image(lite0_files, tmp_path, capsys):
    assert evaluate.main([str(lite0_files["int8.tflite"]), "--data", str(tmp_path / "absent")]) == 2
    d = tmp_path / "d"
    d.mkdir()
    shutil.copy(lite0_files["photos"] / "coffee.jpg", d / "n07920052_a.jpg")
    (d / "n07920052_b.jpg").write_text("broken")
    assert evaluate.main([str(lite0_files["int8.tflite"]), "--data", str(d)]) == 1
    err = capsys.readouterr().err
    assert "n07920052_b.jpg" in err and "Traceback" not in err


def test_softmax_and_kl():
    from effnet_lite.metrics import mean_kl, softmax
    p = softmax(np.array([[0.0, 0.0], [np.log(3.0), 0.0]]))
    assert np.allclose(p, [[0.5, 0.5], [0.75, 0.25]])
    assert mean_kl(p, p) == 0.0
    expected = 0.5 * (0.5 * np.log(0.5 / 0.75) + 0.5 * np.log(0.5 / 0.25))
    assert mean_kl(p[:1].repeat(2, 0), np.array([[0.75, 0.25], [0.5, 0.5]])) == pytest.approx(expected)


def test_draft_study_compares_fast_and_exact_and_skips_a_broken_photo(lite0_files, tmp_path, capsys):
    from effnet_lite.benchmarks import draft_study
    _, _, prefix_dir = labelled_folders(tmp_path, lite0_files["photos"])
    (prefix_dir / "n07920052_broken.jpg").write_text("broken")
    code = draft_study.main(["--model", str(lite0_files["int8.tflite"]), "--data", str(prefix_dir),
                             "--size", "1200x900", "--json", str(tmp_path / "draft.json")])
    out, err = capsys.readouterr()
    assert code == 1                                    # one photo could not be read
    assert "3 photos as 1200x900 JPEGs" in out and "same top-1:" in out
    assert "n07920052_broken.jpg" in err and "Traceback" not in err
    [row] = json.loads((tmp_path / "draft.json").read_text())["rows"]     # what docs/performance.md's table reads
    assert row["photos"] == 3 and f"fast {row['fast_ms']:.1f} ms, exact {row['exact_ms']:.1f} ms" in out


def test_train_scale_folder_mirrors_photos_past_what_the_sets_hold(tmp_path):
    """The merged folder: every given photo once (each class under its set's name), then
    mirror images of the first ones, which the trainer's copy detection keeps apart."""
    from PIL import Image
    from effnet_lite.benchmarks.train_scale import merged_folder
    from effnet_lite.model_export.training.duplicates import fingerprints, groups
    from effnet_lite.preprocess import PreprocessConfig
    from effnet_lite.variants import get_variant
    from conftest import skimage_photos
    photos = list(skimage_photos().values())
    for i, (s, name) in enumerate((("a", "x"), ("a", "y"), ("b", "z"))):
        (tmp_path / s / "train" / name).mkdir(parents=True)
        Image.fromarray(photos[i]).save(tmp_path / s / "train" / name / "p.jpg")
    assert merged_folder([tmp_path / "a" / "train", tmp_path / "b" / "train"], 5, tmp_path / "m") == (3, 2)
    files = sorted((tmp_path / "m").glob("*/*"))
    assert sorted({f.parent.name for f in files}) == ["a-x", "a-y", "b-z"] and len(files) == 5
    mirrors = [f for f in files if f.name.startswith("m")]
    with Image.open(mirrors[0]) as im:
        twin = next(f for f in files if f.is_symlink() and f.parent == mirrors[0].parent)
        with Image.open(twin) as original:
            assert np.abs(np.asarray(im.transpose(Image.Transpose.FLIP_LEFT_RIGHT), np.int16)
                          - np.asarray(original, np.int16)).mean() < 3      # a mirror image, re-encoded
    prints, bad = fingerprints(files, PreprocessConfig.for_variant(get_variant("lite0")), None, "", [])
    assert not bad and len(set(groups([prints[f] for f in files]))) == 5


def test_eval_runs_without_torch_and_says_what_torch_is_for(lite0_files, tmp_path):
    """The benchmark commands need only the runtime (their argument checks included);
    PyTorch is asked for only with --torch."""
    import subprocess
    import sys
    from conftest import ROOT
    _, synset_dir, _ = labelled_folders(tmp_path, lite0_files["photos"])
    code = BLOCKER + f"""
from effnet_lite.benchmarks import evaluate
print("exit", evaluate.main([{str(lite0_files['int8.tflite'])!r}, "--data", {str(synset_dir)!r}]))
evaluate.main(["--torch", "lite0", "--data", {str(synset_dir)!r}])
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert "exit 0" in proc.stdout and "int8.tflite" in proc.stdout, proc.stderr
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("effnet-eval: error: --torch (PyTorch does not import: torch is blocked"), last
    assert "'effnet-lite-edge[export]'" in last, last


def test_bench_recommends_the_fastest_equally_accurate_file(lite0_files, capsys):
    """effnet-bench ends with the file to deploy on this CPU class: agreements with the fp32
    file counted independently here, and the pick is the fastest within a point of the best."""
    from effnet_lite.benchmarks.recommend import WITHIN
    from effnet_lite import Classifier
    from effnet_lite.cpu import int8_class
    from effnet_lite.dataset import image_files
    names = ["int8.tflite", "fp32.tflite", "int8.onnx", "fp32.onnx"]
    code = latency.main([str(lite0_files[n]) for n in names] + [
        "--mode", "invoke", "--threads", "1", "--quick", "--no-rss", "--data", str(lite0_files["photos"])])
    out = capsys.readouterr().out
    assert code == 0
    photos = image_files(lite0_files["photos"])

    def tops(path):
        with Classifier.from_file(path) as clf:
            return [clf.classify(p).categories[0].index for p in photos]
    refs = {"tflite": tops(lite0_files["fp32.tflite"]), "onnx": tops(lite0_files["fp32.onnx"])}
    ref = refs["tflite"]     # the first fp32 file of the variant is the reference for all
    expected = {n: np.mean(np.array(tops(lite0_files[n])) == np.array(ref)) for n in names}
    lines = {line.split()[0]: line for line in out.splitlines() if line.split() and line.split()[0] in names}
    assert set(lines) == set(names)
    best = max(expected.values())
    speed = {n: float(lines[n].split()[4]) for n in names}     # the invoke median column
    pick = min((n for n in names if expected[n] >= best - WITHIN), key=speed.get)
    advice = next(line for line in out.splitlines() if line.startswith("recommendation"))
    assert f"({int8_class().name}): {pick} [" in advice, (advice, expected, speed)
    assert f"top-1 agreement with fp32 {expected[pick]:.1%} on {len(photos)} photos" in advice, advice


def test_arm_emulation_refuses_bad_arguments_in_one_line(lite0_files, tmp_path):
    """The ARM harness's bad arguments: exit 2 and one line naming the problem, before any
    emulation (no root or qemu needed to see them)."""
    from tests_helpers import run_module
    models, photos = lite0_files["int8.tflite"].parent, lite0_files["photos"]
    for args, expected in [(["--files", models, "--photos", tmp_path / "nowhere"], f"{tmp_path / 'nowhere'}: not a folder"),
                           (["--files", tmp_path / "absent", "--photos", photos], f"{tmp_path / 'absent'}: not a folder"),
                           (["--files", models, "--photos", photos, "--count", "0"], "--count: expected a positive integer"),
                           (["--files", models, "--photos", photos, "--cli-count", "-1"], "--cli-count: expected a positive"),
                           (["--files", models, "--photos", photos, "--targets", "pi9"], "unknown target(s) pi9")]:
        code, out, err = run_module("effnet_lite.benchmarks.arm_emulation", *args)
        last = err.strip().splitlines()[-1]
        assert code == 2 and not out and expected in last and "Traceback" not in err, (args, err)


def test_peak_rss_is_the_commands_own():
    """A command's peak memory does not include its caller's: from this process holding 600 MB,
    a bare Python measures tens of MB and one that touches 300 MB measures at least that
    (started straight from here, both would report this process's 600 MB and more)."""
    import sys
    from effnet_lite.benchmarks.peak_memory import run_with_peak_rss
    held = np.ones(600 * 2**20, np.uint8)          # touched: resident in this process
    code, _, seconds, bare = run_with_peak_rss([sys.executable, "-c", "pass"], timeout=60)
    assert code == 0 and seconds > 0 and bare < 100, bare
    code, _, _, big = run_with_peak_rss([sys.executable, "-c", "b = bytearray(300 * 2**20)"], timeout=60)
    assert code == 0 and 300 <= big < 500, big
    code, err, _, _ = run_with_peak_rss([sys.executable, "-c", "import sys; sys.exit('no: 3')"], timeout=60)
    assert code == 1 and "no: 3" in err
    assert held[-1] == 1


def test_train_study_counts_same_answers_from_the_mistakes():
    """Two evaluations of 10 photos: x wrong alike in both, y wrong differently, z wrong in one only:
    2 of the 10 answered differently."""
    from effnet_lite.benchmarks.train_study import same_answers
    wrong = lambda photo, predicted: {"photo": photo, "predicted": predicted}    # noqa: E731
    a = {"photos": 10, "misclassified": [wrong("x", "cat"), wrong("y", "cat")]}
    b = {"photos": 10, "misclassified": [wrong("x", "cat"), wrong("y", "owl"), wrong("z", "cat")]}
    assert same_answers(a, b) == pytest.approx(0.8) and same_answers(b, a) == pytest.approx(0.8)
    assert same_answers(a, a) == 1.0


def test_train_study_names_a_split_folder_by_its_set(tmp_path):
    """cifar10/test and clothing/train are reported as cifar10 and clothing, a plain folder as itself."""
    from effnet_lite.benchmarks.train_study import set_name
    for sub in ("cifar10/test", "clothing/train", "signs", "signs/Dataset"):
        (tmp_path / sub).mkdir(parents=True)
    assert [set_name(tmp_path / s) for s in ("cifar10/test", "clothing/train", "signs", "signs/Dataset")] == \
        ["cifar10", "clothing", "signs", "signs"]


def _study_rows(set_, seed, probe, default, tuned=None):
    """train_study rows of one sample of 500 new photos: the probe's, the default's (and --fine-tune's)."""
    base = {"set": set_, "seed": seed, "variant": "lite0", "train": 250, "test": 500}
    rows = [dict(base, candidate="linear probe (centre crops, scikit-learn's defaults)", fp32=probe, int8=None)]
    for name, figures in (("effnet-train (default)", default), ("effnet-train --fine-tune", tuned)):
        if figures:
            fp32, int8, same, interval = figures
            rows.append(dict(base, candidate=name, fp32=fp32, int8=int8, same_answers=same,
                             reported=sum(interval) / 2, reported_interval=interval))
    return rows


def test_train_summary_pools_the_samples_of_several_files(tmp_path, capsys):
    """Two samples in one file, one of them again in a second (counted once, the first file's), a
    third sample in the second: against the probe +2.0, -1.0 and +0.4 points (mean +0.47, one at
    +2 or more, one below); int8 against fp32 pooled over 1,500 photos: +3, -5 and +1 photos =
    -0.067 points, 10 + 15 + 5 photos answered differently (2 %); the estimates: one inside its
    interval, one low, one high. --fine-tune, on one sample only, is pooled apart. --exclude b
    leaves set a's two samples; --modes fine-tune the one mode (a mode it does not know: an error)."""
    from effnet_lite.benchmarks.train_summary import main
    machine = {"cpu_int8_class": "x86-64 VNNI"}
    first = _study_rows("a", 0, 0.800, (0.814, 0.820, 0.98, [0.75, 0.85]), (0.900, 0.904, 0.99, [0.85, 0.95])) + \
        _study_rows("a", 1, 0.700, (0.700, 0.690, 0.97, [0.60, 0.68]))
    second = _study_rows("a", 1, 0.700, (0.750, 0.750, 1.0, [0.70, 0.80])) + \
        _study_rows("b", 0, 0.900, (0.902, 0.904, 0.99, [0.91, 0.95]))
    files = [tmp_path / "one.json", tmp_path / "two.json"]
    for f, rows in zip(files, (first, second)):
        f.write_text(json.dumps({"machine": machine, "rows": rows}))
    assert main([*map(str, files), "--json", str(tmp_path / "pooled.json")]) == 0
    assert "3 samples from 2 file(s); int8 class: x86-64 VNNI" in capsys.readouterr().out
    default, tuned = json.loads((tmp_path / "pooled.json").read_text())["pooled"]
    assert default["candidate"] == "effnet-train (default)" and default["samples"] == 3 and default["sets"] == 2
    assert default["over_probe_mean"] == pytest.approx((2.0 - 1.0 + 0.4) / 3)
    assert (default["over_probe_min"], default["over_probe_max"]) == (pytest.approx(-1.0), pytest.approx(2.0))
    assert default["at_least_2_over"] == 1 and default["below_probe"] == 1
    # by set: a's two samples averaged first (+0.5), then with b's (+0.4); t over 1 degree of freedom
    assert default["over_probe_by_set"] == pytest.approx(0.45)
    sd = 0.1 / 2 ** 0.5                 # of the two sets' means, +0.5 and +0.4
    assert default["over_probe_by_set_95"] == pytest.approx(12.706 * sd / 2 ** 0.5)
    assert default["photos"] == 1500 and default["int8_minus_fp32"] == pytest.approx(100 * (3 - 5 + 1) / 1500)
    assert default["answered_differently"] == pytest.approx(30 / 1500)
    assert default["int8_minus_fp32_95"] == pytest.approx(100 * 1.96 * 30 ** 0.5 / 1500)
    assert (default["estimates_inside"], default["estimates_low"], default["estimates_high"]) == (1, 1, 1)
    # +3 photos of 500 (0.6 points) and -5 (1.0) are over half a point, +1 is not; none beyond its noise
    assert (default["int8_samples_told"], default["int8_over_half_point"]) == (3, 2)
    assert (default["int8_worse_beyond_noise"], default["int8_better_beyond_noise"]) == (0, 0)
    assert tuned["candidate"] == "effnet-train --fine-tune" and tuned["samples"] == 1
    assert tuned["over_probe_mean"] == pytest.approx(10.4)
    assert tuned["over_probe_by_set"] == pytest.approx(10.4) and tuned["over_probe_by_set_95"] is None   # one set
    assert main([*map(str, files), "--exclude", "b", "--json", str(tmp_path / "pooled.json")]) == 0   # a chooser
    assert "2 samples from 2 file(s) (left out: b)" in capsys.readouterr().out
    default = json.loads((tmp_path / "pooled.json").read_text())["pooled"][0]
    assert default["samples"] == 2 and default["over_probe_mean"] == pytest.approx(0.5)
    assert main([*map(str, files), "--modes", "fine-tune", "--json", str(tmp_path / "pooled.json")]) == 0
    assert "3 samples from 2 file(s) (modes: fine-tune)" in capsys.readouterr().out     # the probe rows kept
    [tuned] = json.loads((tmp_path / "pooled.json").read_text())["pooled"]
    assert tuned["candidate"] == "effnet-train --fine-tune" and tuned["over_probe_mean"] == pytest.approx(10.4)
    with pytest.raises(SystemExit):
        main([*map(str, files), "--modes", "default,tuned"])
    assert "--modes: one or more of default, fine-tune, fine-tune-if-better, ensemble" in capsys.readouterr().err


def test_train_summary_tells_int8_apart_from_fp32_beyond_the_noise():
    """int8 10 photos of 500 below fp32 with 15 answered differently: beyond 1.96 sqrt(15) = 7.6,
    worse; 5 above with 5 different: beyond 4.4, better; 5 below with 9 different: 1 point
    apart, within the noise (5.9); 2 of 400 photos is half a point: not over it."""
    from effnet_lite.benchmarks.train_summary import int8_apart
    def sample(n, fp32, int8, same):
        return {"test": n, "fp32": fp32, "int8": int8, "same_answers": same}
    assert int8_apart(sample(500, 0.80, 0.78, 0.97)) == (True, "worse")
    assert int8_apart(sample(500, 0.80, 0.81, 0.99)) == (True, "better")
    assert int8_apart(sample(500, 0.80, 0.79, 0.982)) == (True, None)
    assert int8_apart(sample(400, 0.80, 0.805, 0.99)) == (False, None)


def test_train_summary_counts_samples_below_the_probe_beyond_their_paired_noise(tmp_path):
    """train_study's photo-by-photo count against the probe (a and b wrong in the probe, b and c
    in ours: one each only right), and train_summary's reading of such counts: 30 photos only the
    probe answers right against 10 only ours is beyond 1.96 sqrt(40) = 12.4 (below); 14 against 6
    is not (8 < 8.8); 20 only ours against 5 is (above). Rows without counts are not judged."""
    from effnet_lite.benchmarks.train_study import versus
    from effnet_lite.benchmarks.train_summary import beyond_noise, pooled
    assert versus(["a", "b"], ["b", "c"]) == {"only_ours_right": 1, "only_probe_right": 1}
    assert (beyond_noise(10, 30), beyond_noise(6, 14), beyond_noise(20, 5)) == ("below", None, "above")
    rows = []
    for seed, (ours, probe) in enumerate([(10, 30), (6, 14), (20, 5), (None, None)]):
        sample = _study_rows("a", seed, 0.8, (0.8, 0.8, 1.0, [0.7, 0.9]))
        if ours is not None:
            sample[1]["vs_probe"] = {"only_ours_right": ours, "only_probe_right": probe}
        rows += sample
    [default] = pooled(rows)
    assert (default["probe_paired_samples"], default["below_probe_beyond_noise"],
            default["above_probe_beyond_noise"]) == (3, 1, 1)


def test_train_summary_interval_takes_the_sets_as_its_units():
    """Three sets whose samples average +1, +2 and +3 points (the first from four samples, which
    do not weigh more): mean +2, standard deviation 1, t at 2 degrees of freedom 4.303, so
    2 ± 4.303 / sqrt(3). Between tabulated degrees of freedom the table's lower row (wider)."""
    from effnet_lite.benchmarks.train_summary import by_set, t975
    over = [("a", 0.0), ("a", 2.0), ("a", 1.5), ("a", 0.5), ("b", 2.0), ("c", 3.0)]
    mean, half = by_set(over)
    assert mean == pytest.approx(2.0) and half == pytest.approx(4.303 / 3 ** 0.5)
    assert by_set([]) == (None, None) and by_set([("a", 1.0), ("a", 3.0)]) == (2.0, None)
    assert t975(20) == t975(24) == 2.086 and t975(25) == 2.060 and t975(1000) == 1.96


@pytest.mark.parametrize("content,why", [({"runs": []}, "KeyError: 'rows'"), ([1, 2], "TypeError"),
                                         ({"rows": [{"set": "a"}]}, "KeyError: 'seed'"), ("{cut", "JSONDecodeError")])
def test_train_summary_names_a_file_that_is_not_a_study(tmp_path, content, why):
    from effnet_lite.benchmarks.train_summary import main
    bad = tmp_path / "latency.json"
    bad.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(SystemExit, match=r"latency\.json: not a train_study results file \(" + why):
        main([str(bad)])


def test_train_summary_names_a_row_it_cannot_pool(tmp_path):
    from effnet_lite.benchmarks.train_summary import main
    rows = _study_rows("a", 0, 0.8, (0.81, 0.82, 0.98, [0.75, 0.85]))
    rows[1]["int8"] = "high"
    (tmp_path / "odd.json").write_text(json.dumps({"rows": rows}))
    with pytest.raises(SystemExit, match=r"a row of these files is not train_study's \(TypeError"):
        main([str(tmp_path / "odd.json")])


def test_train_summary_says_when_there_is_nothing_to_pool(tmp_path, capsys):
    """A file of probe rows only: one line on stderr, exit status 1, nothing on stdout."""
    from effnet_lite.benchmarks.train_summary import main
    (tmp_path / "probe.json").write_text(json.dumps({"rows": _study_rows("a", 0, 0.8, None)}))
    assert main([str(tmp_path / "probe.json")]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err == "train_summary: no effnet-train rows with an int8 figure in these files\n"
