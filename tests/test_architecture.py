import pytest

from effnet_lite.model_export.architecture import decode, round_channels
from effnet_lite.model_export.complexity import count
from effnet_lite.model_export.model import create_model, same_padding
from effnet_lite.variants import UnknownVariantError, get_variant

# Exact for the variants whose official weights we load; Google's rounded figures otherwise.
PARAMS = {"lite0": 4_652_008, "lite1": 5_416_680, "lite2": 6_092_072}
PARAMS_APPROX = {"lite3": 8.20e6, "lite4": 13.01e6}
# Google's published figures (EfficientNet-Lite README): variant, input size, ops.
PUBLISHED_MACS = [("lite0", 224, 407e6), ("lite1", 240, 631e6), ("lite2", 260, 899e6),
                  ("lite3", 280, 1.44e9), ("lite4", 300, 2.64e9)]


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_count_exact(name):
    model = create_model(name)
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]
    assert count(name).params == PARAMS[name]


@pytest.mark.parametrize("name", sorted(PARAMS_APPROX))
def test_parameter_count_large_variants(name):
    n = sum(p.numel() for p in create_model(name).parameters())
    assert abs(n / PARAMS_APPROX[name] - 1) < 0.005
    assert count(name).params == n


@pytest.mark.parametrize("name,size,published", PUBLISHED_MACS)
def test_macs_match_google(name, size, published):
    c = count(name, size)
    assert abs(c.total_ops / published - 1) < 0.02, str(c)
    assert c.macs < c.total_ops  # conv/FC MACs alone are the smaller figure


def test_macs_agree_with_torch_hooks():
    """The analytic conv MAC count equals one taken from the real modules at run time."""
    import torch
    model, macs = create_model("lite1", 256), []
    def hook(m, inp, out):
        macs.append(out.numel() * m.weight[0].numel())
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            m.register_forward_hook(hook)
    model(torch.zeros(1, 3, 256, 256))
    assert sum(macs) == count("lite1", 256).macs


def test_width_rounding_and_fixed_stem_head():
    assert round_channels(16, 1.1) == 16 and round_channels(40, 1.2) == 48
    assert round_channels(24, 1.4) == 32  # 33.6 → 32 (>= 90 %)
    for name in ("lite0", "lite4"):
        model = create_model(name)
        assert model.conv_stem.out_channels == 32 and model.conv_head.out_channels == 1280
        stages = decode(get_variant(name))
        assert len(stages[0]) == 1 and len(stages[-1]) == 1
    assert [len(s) for s in decode(get_variant("lite4"))] == [1, 4, 4, 6, 6, 8, 1]


def test_no_squeeze_excite_and_relu6_only():
    import torch.nn as nn
    model = create_model("lite2")
    kinds = {type(m).__name__ for m in model.modules()}
    assert not any("SqueezeExcite" in k or "SiLU" in k or "Swish" in k for k in kinds)
    assert not any(isinstance(m, (nn.SiLU, nn.Sigmoid)) for m in model.modules())


def test_same_padding_is_tf_style():
    assert same_padding(224, 3, 2) == (0, 1)      # asymmetric: extra pixel after
    assert same_padding(112, 5, 2) == (1, 2)
    assert same_padding(15, 3, 2) == (1, 1)       # odd size
    assert same_padding(56, 5, 1) == (2, 2)
    assert create_model("lite0").conv_stem.pads == (0, 1, 0, 1)


def test_unknown_variant_is_a_clear_error():
    with pytest.raises(UnknownVariantError, match="unknown variant 'lite9'.*lite0"):
        get_variant("lite9")
    with pytest.raises(UnknownVariantError):
        create_model("b0")
    assert get_variant("efficientnet_lite3").name == "lite3"


def test_wrong_input_size_is_refused():
    import torch
    with pytest.raises(ValueError, match="built for 224x224"):
        create_model("lite0")(torch.zeros(1, 3, 240, 240))
