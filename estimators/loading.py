"""Model and SAE loaders, and the checks that must pass before anything runs.

Model sources, tried in this order for a string `source`:
  1. a zoo name (`estimators.zoo`),
  2. a local TransformerLens checkpoint folder: `config.json` (HookedTransformerConfig fields) +
     `model.safetensors` (the state dict) — the format documented in the README,
  3. a local Hugging Face model folder (`config.json` with `model_type`), converted offline
     into a HookedTransformer by TransformerLens' own config and weight conversion (architectures
     it cannot convert boot through `TransformerBridge`; see `load_hf_folder`),
  4. a pretrained name on the Hugging Face hub (needs the network; a clear error without it).
SAE sources: a zoo model's built-in SAE ("zoo" or the zoo name), a folder saved by sae_lens
(`SAE.load_from_disk`), or "release/sae_id" through `SAE.from_pretrained` when online.

Weights are only ever read as safetensors: no pickle is unpickled.
"""

from __future__ import annotations

import contextlib
import json
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
    model: Any  # transformer_lens.HookedTransformer (a TransformerBridge for HF architectures
    # TransformerLens cannot convert)
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


# Compatibility shims for TransformerLens' config conversion under transformers ≥ 5: fields that
# TL's converter reads and that transformers no longer writes to config.json, by model_type.
_HF_CONFIG_SHIMS = {"gpt2": {"n_ctx": "n_positions"}}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


class _ConversionUnsupported(Exception):
    """TransformerLens cannot convert this folder into a HookedTransformer (reason in str)."""


def _hf_dtype(config: dict) -> torch.dtype:
    name = config.get("dtype") or config.get("torch_dtype") or "float32"
    dt = getattr(torch, str(name).removeprefix("torch."), None)
    return dt if isinstance(dt, torch.dtype) and dt.is_floating_point else torch.float32


def _tl_config_folder(config: dict) -> Path:
    """A private folder holding the HF config as TransformerLens' converter expects it.

    TL's `convert_hf_model_config` picks the architecture from the *name* when it contains
    "llama" or "gemma" (then reads no config at all), and reads GPT-2's `n_ctx`, which
    transformers 5 no longer saves. So the converter is given a neutral path with a config that
    names its architecture and carries those fields."""
    import tempfile
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    config = dict(config)
    mtype = config.get("model_type")
    if not config.get("architectures"):
        arch = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(mtype)
        if arch is None:
            raise _ConversionUnsupported(f"model_type {mtype!r} is not a causal language model")
        config["architectures"] = [arch]
    for field_, source in _HF_CONFIG_SHIMS.get(mtype, {}).items():
        if field_ not in config and source in config:
            config[field_] = config[source]
    for _ in range(8):
        tmp = Path(tempfile.mkdtemp(prefix="hew-hf-")) / "model"
        if not any(w in str(tmp).lower() for w in ("llama", "gemma")):
            break
    else:  # pragma: no cover - a temp dir whose path names an architecture, eight times
        raise _ConversionUnsupported("no neutral temporary folder for the config conversion")
    tmp.mkdir()
    (tmp / CONFIG_FILE).write_text(json.dumps(config))
    return tmp


def _hf_tokenizer(folder: Path):
    """(tokenizer or None, note): the folder's own tokenizer, loaded offline."""
    if not any((folder / f).exists() for f in _TOKENIZER_FILES):
        return None, "none in the folder: give token ids (text needs a tokenizer)"
    from transformers import AutoTokenizer
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True), "the folder's"
    except Exception as e:  # noqa: BLE001 - the model still works on token ids
        return None, f"could not be loaded ({type(e).__name__}: {str(e).splitlines()[0][:120]})"


@contextlib.contextmanager
def _quiet_transformers():
    """No progress bars or config warnings from transformers on stdout/stderr while loading
    (the CLI's output is the result, or one error line)."""
    from transformers.utils import logging as hf_logging

    progress, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if progress:
            hf_logging.enable_progress_bar()


