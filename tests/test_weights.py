import pickle

import pytest
import torch

from effnet_lite.model_export.model import create_model
from effnet_lite.model_export.weights import WeightsError, load_model, read_state_dict


@pytest.mark.parametrize("name", ["lite0", "lite1", "lite2"])
def test_official_weights_load_strictly(name):
    model = load_model(name)
    assert not getattr(model, "untrained", False)
    # real weights: BN statistics are not the defaults
    assert not torch.allclose(model.bn1.running_var, torch.ones(32))


@pytest.mark.parametrize("name", ["lite3", "lite4"])
def test_large_variants_need_a_checkpoint(name):
    with pytest.raises(WeightsError, match=f"tf_efficientnet_{name}.*--random-init"):
        load_model(name)
    assert load_model(name, random_init=True).untrained


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_timm_format_checkpoint_round_trip(tmp_path, suffix):
    src = create_model("lite3")
    for p in src.parameters():
        torch.nn.init.normal_(p, std=0.02)
    path = tmp_path / f"tf_efficientnet_lite3{suffix}"
    if suffix == ".pth":
        torch.save({"state_dict": src.state_dict()}, path)  # wrapped, as training scripts save
    else:
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    model = load_model("lite3", weights=path)
    x = torch.randn(1, 3, 300, 300)
    with torch.no_grad():
        assert torch.equal(model(x), src.eval()(x))


def test_checkpoint_for_another_variant(tmp_path):
    path = tmp_path / "lite1.pth"
    torch.save(create_model("lite1").state_dict(), path)
    with pytest.raises(WeightsError, match="shape mismatch for lite2.*another variant"):
        load_model("lite2", weights=path)  # same depth, other widths
    with pytest.raises(WeightsError, match="keys do not match.*missing"):
        load_model("lite4", weights=path)  # more blocks


def test_checkpoint_with_wrong_keys(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"fc.weight": torch.zeros(10, 10), "conv1.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(WeightsError, match="keys do not match.*unexpected"):
        load_model("lite0", weights=path)


@pytest.mark.parametrize("content", [b"", b"this is not a checkpoint\n", b"PK\x03\x04garbage"])
def test_corrupt_or_non_checkpoint_file(tmp_path, content):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(WeightsError, match="bad.pth: not a readable"):
        read_state_dict(path)


def test_truncated_checkpoint(tmp_path):
    good = tmp_path / "good.pth"
    torch.save(create_model("lite0").state_dict(), good)
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(good.read_bytes()[:100_000])
    with pytest.raises(WeightsError, match="truncated.pth: not a readable"):
        load_model("lite0", weights=bad)


class Exploit:
    def __reduce__(self):
        return (print, ("arbitrary code ran",))


def test_arbitrary_pickles_are_never_executed(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"conv_stem.weight": Exploit()}, f)
    with pytest.raises(WeightsError, match=r"evil.pth: not a readable PyTorch/safetensors checkpoint \(Weights only load failed"):
        read_state_dict(path)
    assert "arbitrary code ran" not in capsys.readouterr().out


def test_missing_checkpoint_file(tmp_path):
    with pytest.raises(WeightsError, match="no such checkpoint"):
        load_model("lite0", weights=tmp_path / "nope.pth")
