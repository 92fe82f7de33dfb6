"""effnet-train's parts, without a training run: the fit's gradient, the folds, the interval,
nested cross-validation on noise, duplicate detection on real photos, the feature cache."""
from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from conftest import skimage_photos


def test_head_fit_reaches_the_optimum_autograd_finds():
    """The hand-written gradient: the fit's optimum equals one found by torch's autograd on the
    same objective (label smoothing, class weights and a prior included)."""
    import torch
    from effnet_lite.model_export.training.head import HeadOptions, Linear, fit
    rng = np.random.default_rng(1)
    x = rng.normal(size=(120, 6)).astype(np.float32) * [1, 2, 3, 0.5, 1, 4] + 2
    y = rng.integers(0, 3, 120)
    prior = Linear(rng.normal(size=(3, 6)).astype(np.float32), np.zeros(3, np.float32))
    opts = HeadOptions(label_smoothing=0.1, class_weights=[1.0, 2.0, 0.5], max_iter=500)
    got = fit(x, y, 3, 0.05, opts, prior=prior)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    X, Y = torch.from_numpy((x - mu) / sd).double(), torch.from_numpy(y)
    w = torch.zeros(3, 6, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    w0 = torch.from_numpy(prior.weight * sd).double()
    c = torch.tensor(opts.class_weights, dtype=torch.float64)[Y]
    opt = torch.optim.LBFGS([w, b], max_iter=1000, tolerance_grad=1e-10, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        logp = torch.log_softmax(X @ w.T + b, 1)
        target = torch.full((120, 3), 0.1 / 3, dtype=torch.float64)
        target[torch.arange(120), Y] += 0.9
        loss = -(c[:, None] * target * logp).sum() / c.sum() + 0.025 * (w - w0).pow(2).sum()
        loss.backward()
        return loss
    opt.step(closure)
    want = w.detach().numpy() / sd
    assert np.abs(got.weight - want).max() < 2e-3, np.abs(got.weight - want).max()
    assert np.abs(got.logits(x) - (x @ want.T + (b.detach().numpy() - want @ mu))).max() < 5e-3


def test_folds_deal_each_class_round():
    from effnet_lite.model_export.training.selection import stratified_folds
    y = np.repeat([0, 1, 2], [10, 7, 3])
    fold = stratified_folds(y, 5, 0)
    for c in range(3):
        counts = np.bincount(fold[y == c], minlength=5)
        assert counts.max() - counts.min() <= 1
    assert sorted(np.bincount(fold)) == [4, 4, 4, 4, 4]
    assert (stratified_folds(y, 5, 0) == fold).all() and not (stratified_folds(y, 5, 1) == fold).all()


def test_wilson_interval():
    from effnet_lite.model_export.training.selection import wilson
    assert wilson(81, 100) == pytest.approx((0.7222, 0.8749), abs=1e-3)
    lo, hi = wilson(10, 10)
    assert hi == 1.0 and lo == pytest.approx(0.7225, abs=1e-3)


def test_fine_tuning_is_kept_only_where_it_answers_better():
    """--fine-tune-if-better: more held-out photos right wins; as many right, the lower log-loss;
    a dead heat keeps the frozen head."""
    from effnet_lite.model_export.training.selection import compare_modes
    y = np.array([0, 1, 1, 0])
    sure, unsure, wrong = [[0.9, 0.1], [0.1, 0.9]], [[0.6, 0.4], [0.4, 0.6]], [[0.1, 0.9], [0.9, 0.1]]
    head = np.array([sure[0], sure[1], sure[1], wrong[0]])          # 3 right, the last one badly wrong
    three_mildly_wrong = np.array([sure[0], sure[1], sure[1], unsure[1]])    # 3 right, the last one at 0.4
    all_unsure = np.array([unsure[0], unsure[1], unsure[1], unsure[0]])
    assert compare_modes(y, head, all_unsure).fine_tune                 # 4 right against 3
    assert not compare_modes(y, all_unsure, head).fine_tune
    m = compare_modes(y, head, three_mildly_wrong)                      # 3 each, and a lower log-loss
    assert (m.head_right, m.tuned_right) == (3, 3) and m.tuned_log_loss < m.head_log_loss and m.fine_tune
    assert not compare_modes(y, three_mildly_wrong, head).fine_tune
    assert not compare_modes(y, head, head.copy()).fine_tune
    assert compare_modes(y, head, all_unsure).as_dict()["tuned_top1"] == 1.0


def test_the_estimate_of_a_pair_answers_as_its_file_does():
    """--ensemble's estimate combines the two networks' held-out probabilities as the deployed
    graph combines their logits: the softmax of the average (not the average of probabilities,
    which answers differently on these rows)."""
    import torch
    from effnet_lite.model_export.training.tuning import pair_probs
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 3, (400, 5)), rng.normal(0, 3, (400, 5))
    soft = lambda z: torch.softmax(torch.from_numpy(z), 1).numpy()     # noqa: E731
    got = pair_probs(soft(a), soft(b))
    np.testing.assert_allclose(got, soft((a + b) / 2), atol=1e-9)
    assert (((soft(a) + soft(b)) / 2).argmax(1) != got.argmax(1)).any()


def test_nested_estimate_of_noise_is_chance_where_the_fit_is_perfect():
    """Labels that have nothing to do with the features: the model fits its photos (nearly) all,
    and the nested estimate says chance (its interval holds 50 %), as new photos would. Pooled
    over four draws of noise: one draw of 80 falls outside its own 95 % interval one time in
    twenty (the first draw does, 53 of 80)."""
    from effnet_lite.model_export.training.head import HeadOptions, fit
    from effnet_lite.model_export.training.selection import estimate, wilson
    right = answered = fitted = 0
    for draw in range(4):
        rng = np.random.default_rng(draw)
        x = rng.normal(size=(80, 3, 200)).astype(np.float32)
        y = rng.integers(0, 2, 80)
        e = estimate({0.875: x}, y, 2, HeadOptions(), 0)
        assert len(e.photos) == 80
        right += int((e.probs.argmax(1) == y[e.photos]).sum())
        answered += len(e.photos)
        model = fit(x.reshape(-1, 200), np.repeat(y, 3), 2, min(e.strengths), HeadOptions())
        fitted += int((model.logits(x[:, 0]).argmax(1) == y).sum())
    lo, hi = wilson(right, answered)
    assert lo <= 0.5 <= hi, (right, answered, lo, hi)
    assert fitted / answered > hi, fitted         # what the photos that chose would say


def test_the_centre_crop_whose_rows_tell_the_classes_apart_is_chosen():
    """Two crops whose features differ in the centre row only: where one crop's centre rows
    carry the label and the other's are noise, cross-validation keeps the first, whichever
    order they come in, and the nested estimate's folds choose it too; the same rows under two
    names are a tie, kept by the first named."""
    from effnet_lite.model_export.training.head import HeadOptions
    from effnet_lite.model_export.training.selection import choose_form, estimate
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 90)
    views = rng.normal(size=(90, 3, 40)).astype(np.float32)
    views[:, 1:, :3] += 0.5 * np.eye(3, dtype=np.float32)[y][:, None]       # the views: a weak signal
    told, noise = views.copy(), views.copy()
    told[:, 0, :3] += 3 * np.eye(3, dtype=np.float32)[y]
    for xs, want in (({0.875: noise, 1.0: told}, 1.0), ({1.0: noise, 0.875: told}, 0.875)):
        c = choose_form(xs, y, 3, HeadOptions(), 0)
        assert c.crop == want and list(dict.fromkeys(r["crop_pct"] for r in c.forms)) == list(xs)
        assert c.chosen["cv_log_loss"] == min(r["cv_log_loss"] for r in c.forms) < max(r["cv_log_loss"] for r in c.forms)
        assert estimate(xs, y, 3, HeadOptions(), 0).crops == [want] * 5       # (five outer folds)
    assert choose_form({1.0: told, 0.875: told.copy()}, y, 3, HeadOptions(), 0).crop == 1.0


