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
    # resolution: measured 97 / 99 / 100 % on this machine (TFLite: 98 / 99 / 100 %)
    assert row["int8_onnx"]["agreement"] >= 0.97, row
    assert row["int8_data_free"]["agreement"] >= 0.93, row
    # the integer pixel input changes nothing but the padded border
    assert row["pixel_input"]["agreement"] == 1.0
    assert row["pixel_input"]["max_abs_logit_diff"] < 0.05
    if name == "lite0":
        # onnxruntime's quantize_static ran on the same photos; its figure is reported beside ours
        assert 0.5 < row["ort_quantize_static"]["agreement"] <= 1.0