def _convert_hf_folder(folder: Path, config: dict, dev: torch.device):
    """HF folder → HookedTransformer through TransformerLens' own conversion, offline:
    `get_pretrained_model_config` (the HF→HookedTransformerConfig mapping) and
    `get_pretrained_state_dict` (the per-architecture weight converters), with unprocessed
    weights (no fold_ln, centring or value-bias folding), so that every hook and the logits equal
    the Hugging Face model's own. Returns (model, card)."""
    import shutil
    import warnings

    import transformer_lens.loading_from_pretrained as tl_loading
    from transformer_lens import HookedTransformer
    from transformers import AutoModelForCausalLM

    dtype = _hf_dtype(config)
    tmp = _tl_config_folder(config)
    try:
        with _quiet_transformers(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if not any(folder.glob("*.safetensors")):
                raise LoadError(f"{folder} holds no .safetensors weights (pickled "
                                f"pytorch_model.bin files are never loaded): re-save it with "
                                f"save_pretrained(..., safe_serialization=True)")
            try:
                hf = AutoModelForCausalLM.from_pretrained(
                    str(folder), local_files_only=True, dtype=dtype,
                    use_safetensors=True).eval()
            except Exception as e:
                raise LoadError(f"could not load the Hugging Face model folder {folder}: "
                                f"{type(e).__name__}: {str(e).splitlines()[0][:200]}") from e
            try:
                cfg = tl_loading.get_pretrained_model_config(
                    str(tmp), hf_cfg=hf.config.to_dict(), dtype=dtype, device=str(dev),
                    fold_ln=False)
                cfg = _fix_tl_config(cfg, hf.config)
                cfg.model_name = folder.name
                cfg.tokenizer_name = None  # the tokenizer is set below, from the folder
                state = tl_loading.get_pretrained_state_dict(str(tmp), cfg, hf, dtype=dtype)
                model = HookedTransformer(cfg, None, move_to_device=False)
                model.load_and_process_state_dict(
                    state, fold_ln=False, center_writing_weights=False, center_unembed=False,
                    fold_value_biases=False, refactor_factored_attn_matrices=False)
            except Exception as e:  # noqa: BLE001 - TL has no conversion for it
                raise _ConversionUnsupported(
                    f"{type(e).__name__}: {' '.join(str(e).split())[:240]}") from e
            model.to(dev, print_details=False)
            model.eval()
            err = _logit_parity(model, hf.to(dev))
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)
    from estimators.conformance import tolerance_for
    tol = tolerance_for(dtype, err["scale"])
    if not err["max_abs_error"] <= tol:
        raise _ConversionUnsupported(
            f"TransformerLens' conversion does not reproduce the Hugging Face model's logits "
            f"(max error {err['max_abs_error']:.3g} > {tol:.1g})")
    tok, tok_note = _hf_tokenizer(folder)
    if tok is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # right padding: TransformerLens then never masks a token-id input implicitly
            model.set_tokenizer(tok, default_padding_side="right")
    card = {"source": "Hugging Face folder", "architecture": cfg.original_architecture,
            "loaded_as": "HookedTransformer (TransformerLens' config and weight conversion; "
                         "weights unprocessed: hooks and logits are the Hugging Face model's)",
            "dtype": str(dtype).removeprefix("torch."),
            "max_logit_error_vs_hugging_face": err["max_abs_error"], "tokenizer": tok_note}
    return model, card


def _fix_tl_config(cfg, hf_config):
    """Fields TransformerLens' config conversion gets wrong for valid HF configs: GPT-2's
    `n_inner` (the MLP width; TL assumes 4·n_embd)."""
    import dataclasses

    fixes = {}
    if cfg.original_architecture == "GPT2LMHeadModel":
        n_inner = getattr(hf_config, "n_inner", None)
        if n_inner and n_inner != cfg.d_mlp:
            fixes["d_mlp"] = int(n_inner)
    return dataclasses.replace(cfg, **fixes) if fixes else cfg


def _logit_parity(model, hf, n_ctx: int = 6) -> dict:
    """Max |logits(converted) − logits(HF)| on two random sequences of ≤ n_ctx token ids."""
    cfg = model.cfg
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, cfg.d_vocab, (2, min(n_ctx, cfg.n_ctx)), generator=g)
    tokens = tokens.to(cfg.device)
    with torch.no_grad():
        try:
            ref = hf(tokens).logits.double()
        except Exception as e:  # noqa: BLE001 - the folder's own model does not run
            raise LoadError(f"the Hugging Face model in this folder does not run on token ids: "
                            f"{type(e).__name__}: {' '.join(str(e).split())[:200]}") from e
        try:
            ours = model(tokens).double()
        except Exception as e:  # noqa: BLE001
            raise _ConversionUnsupported(f"the converted model does not run: "
                                         f"{type(e).__name__}: {str(e)[:200]}") from e
    if ours.shape != ref.shape:
        return {"max_abs_error": float("inf"), "scale": 1.0}
    return {"max_abs_error": float((ours - ref).abs().max()),
            "scale": float(ref.abs().max().clamp_min(1.0))}