def test_the_scaling_that_suits_the_features_is_chosen():
    """Three features carry the class among 57 of noise. Where the signal's features vary the
    most, scaling each feature by its own spread blows the faint noise up to the signal's size,
    and one shared scale wins; where they vary the least, their own scale is what lifts them
    above the noise, and it wins. Cross-validation tells them apart, in the folds of the
    nested estimate too, and the head it fits answers the photos it chose on."""
    from effnet_lite.model_export.training.head import HeadOptions
    from effnet_lite.model_export.training.selection import choose_form, estimate, fit_chosen
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 90)
    signal = np.eye(3, dtype=np.float32)[y][:, None] + rng.normal(0, 0.6, (90, 2, 3)).astype(np.float32)
    for signal_scale, noise_scale, want in ((1.0, 0.05, "shared"), (0.05, 1.0, "feature")):
        x = np.concatenate([signal_scale * signal, rng.normal(0, noise_scale, (90, 2, 57)).astype(np.float32)], 2)
        c = choose_form({0.875: x}, y, 3, HeadOptions(), 0)
        assert c.scaling == want and [r["scaling"] for r in c.forms] == ["feature", "shared"], c.forms
        assert estimate({0.875: x}, y, 3, HeadOptions(), 0).scalings == [want] * 5
        chosen, _ = fit_chosen(x, y, np.arange(90), 3, c, HeadOptions())
        assert (chosen.logits(x[:, 0]).argmax(1) == y).mean() > 0.8


