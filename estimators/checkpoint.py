"""TransformerLens checkpoint folders and users' JSON files: the lowest loading layer.

A checkpoint folder is `config.json` (HookedTransformerConfig fields) + `model.safetensors`
(the state dict), the format documented in the README. Weights are only ever read as
safetensors: no pickle is unpickled. `estimators.loading` (which knows the zoo) and
`estimators.zoo` (which stores its weights as checkpoints) both build on this module, so
neither imports the other for it (no loading ↔ zoo import circle).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from estimators.device import resolve_device

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class LoadError(ValueError):
    """A model or SAE could not be loaded; the message says why and what to do."""


# ---------------------------------------------------------------------------------- checkpoints

def _config_to_json(cfg) -> dict:
    out = {}
    for k, v in cfg.to_dict().items():
        if k in ("device",):
            continue
        if isinstance(v, torch.dtype):
            v = str(v).removeprefix("torch.")
        try:
            json.dumps(v)
        except TypeError:
            continue
        out[k] = v
    return out


def _config_from_json(d: dict):
    from transformer_lens import HookedTransformerConfig
    import dataclasses

    d = dict(d)
    if "dtype" in d and isinstance(d["dtype"], str):
        d["dtype"] = getattr(torch, d["dtype"])
    init_fields = {f.name for f in dataclasses.fields(HookedTransformerConfig) if f.init}
    unknown = sorted(set(d) - init_fields)
    d = {k: v for k, v in d.items() if k in init_fields}
    missing = [k for k in ("n_layers", "d_model", "n_ctx", "d_head", "act_fn") if k not in d
               and not (k == "act_fn" and d.get("attn_only"))]
    if missing:
        raise LoadError(f"{CONFIG_FILE} lacks required HookedTransformerConfig fields {missing}")
    try:
        cfg = HookedTransformerConfig(**d)
    except Exception as e:  # the config's own validation
        raise LoadError(f"{CONFIG_FILE} is not a valid HookedTransformerConfig: {e}") from e
    return cfg, unknown


def save_checkpoint(model, folder: str | Path, extra_config: dict | None = None) -> Path:
    """Save a HookedTransformer as `config.json` + `model.safetensors` in `folder`."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = _config_to_json(model.cfg)
    if extra_config:
        config.update(extra_config)
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE))
    return folder


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not path.exists():
        raise LoadError(f"{path} does not exist")
    try:
        return load_file(str(path))
    except Exception as e:
        raise LoadError(
            f"{path.name} in {path.parent} is not a readable safetensors file "
            f"(corrupted or truncated?): {e}") from e


def read_json_file(path: str | Path, what: str = "") -> Any:
    """Any JSON document from a user's file; a missing file, an oversized or too deeply nested
    document or bad JSON is one clear LoadError (a ValueError) naming `what` the file is for.
    The size and depth limits are `estimators.validation`'s (`loads_json`)."""
    from estimators.validation import InputError, read_json_path

    try:
        return read_json_path(path, what)
    except InputError as e:
        raise LoadError(str(e)) from None


def read_json(path: Path, what: str = "") -> dict:
    """A JSON object from a file (configs, cards, input distributions)."""
    d = read_json_file(path, what)
    if not isinstance(d, dict):
        raise LoadError(f"{path} must hold a JSON object")
    return d


def load_checkpoint(folder: str | Path, device: str | torch.device | None = "cpu"):
    """Load a TransformerLens checkpoint folder written by `save_checkpoint` (or by hand)."""
    from transformer_lens import HookedTransformer

    folder = Path(folder)
    if not folder.is_dir():
        raise LoadError(f"{folder} is not a folder")
    cfg, _unknown = _config_from_json(read_json(folder / CONFIG_FILE))
    state = read_safetensors(folder / WEIGHTS_FILE)
    dev = resolve_device(device)
    cfg.device = str(dev)
    model = HookedTransformer(cfg, move_to_device=False)
    result = model.load_state_dict(state, strict=False)
    # Buffers TransformerLens builds itself (IGNORE, mask) may be absent from a hand-made file.
    missing = [k for k in result.missing_keys if not k.endswith((".IGNORE", ".mask"))]
    if missing or result.unexpected_keys:
        raise LoadError(
            f"{folder / WEIGHTS_FILE} does not match {CONFIG_FILE}: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {result.unexpected_keys[:5]}")
    params = dict(model.named_parameters())
    for name, tensor in state.items():
        if name in params and not torch.isfinite(tensor).all():
            raise LoadError(f"{folder / WEIGHTS_FILE}: tensor {name} holds NaN or infinite values")
    model.to(dev, print_details=False)  # TL prints to stdout otherwise, breaking --json
    model.eval()
    return model
