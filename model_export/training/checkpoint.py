"""Files a training run writes: the model checkpoint (timm's parameter names, safetensors,
its class names and variant in the file's metadata) and the resumable training state.
Nothing is pickled: tensors go to safetensors, the rest to JSON."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..weights import checkpoint_labels, checkpoint_metadata, read_state_dict

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
    meta = checkpoint_metadata(path)
    labels, variant = checkpoint_labels(meta, path), meta.get("variant")
    beside = path.with_name("labels.txt")
    if labels is None and beside.is_file():
        labels = [line.strip() for line in beside.read_text(encoding="utf-8").splitlines() if line.strip()]
    return sd, labels, variant


STATE = "state.safetensors"


def save_state(folder: Path, tensors: dict, info: dict) -> None:
    """The state to resume from: tensors (model parameters, optimizer moments) with the JSON
    info in the same file's metadata, written atomically: a kill leaves the old state or the
    new one, never one's tensors with the other's info."""
    folder.mkdir(parents=True, exist_ok=True)
    _atomic(folder / STATE, lambda p: save_file(
        {k: v.detach().contiguous().clone() for k, v in tensors.items()}, str(p), metadata={"info": json.dumps(info)}))


def load_state(folder: Path, log=None) -> tuple[dict, dict] | None:
    """The saved state, or None when there is none; a damaged one (cut short, overwritten) is
    one warning, and that phase starts again."""
    path = folder / STATE
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as f:
            info = json.loads((f.metadata() or {})["info"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        if not isinstance(info, dict):
            raise ValueError("info is not an object")
    except (SafetensorError, OSError, ValueError, KeyError) as e:
        if log:
            log(f"warning: {path}: the saved training state is damaged ({str(e).splitlines()[0][:120]}); "
                "that phase starts again")
        return None
    return tensors, info


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    """An optimizer's state as flat tensors plus JSON (for save_state): the per-parameter state,
    and each group's settings (a learning-rate schedule changes them as it goes)."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"opt.{pid}.{k}"] = v
            else:
                scalars[f"{pid}.{k}"] = v
    groups = [{k: v for k, v in g.items() if k != "params"} for g in sd["param_groups"]]
    return tensors, {"state": scalars, "groups": groups}


def restore_optimizer(opt: torch.optim.Optimizer, tensors: dict, saved: dict) -> None:
    sd = opt.state_dict()
    state = {}
    for name, v in tensors.items():
        if name.startswith("opt."):
            _, pid, k = name.split(".", 2)
            state.setdefault(int(pid), {})[k] = v
    for name, v in saved["state"].items():
        pid, k = name.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    sd["state"] = state
    sd["param_groups"] = [{**g, **{k: tuple(v) if isinstance(v, list) else v for k, v in s.items()}}
                          for g, s in zip(sd["param_groups"], saved["groups"])]
    opt.load_state_dict(sd)