def test_the_frozen_head_is_the_chosen_fit_averaged_with_the_probe():
    """The frozen head (fit_chosen's second) answers with the mean of two fits' logits: the chosen
    head's (its first: every row of the photos, the chosen scaling and penalty) and the probe's, which
    is scikit-learn's C=1 logistic regression on the centre rows, unscaled: the optimum autograd
    finds for that objective (train_study's probe, run to a tighter tolerance). Only the photos
    at `idx` are used."""
    import torch
    from effnet_lite.model_export.training.head import HeadOptions, fit
    from effnet_lite.benchmarks.train_study import fit_probe
    from effnet_lite.model_export.training.selection import Choice, fit_chosen, probe
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 70)
    x = (rng.normal(size=(70, 3, 12)) * np.linspace(0.5, 3, 12) + np.eye(3)[y][:, None].repeat(4, 2)).astype(np.float32)
    idx = np.arange(10, 70)
    c = Choice(3e-2, crop=0.875, scaling="shared")
    chosen, both = fit_chosen(x, y, idx, 3, c, HeadOptions())
    alone = fit(x[idx].reshape(-1, 12), np.repeat(y[idx], 3), 3, 3e-2, HeadOptions(scaling="shared"))
    np.testing.assert_array_equal(chosen.weight, alone.weight)
    got = probe(x, y, idx, 3, HeadOptions())
    np.testing.assert_allclose(both.logits(x[:, 0]), (chosen.logits(x[:, 0]) + got.logits(x[:, 0])) / 2, atol=1e-4)
    want = fit_probe(x[idx, 0], y[idx], 3, max_iter=2000, tolerance_grad=1e-10, dtype=torch.float64).weight
    assert np.abs(got.weight - want).max() < 2e-3 * np.abs(want).max(), (got.weight, want)
    assert np.abs(chosen.weight - want).max() > 0.1 * np.abs(want).max()      # the two fits differ


def test_the_headline_is_set_beside_the_largest_class_and_the_mean_recall():
    """The report says what always answering the largest class would score and the classes'
    mean recall, from its own confusion matrix; where the head leans to a large class it names
    the classes it rarely recalls and the option that weighs them back, and not once that is set."""
    from effnet_lite.model_export.training.report import evaluation, for_scale
    y = np.repeat([0, 1, 2], [70, 20, 10])
    pred = y.copy()
    pred[70:86] = 0              # 16 of the 20 'dog' photos taken for 'object'
    pred[90:100] = 0             # every 'fish' photo too
    probs = np.eye(3)[pred]
    main = evaluation("estimate", y, probs, ["object", "dog", "fish"], [f"p{i}" for i in range(100)])
    report = {"test": None, "estimate": main, "config": {"class_weights": "none"}}
    lines = for_scale(report)
    assert lines[0] == ("  for scale: answering 'object' (the largest class) every time would score 70.0 %; "
                        "the classes' mean recall is 40.0 %")       # (70/70 + 4/20 + 0/10) / 3
    assert lines[1].startswith("  rarely recalled (under half the top-1): dog, fish; --class-weights balanced")
    assert for_scale({**report, "config": {"class_weights": "balanced"}}) == lines[:1]
    balanced = evaluation("estimate", np.repeat([0, 1], 50), np.eye(2)[np.zeros(100, int)], ["a", "b"], list(range(100)))
    assert len(for_scale({**report, "estimate": balanced})) == 1     # no class is large: nothing to weigh back