def load_hf_folder(folder: str | Path, device="cpu"):
    """A local Hugging Face causal-LM folder (`save_pretrained`), offline.

    Returns (model, card). Architectures TransformerLens can convert (GPT-2, GPT-NeoX/Pythia,
    Llama, Qwen2, Mistral, Gemma, ... — `transformer_lens.loading_from_pretrained`) become a real
    `HookedTransformer` whose logits are checked against the HF model's own on random token ids
    (tolerance `conformance.tolerance_for(dtype)`); every engine runs on it. Others boot through
    `TransformerBridge` (compatibility mode): `info` works, and each engine's conformance check
    says it is not supported. The folder's tokenizer, if any, is attached (`model.tokenizer`).
    Raises LoadError when transformers cannot load the folder at all."""
    folder = Path(folder)
    config = read_json(folder / CONFIG_FILE, "config")
    dev = resolve_device(device)
    try:
        return _convert_hf_folder(folder, config, dev)
    except _ConversionUnsupported as why:
        bridge = _boot_bridge(folder, dev)
        return bridge, {"source": "Hugging Face folder",
                        "architecture": (config.get("architectures") or [None])[0],
                        "loaded_as": "TransformerBridge (no HookedTransformer conversion: "
                                     f"{why}); the engines do not run on it"}


def _boot_bridge(folder: Path, dev: torch.device):
    from transformer_lens.model_bridge import TransformerBridge

    try:
        with _quiet_transformers():
            bridge = TransformerBridge.boot_transformers(str(folder), device=str(dev))
    except Exception as e:
        raise LoadError(f"could not load the Hugging Face model folder {folder}: {e}") from e
    try:
        bridge.enable_compatibility_mode(disable_warnings=True)
    except Exception:  # older bridges have no compatibility mode; hook names may differ
        pass
    bridge.eval()
    return bridge


def require_tokenizer(model, what: str = "text") -> object:
    """The model's tokenizer, or a LoadError saying that `what` needs one and token ids work."""
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise LoadError(f"{what} needs a tokenizer and this model has none (a Hugging Face "
                        f"folder without tokenizer files, or a checkpoint): give token ids")
    return tok


def load_model(source: str, device: str | torch.device | None = "cpu") -> LoadedModel:
    """Load a model from a zoo name, a checkpoint folder, a Hugging Face folder or a hub name."""
    from estimators import zoo

    source = (source or "").strip()
    if not source:
        raise LoadError("no model given")
    if len(source) > 4096 or any(ord(c) < 32 or ord(c) == 127 for c in source):
        raise LoadError("a model name or path must be printable text of at most 4096 characters")
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
            model, card = load_hf_folder(path, device)
            return LoadedModel(model, source, "hf-folder", card)
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
    from estimators import sae_ops
    try:
        return sae_ops.hook_name(sae)
    except sae_ops.SAEMismatch as e:
        raise LoadError(str(e)) from e


def validate_sae(sae, model) -> None:
    """Fail clearly (LoadError, one line) if the SAE cannot be applied to this model: weights
    that are NaN/inf, a hook the model lacks, or a trial encode + decode through sae_lens' own
    methods on the model's real activations at the hook (a few random token inputs) that fails
    or does not give one d_sae-wide latent vector per position and the hook's shape back
    (`estimators.sae_ops.trial_check`). Width is thus judged the way sae_lens applies the SAE:
    a hook_z SAE with d_in = n_heads·d_head and reshape_activations "hook_z" is accepted."""
    from estimators import sae_ops
    try:
        sae_ops.check_finite_weights(sae)
        hook = sae_ops.hook_name(sae)
        if hook not in model.hook_dict:
            raise LoadError(f"the SAE reads hook {hook!r}, which this model does not have")
        sae_ops.trial_check(sae, model)
    except sae_ops.SAEMismatch as e:
        raise LoadError(str(e)) from e


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
