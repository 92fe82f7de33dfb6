"""Files a training run writes: the model checkpoint (timm's parameter names, safetensors,
its class names and variant in the file's metadata) and the resumable training state.
Nothing is pickled: tensors go to safetensors, the rest to JSON."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..weights import WeightsError, read_state_dict

CHECKPOINT = "model.safetensors"


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def save_checkpoint(path: Path, state: dict, labels: list[str], variant: str, extra: dict | None = None) -> None:
    meta = {"labels": json.dumps(labels), "variant": variant, "format": "effnet-train/timm",
            **{k: json.dumps(v) for k, v in (extra or {}).items()}}
    tensors = {k: v.detach().contiguous().clone() for k, v in state.items()}
    _atomic(path, lambda p: save_file(tensors, str(p), metadata=meta))


def load_checkpoint(path: Path) -> tuple[dict, list[str] | None, str | None]:
    """(state_dict, class names, variant) of a checkpoint: ours carry the names and the
    variant in their metadata; for others, a labels.txt beside the file gives the names."""
    sd = read_state_dict(path)
    labels = variant = None
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
            labels = json.loads(meta["labels"]) if "labels" in meta else None
            variant = meta.get("variant")
        except (OSError, ValueError, KeyError) as e:
            raise WeightsError(f"{path}: unreadable checkpoint metadata ({e})") from None
    beside = path.with_name("labels.txt")
    if labels is None and beside.is_file():
        labels = [line.strip() for line in beside.read_text(encoding="utf-8").splitlines() if line.strip()]
    if labels is not None and (not isinstance(labels, list) or not all(isinstance(x, str) for x in labels)):
        raise WeightsError(f"{path}: its class names are not a list of strings")
    return sd, labels, variant


def save_state(folder: Path, tensors: dict, info: dict) -> None:
    """The state to resume from: tensors (model parameters, optimizer moments) and JSON."""
    _atomic(folder / "state.safetensors", lambda p: save_file(
        {k: v.detach().contiguous().clone() for k, v in tensors.items()}, str(p)))
    _atomic(folder / "state.json", lambda p: p.write_text(json.dumps(info)))


def load_state(folder: Path) -> tuple[dict, dict] | None:
    if not (folder / "state.json").is_file() or not (folder / "state.safetensors").is_file():
        return None
    try:
        return load_file(str(folder / "state.safetensors")), json.loads((folder / "state.json").read_text())
    except (OSError, ValueError) as e:
        raise WeightsError(f"{folder}: the saved training state is unreadable ({e}); start again "
                           "without --resume") from None


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    """An optimizer's state as flat tensors plus JSON (for save_state)."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"opt.{pid}.{k}"] = v
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, scalars


def restore_optimizer(opt: torch.optim.Optimizer, tensors: dict, scalars: dict) -> None:
    sd = opt.state_dict()
    state = {}
    for name, v in tensors.items():
        if name.startswith("opt."):
            _, pid, k = name.split(".", 2)
            state.setdefault(int(pid), {})[k] = v
    for name, v in scalars.items():
        pid, k = name.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    sd["state"] = state
    opt.load_state_dict(sd)