def test_copies_are_one_photo_and_others_are_not(tmp_path):
    """A byte copy, JPEG re-encodes, a PNG and a half-size resize group with their original;
    different real photos (and a mirrored one) do not."""
    from effnet_lite.model_export.training.duplicates import fingerprints, groups
    from effnet_lite.preprocess import PreprocessConfig
    from effnet_lite.variants import get_variant
    photos = skimage_photos()
    paths = []
    for name, pixels in photos.items():
        im = Image.fromarray(pixels)
        im.save(tmp_path / f"{name}.jpg", quality=92)
        paths.append(tmp_path / f"{name}.jpg")
    im = Image.fromarray(photos["chelsea"])
    copies = {"bytes.jpg": None, "q60.jpg": 60, "q80.jpg": 80, "png.png": None, "half.jpg": 85}
    (tmp_path / "bytes.jpg").write_bytes((tmp_path / "chelsea.jpg").read_bytes())
    im.save(tmp_path / "q60.jpg", quality=60)
    im.save(tmp_path / "q80.jpg", quality=80)
    im.save(tmp_path / "png.png")
    im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS).save(tmp_path / "half.jpg", quality=85)
    im.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(tmp_path / "mirror.jpg", quality=92)
    paths += [tmp_path / n for n in copies] + [tmp_path / "mirror.jpg"]
    prints, bad = fingerprints(paths, PreprocessConfig.for_variant(get_variant("lite0")), None, "", [])
    assert not bad
    g = groups([prints[p] for p in paths])
    chelsea = g[0]
    assert [g[paths.index(tmp_path / n)] for n in copies] == [chelsea] * len(copies)
    assert len({g[1], g[2], chelsea, g[-1]}) == 4


def test_feature_cache_recomputes_a_damaged_file(tmp_path):
    """A cached photo's .npy cut short (a kill, a full disk) is made again, the same."""
    from effnet_lite.model_export.training.features import FeatureStore
    from effnet_lite.preprocess import PreprocessConfig
    from effnet_lite.variants import get_variant

    class Mean:                     # a stand-in for the frozen layers: any function of the crop
        name, workers = "mean", 2

        def ready(self, n):
            pass

        def rows(self, crops):
            return np.stack([c.reshape(-1, 3).mean(0) for c in crops]).astype(np.float32)
    for i, (name, pixels) in enumerate(skimage_photos().items()):
        Image.fromarray(pixels).save(tmp_path / f"{name}.jpg")
    items = [(p, f"{i:064x}") for i, p in enumerate(sorted(tmp_path.glob("*.jpg")))]
    store = FeatureStore(Mean(), PreprocessConfig.for_variant(get_variant("lite0")), 3, 0, tmp_path / "cache")
    assert store.compute(items, "", print) == []
    first = store.stack([d for _, d in items])
    assert first.shape == (3, 4, 3) and not np.allclose(first[:, 1], first[:, 2])   # views differ
    store.path(items[1][1]).write_bytes(store.path(items[1][1]).read_bytes()[:90])
    store.compute(items, "", print)
    assert (store.stack([d for _, d in items]) == first).all()


