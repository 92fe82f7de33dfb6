"""fp32 accuracy of the pretrained models and exactness of BatchNorm folding, on real photos."""
import numpy as np
import pytest
import torch

from conftest import nchw_batch
from effnet_lite.model_export.folding import fold_batchnorm, has_batchnorm
from effnet_lite.model_export.weights import load_model

# Floors on the 200 dev photos. Measured 2026-11-21 on this machine with the reference
# transform: lite0 90.0/98.0, lite1 90.5/98.0, lite2 92.0/100.0 (top-1/top-5 %). The floors
# sit 1.5 points (3 photos) below, room for BLAS/threading differences across machines and
# no more: a preprocessing or weight-mapping bug costs far more than that.
FLOORS = {"lite0": (0.885, 0.965), "lite1": (0.89, 0.965), "lite2": (0.905, 0.985)}


def logits(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("name", sorted(FLOORS))
def test_dev_photo_accuracy(dev, name):
    model = load_model(name)
    out = logits(model, nchw_batch([r["path"] for r in dev], name))
    labels = np.array([r["label"] for r in dev])
    top5 = np.argsort(-out, axis=1)[:, :5]
    top1_acc = float(np.mean(top5[:, 0] == labels))
    top5_acc = float(np.mean((top5 == labels[:, None]).any(1)))
    floor1, floor5 = FLOORS[name]
    assert top1_acc >= floor1 and top5_acc >= floor5, (top1_acc, top5_acc)


@pytest.mark.parametrize("name", ["lite0", "lite1", "lite2"])
def test_bundled_photos_are_recognised(photos, name):
    out = logits(load_model(name), nchw_batch([photos["chelsea"], photos["coffee"]], name))
    assert 281 <= out[0].argmax() <= 285          # a cat (tabby, tiger, Persian, Siamese, Egyptian)
    assert out[1].argmax() == 967                 # espresso


@pytest.mark.parametrize("name", ["lite0", "lite2"])
def test_folding_is_exact_on_real_photos(photos, name):
    model = load_model(name)
    folded = fold_batchnorm(model)
    assert has_batchnorm(model) and not has_batchnorm(folded)
    x = nchw_batch(list(photos.values()), name)
    ref, got = logits(model, x), logits(folded, x)
    assert np.abs(ref - got).max() <= 1e-4 * np.abs(ref).max()
    assert (ref.argmax(1) == got.argmax(1)).all()
