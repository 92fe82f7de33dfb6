"""int8 accuracy on the dev photos, computed by the report command's own code:
calibrate on the first 100 photos (sorted by name), evaluate on the other 100."""
import pytest

from conftest import DEV_DIR, dev_rows
from effnet_lite.dataset import labelled_images
from effnet_lite.model_export.report import report_variant


@pytest.fixture(scope="module")
def items():
    dev_rows()   # skips with a reason when the photos are absent
    return labelled_images(DEV_DIR)


@pytest.mark.parametrize("name", ["lite0", "lite1", "lite2"])
def test_int8_accuracy(items, name, request):
    row = (request.getfixturevalue("lite0_dev_report")[0] if name == "lite0"
           else report_variant(name, items, estimators=("mse",), with_ort=False))
    ours = row["int8_mse"]
    assert row["calibration_images"] == 100 and row["evaluation_images"] == 100
    assert ours["agreement"] >= 0.98, row
    assert abs(ours["top1"] - row["fp32_top1"]) <= 0.01 + 1e-9, row
    # pair-safe weights (the same answers on every CPU class) cost up to a bit of weight
    # resolution: measured 100 / 99 / 100 % (VNNI machine; TFLite: 98 / 100 / 100 %)
    assert row["int8_onnx"]["agreement"] >= 0.97, row
    assert row["int8_data_free"]["agreement"] >= 0.93, row
    # the integer pixel input changes nothing but the padded border
    assert row["pixel_input"]["agreement"] == 1.0
    assert row["pixel_input"]["max_abs_logit_diff"] < 0.05
    if name == "lite0":
        # onnxruntime's quantize_static ran on the same photos; its figure is reported beside ours
        assert 0.5 < row["ort_quantize_static"]["agreement"] <= 1.0


def test_learned_rounding_is_closer_to_fp32(lite0_dev_report):
    """Learned rounding (effnet-export --rounding learned), calibrated on the first 100 dev
    photos and judged on the other 100: each format's softmax is closer to fp32's (KL) than
    nearest rounding's, and agrees with fp32 at least as often (TFLite) or within two photos
    (ONNX). Measured on an AVX-512 VNNI machine (XNNPACK's and the pair-safe files' answers
    do not depend on the x86 class): TFLite 98 -> 99 %, KL 0.0026 -> 0.0017; ONNX 100 -> 98 %,
    KL 0.0038 -> 0.0023: agreement moves by whole photos, and on these 100 nearest happened
    to agree on all (learned missed two near-ties of fp32, top-2 logit gaps 0.07 and 0.09
    where the median is 2.7); pooled over both halves learned ONNX agrees on 99.0 % with no top-1
    drop, nearest on 99.5 % with +0.5 pt (docs/export-and-quantization.md).
    Wired to nearest, both KL figures would be equal and the test fails."""
    row = lite0_dev_report[0]
    n = row["evaluation_images"]
    for nearest, learned, slack in (("int8_mse", "int8_learned", 0), ("int8_onnx", "int8_onnx_learned", 2)):
        assert row[learned]["agreement"] >= row[nearest]["agreement"] - slack / n - 1e-9, (learned, row)
        assert row[learned]["kl"] < 0.85 * row[nearest]["kl"], (learned, row)
        assert abs(row[learned]["top1"] - row["fp32_top1"]) <= 0.01 + 1e-9, (learned, row)
    assert row["learned_seconds"] > row["nearest_seconds"] > 0