def test_the_heads_views_keep_most_of_the_photo(tmp_path):
    """The frozen head's cached views are crops of 70-100 % of the photo (augment.HEAD_SCALE): on a
    photo half black and half white, such a crop (at least 0.72 of the width) keeps at least 31 %
    of each half; of 64 views, every one shows over a quarter of each. The 30-100 % crops of
    fine-tuning (augment.SCALE) include views mostly inside one half, so this fails if the
    cache's views were cut as fine-tuning's are."""
    from effnet_lite.model_export.training.augment import SCALE, random_view, view_rng
    from effnet_lite.model_export.training.features import crops_of
    from effnet_lite.preprocess import PreprocessConfig, load_image
    pixels = np.zeros((120, 120, 3), np.uint8)
    pixels[:, 60:] = 255
    path = tmp_path / "halves.png"
    Image.fromarray(pixels).save(path)
    config = PreprocessConfig(64)

    def both_halves(view):
        white = float((view.mean(-1) > 127).mean())
        return min(white, 1 - white) > 0.25
    views = crops_of(path, "ab" * 32, config, 64, 0)[1:]
    assert len(views) == 64 and all(both_halves(v) for v in views)
    img = load_image(path, config, draft=True)
    wide = [random_view(img, config, view_rng(0, "ab" * 32, v), SCALE) for v in range(64)]
    assert not all(both_halves(v) for v in wide)


def test_feature_rows_are_the_same_from_one_or_several_workers(tmp_path):
    """Photos are worked on by several threads, each with its own interpreter: the cache must
    be bit for bit what one thread makes, row by row in the photo's own file (an interpreter
    shared between threads, or rows written under another photo's name, would differ)."""
    from effnet_lite.model_export.training.features import Backbone, FeatureStore
    from effnet_lite.model_export.weights import load_model
    from effnet_lite.preprocess import PreprocessConfig
    model = load_model("lite0", None)
    config = PreprocessConfig.for_variant(model.variant)
    for i, (name, pixels) in enumerate(skimage_photos().items()):
        Image.fromarray(pixels).save(tmp_path / f"{name}.jpg")
    items = [(p, f"{i:064x}") for i, p in enumerate(sorted(tmp_path.glob("*.jpg")))]
    rows = {}
    for workers in (1, 3):
        backbone = Backbone(model, tmp_path, threads=None)
        backbone.workers = workers
        store = FeatureStore(backbone, config, 2, 0, tmp_path / f"cache{workers}")
        assert store.compute(items, "", print) == []
        rows[workers] = store.stack([d for _, d in items])
    assert rows[1].shape == (len(items), 3, 1280) and len(set(map(bytes, rows[1][:, 0]))) == len(items)
    assert rows[1].tobytes() == rows[3].tobytes()


def test_a_feature_the_photos_barely_vary_gets_no_outsized_weight():
    """A feature that is constant but for one training row (by 1e-4) must not get a weight that
    dwarfs the others: the int8 file's per-channel scale follows the largest weight (on 30 real
    photos such a feature made the exported file disagree with PyTorch)."""
    from effnet_lite.model_export.training.head import HeadOptions, fit
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8)).astype(np.float32)
    x[:, 7] = 0.0
    x[0, 7] = 1e-4
    y = (x[:, 0] > 0).astype(int)
    y[0] = 1 - y[0]                      # only the near-dead feature can explain the first row
    model = fit(x, y, 2, 1e-3, HeadOptions(max_iter=300))
    assert np.abs(model.weight[:, 7]).max() < 10 * np.abs(model.weight[:, :7]).max(), model.weight


def _tiny_network():
    """A stand-in for the network in the fine-tuning's own tests: a convolution, a BatchNorm
    (whose statistics must stay as they are) and a classifier."""
    import torch
    from torch import nn

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.fc = nn.Conv2d(3, 4, 16, stride=16), nn.BatchNorm2d(4), nn.Linear(4, 2)
            self.bn.running_mean.fill_(0.1)

        def forward(self, x):
            return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))
    torch.manual_seed(0)
    return Tiny()


def _photo_batches(tmp_path, n: int):
    """n real photos (scikit-image's, mirrored and cut differently) as fit.Photos, labels 0/1."""
    from effnet_lite.model_export.training.fit import Photos
    from effnet_lite.preprocess import PreprocessConfig
    from effnet_lite.variants import get_variant
    originals = list(skimage_photos().values())
    items = []
    for i in range(n):
        pixels = originals[i % len(originals)]
        pixels = pixels[:, ::-1] if i // len(originals) % 2 else pixels
        Image.fromarray(np.ascontiguousarray(pixels[i:])).save(tmp_path / f"{i}.jpg")
        items.append((tmp_path / f"{i}.jpg", f"{i:064x}"))
    v = get_variant("lite0")
    return Photos(items, PreprocessConfig.for_variant(v), v.mean, v.std, seed=0), np.arange(n) % 2


