"""Model and SAE loaders, and the checks that must pass before anything runs.

Model sources, tried in this order for a string `source`:
  1. a zoo name (`estimators.zoo`),
  2. a local TransformerLens checkpoint folder: `config.json` (HookedTransformerConfig fields) +
     `model.safetensors` (the state dict) — the format documented in the README,
  3. a local Hugging Face model folder (`config.json` with `model_type`), booted offline with
     `TransformerBridge.boot_transformers`,
  4. a pretrained name on the Hugging Face hub (needs the network; a clear error without it).
SAE sources: a zoo model's built-in SAE ("zoo" or the zoo name), a folder saved by sae_lens
(`SAE.load_from_disk`), or "release/sae_id" through `SAE.from_pretrained` when online.

Weights are only ever read as safetensors: no pickle is unpickled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from estimators.checkpoint import (CONFIG_FILE, WEIGHTS_FILE, LoadError,  # noqa: F401
                                  _config_from_json, _config_to_json, load_checkpoint,
                                  read_json, read_json_file, read_safetensors,
                                  save_checkpoint)
from estimators.device import resolve_device


@dataclass
class LoadedModel:
    model: Any  # transformer_lens.HookedTransformer (or a TransformerBridge for HF folders)
    name: str  # what the user asked for
    kind: str  # "zoo" | "checkpoint" | "hf-folder" | "hub"
    card: dict = field(default_factory=dict)

    @property
    def zoo_entry(self):
        if self.kind != "zoo":
            return None
        from estimators import zoo
        return zoo.get(self.name)


def _is_hf_folder(folder: Path) -> bool:
    cfg = folder / CONFIG_FILE
    if not cfg.exists():
        return False
    try:
        doc = read_json_file(cfg)
    except LoadError:
        return False
    return isinstance(doc, dict) and "model_type" in doc


def load_hf_folder(folder: str | Path, device="cpu"):
    """Boot a local Hugging Face folder offline through TransformerBridge, with TransformerLens
    hook names (compatibility mode)."""
    from transformer_lens.model_bridge import TransformerBridge

    try:
        bridge = TransformerBridge.boot_transformers(str(folder), device=str(resolve_device(device)))
    except Exception as e:
        raise LoadError(f"could not load the Hugging Face model folder {folder}: {e}") from e
    try:
        bridge.enable_compatibility_mode(disable_warnings=True)
    except Exception:  # older bridges have no compatibility mode; hook names may differ
        pass
    bridge.eval()
    return bridge


def load_model(source: str, device: str | torch.device | None = "cpu") -> LoadedModel:
    """Load a model from a zoo name, a checkpoint folder, a Hugging Face folder or a hub name."""
    from estimators import zoo

    source = (source or "").strip()
    if not source:
        raise LoadError("no model given")
    if source in zoo.names():
        entry = zoo.get(source)
        return LoadedModel(entry.load_model(device), source, "zoo", entry.card())
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise LoadError(f"{source} is a file; a model is a folder with {CONFIG_FILE} and "
                            f"{WEIGHTS_FILE} (see the README's checkpoint format)")
        if (path / WEIGHTS_FILE).exists() and not _is_hf_folder(path):
            return LoadedModel(load_checkpoint(path, device), source, "checkpoint")
        if _is_hf_folder(path):
            return LoadedModel(load_hf_folder(path, device), source, "hf-folder")
        raise LoadError(f"{source} holds neither a TransformerLens checkpoint ({CONFIG_FILE} + "
                        f"{WEIGHTS_FILE}) nor a Hugging Face model folder")
    if "/" in source and (source.startswith((".", "~")) or source.count("/") > 1):
        raise LoadError(f"folder {source} does not exist")
    return LoadedModel(load_from_hub(source, device), source, "hub")


def load_from_hub(name: str, device="cpu"):
    from transformer_lens import HookedTransformer

    try:
        return HookedTransformer.from_pretrained(name, device=str(resolve_device(device)))
    except Exception as e:
        from estimators import zoo
        raise LoadError(
            f"{name!r} is not a zoo model ({', '.join(zoo.names())}) nor a local folder, and "
            f"fetching it from the Hugging Face hub failed (is this machine offline?): "
            f"{type(e).__name__}: {str(e)[:200]}") from e


# ------------------------------------------------------------------------------------------ SAEs

def hook_width(model, hook_name: str) -> int:
    """The last-axis width of the activations at `hook_name`, found by one tiny forward pass."""
    if hook_name not in model.hook_dict:
        raise LoadError(f"the model has no hook point {hook_name!r}")
    tokens = torch.zeros((1, min(2, model.cfg.n_ctx)), dtype=torch.long, device=model.cfg.device)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=[hook_name])
    return int(cache[hook_name].shape[-1])


def sae_hook_name(sae) -> str:
    meta = getattr(sae.cfg, "metadata", None)
    name = getattr(meta, "hook_name", None) if meta is not None else None
    if not name:
        name = getattr(sae.cfg, "hook_name", None)
    if not name:
        raise LoadError("the SAE's config names no hook (cfg.metadata.hook_name)")
    return name


def validate_sae(sae, model) -> None:
    """Fail clearly if the SAE cannot be applied to this model: unknown hook or wrong width."""
    hook = sae_hook_name(sae)
    if hook not in model.hook_dict:
        raise LoadError(f"the SAE reads hook {hook!r}, which this model does not have")
    width = hook_width(model, hook)
    if int(sae.cfg.d_in) != width:
        raise LoadError(f"the SAE expects d_in={sae.cfg.d_in} at {hook!r}, but the model's "
                        f"activations there have width {width}")


def load_sae(source: str, model: LoadedModel | None = None, device="cpu"):
    """Load an SAE and, given the model, validate it before returning."""
    from sae_lens import SAE

    source = (source or "").strip()
    dev = str(resolve_device(device))
    if source in ("zoo", "builtin") or (model is not None and model.kind == "zoo"
                                         and source == model.name):
        if model is None or model.kind != "zoo":
            raise LoadError("only zoo models have a built-in SAE; give an SAE folder instead")
        sae = model.zoo_entry.load_sae(dev)
    elif Path(source).expanduser().is_dir():
        folder = Path(source).expanduser()
        _check_sae_folder(folder)
        try:
            sae = SAE.load_from_disk(str(folder), device=dev)
        except Exception as e:
            raise LoadError(f"could not load the SAE in {folder}: {type(e).__name__}: {e}") from e
    elif "/" in source and not Path(source).exists() and source.count("/") >= 1 and \
            not source.startswith((".", "~", "/")):
        release, sae_id = source.split("/", 1)
        try:
            sae = SAE.from_pretrained(release, sae_id, device=dev)
        except Exception as e:
            raise LoadError(f"SAE {source!r} is not a local folder, and fetching it as "
                            f"release/sae_id failed (offline?): {type(e).__name__}: "
                            f"{str(e)[:200]}") from e
        if isinstance(sae, tuple):
            sae = sae[0]
    else:
        raise LoadError(f"SAE {source!r} not found: give 'zoo', a folder saved by sae_lens, or "
                        f"release/sae_id")
    if model is not None:
        validate_sae(sae, model.model)
    sae.eval()
    return sae


def _check_sae_folder(folder: Path) -> None:
    cfg = folder / "cfg.json"
    weights = folder / "sae_weights.safetensors"
    if not cfg.exists() or not weights.exists():
        raise LoadError(f"{folder} is not an SAE folder: it needs cfg.json and "
                        f"sae_weights.safetensors (as written by sae_lens' save_model)")
    read_json(cfg)
    read_safetensors(weights)  # corrupt or truncated files fail here, clearly