def test_fine_tuning_interrupted_then_resumed_ends_bit_for_bit(tmp_path):
    """Interrupted after two of four epochs and resumed from its saved state, the fine-tuning
    ends with the uninterrupted run's weights, bit for bit: the views, the optimizer and the
    learning-rate schedule carry on where they were (a schedule started again would not).
    BatchNorm statistics stay as they were, and the averaged weights are what it returns."""
    import copy
    from effnet_lite.model_export.training import fit
    photos, labels = _photo_batches(tmp_path, 6)
    opts = fit.FineTuneOptions(epochs=4, batch=4, lr=0.05)
    start = _tiny_network()
    straight = copy.deepcopy(start)
    fit.fine_tune(straight, photos, labels, opts, 0, tmp_path / "straight", "k")

    class Interrupted(fit.Photos):
        def views(self, idx, epoch):
            if epoch == 2:
                raise KeyboardInterrupt
            return super().views(idx, epoch)
    stopped = copy.deepcopy(start)
    with pytest.raises(KeyboardInterrupt):
        fit.fine_tune(stopped, Interrupted(photos.items, photos.config, photos.mean, photos.std, 0), labels, opts, 0,
                      tmp_path / "resumed", "k")
    resumed = copy.deepcopy(start)
    fit.fine_tune(resumed, photos, labels, opts, 0, tmp_path / "resumed", "k")
    a, b = straight.state_dict(), resumed.state_dict()
    assert all(a[k].equal(b[k]) for k in a)
    assert not a["conv.weight"].equal(start.state_dict()["conv.weight"])
    assert a["bn.running_mean"].equal(start.bn.running_mean)
    from effnet_lite.model_export.training.checkpoint import load_state
    tensors, info = load_state(tmp_path / "straight")
    assert info["epoch"] == 3 and info["averaged"] == 2
    assert a["fc.weight"].equal(tensors["avg.fc.weight"]) and not a["fc.weight"].equal(tensors["now.fc.weight"])


def test_a_long_fine_tuning_says_how_long_it_will_take(tmp_path, monkeypatch):
    """After its first batches (counted over epochs: small data has fewer in one), a fine-tuning
    that will run past a minute logs the epochs, the batches and the time left; a short one
    says nothing."""
    from effnet_lite.model_export.training import fit
    photos, labels = _photo_batches(tmp_path, 6)
    opts = fit.FineTuneOptions(epochs=3, batch=1)

    def said(over: float) -> list[str]:
        monkeypatch.setattr(fit, "FORECAST_OVER", over)
        lines: list[str] = []
        fit.fine_tune(_tiny_network(), photos, labels, opts, 0, None, "k", lines.append, "fine-tuning the final model")
        return lines
    assert said(60.0) == []
    [line] = said(0.0)
    assert line.startswith("fine-tuning the final model: 3 epoch(s) of 6 batches, about ") and \
        line.endswith(" s more (measured on the first 10 batches)"), line


def test_fine_tuning_epochs_shrink_as_the_photos_grow():
    """10 epochs (as measured) for small data; fewer for more photos, never under 3."""
    from effnet_lite.model_export.training.fit import epochs_for
    assert [epochs_for(n) for n in (20, 250, 500, 1000, 3000, 10000)] == [10, 10, 10, 5, 3, 3]


def test_options_name_what_is_wrong():
    """TrainOptions (the Python API's) refuse a bad setting in one line naming it."""
    from effnet_lite.model_export.training import TrainOptions
    from effnet_lite.model_export.training.run_folder import TrainError
    TrainOptions().check()
    for bad, says in ((dict(rounding="fancy"), "rounding must be one of nearest, learned, not 'fancy'"),
                      (dict(views=0), "views must be between 1 and 64"),
                      (dict(class_weights="some"), "class weights must be 'none' or 'balanced'")):
        with pytest.raises(TrainError, match=re.escape(says)):
            TrainOptions(**bad).check()
