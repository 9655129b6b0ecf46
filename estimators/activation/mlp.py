"""Plain torch MLPs (Linear + ReLU/GELU) and their file formats.

Model folder:
  config.json        {"kind": "mlp", "widths": [d_in, h_1, ..., d_out], "activation": "relu"|"gelu",
                      "final_activation": false}
  model.safetensors  layers.{i}.weight [widths[i+1], widths[i]], layers.{i}.bias [widths[i+1]]
The activation follows every layer but the last (GELU is the exact erf form); with
"final_activation": true (optional, default false) it follows the last layer too (the
WhestBench convention: the output is a post-activation layer).

Input distribution JSON: {"mean": [d_in numbers], "cov": [[d_in × d_in numbers]]}, checked for
shape, finiteness, symmetry (relative tolerance 1e-6) and positive semi-definiteness (smallest
eigenvalue ≥ −1e-8 · largest).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from estimators.activation.closed_form import ACTIVATIONS, apply_activation


class PlainMLP(nn.Module):
    def __init__(self, widths: list[int], activation: str = "relu",
                 final_activation: bool = False):
        super().__init__()
        if len(widths) < 2 or any((not isinstance(w, int)) or w < 1 for w in widths):
            raise ValueError(f"widths must be ≥ 2 positive integers, not {widths!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, not {activation!r}")
        self.widths = list(widths)
        self.activation = activation
        if not isinstance(final_activation, bool):
            raise ValueError(f"final_activation must be true or false, not {final_activation!r}")
        self.final_activation = final_activation
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))

    def forward(self, x: torch.Tensor, return_hidden: bool = False):
        """x [n, d_in] → output [n, d_out]; with return_hidden also the list of post-activation
        hidden layers (the output, post-activation when final_activation, is not in it)."""
        hidden = []
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = apply_activation(x, self.activation)
                hidden.append(x)
            elif self.final_activation:
                x = apply_activation(x, self.activation)
        return (x, hidden) if return_hidden else x

    def config(self) -> dict:
        cfg = {"kind": "mlp", "widths": self.widths, "activation": self.activation}
        if self.final_activation:
            cfg["final_activation"] = True
        return cfg


def random_mlp(widths: list[int], activation: str = "relu", seed: int = 0,
               bias_std: float = 0.0, dtype=torch.float64,
               final_activation: bool = False) -> PlainMLP:
    """He-initialised MLP: W ~ N(0, 2/fan_in), b ~ N(0, bias_std²)."""
    g = torch.Generator().manual_seed(int(seed))
    m = PlainMLP(widths, activation, final_activation).to(dtype)
    with torch.no_grad():
        for layer in m.layers:
            fan_in = layer.weight.shape[1]
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=g, dtype=dtype)
                               * math.sqrt(2.0 / fan_in))
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=g, dtype=dtype) * bias_std)
    return m


def save_mlp(mlp: PlainMLP, folder: str | Path) -> Path:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(mlp.config(), indent=2) + "\n")
    state = {k: v.detach().cpu().contiguous() for k, v in mlp.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    return folder


def is_mlp_folder(path: str | Path) -> bool:
    p = Path(path) / "config.json"
    if not p.exists():
        return False
    try:
        from estimators.validation import read_json_path
        return read_json_path(p).get("kind") == "mlp"
    except (ValueError, AttributeError):
        return False


def load_mlp(folder: str | Path, device="cpu", dtype=torch.float64) -> PlainMLP:
    """Load an MLP folder (module docstring); ValueError with the reason when malformed."""
    from estimators.checkpoint import read_json, read_safetensors

    folder = Path(folder)
    cfg = read_json(folder / "config.json")
    if cfg.get("kind") != "mlp":
        raise ValueError(f"{folder}/config.json: 'kind' must be \"mlp\"")
    widths = cfg.get("widths")
    if not isinstance(widths, list) or not all(isinstance(w, int) for w in widths):
        raise ValueError(f"{folder}/config.json: 'widths' must be a list of integers")
    mlp = PlainMLP(widths, cfg.get("activation", "relu"), cfg.get("final_activation", False))
    state = read_safetensors(folder / "model.safetensors")
    expected = mlp.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise ValueError(f"{folder}/model.safetensors does not match widths {widths}: missing "
                         f"{missing[:4]}, unexpected {extra[:4]}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise ValueError(f"{folder}/model.safetensors: {k} has shape {tuple(v.shape)}, "
                             f"expected {tuple(expected[k].shape)}")
        if not torch.isfinite(v).all():
            raise ValueError(f"{folder}/model.safetensors: {k} holds NaN or infinite values")
    mlp.load_state_dict(state)
    return mlp.to(device=device, dtype=dtype).eval()


def validate_input_distribution(d, dim: int | None = None, dtype=torch.float64):
    """(mean [d], cov [d, d]) from {"mean": [...], "cov": [[...]]}; ValueError when invalid."""
    if not isinstance(d, dict) or "mean" not in d or "cov" not in d:
        raise ValueError('the input distribution must be a JSON object {"mean": [...], '
                         '"cov": [[...]]}')
    try:
        mean = torch.tensor(d["mean"], dtype=dtype)
        cov = torch.tensor(d["cov"], dtype=dtype)
    except (TypeError, ValueError) as e:
        raise ValueError(f"input distribution: mean/cov must be numbers ({e})") from None
    if mean.dim() != 1:
        raise ValueError("input distribution: 'mean' must be a list of numbers")
    n = mean.shape[0]
    if cov.shape != (n, n):
        raise ValueError(f"input distribution: 'cov' must be {n}×{n} (as long as 'mean'), "
                         f"not {tuple(cov.shape)}")
    if dim is not None and n != dim:
        raise ValueError(f"input distribution has dimension {n}, the model's input is {dim}")
    if not (torch.isfinite(mean).all() and torch.isfinite(cov).all()):
        raise ValueError("input distribution holds NaN or infinite values")
    scale = cov.abs().max().clamp_min(1e-300)
    if (cov - cov.T).abs().max() > 1e-6 * scale:
        raise ValueError("input distribution: 'cov' is not symmetric")
    evals = torch.linalg.eigvalsh(0.5 * (cov + cov.T))
    if evals.min() < -1e-8 * evals.max().abs().clamp_min(1e-300):
        raise ValueError(f"input distribution: 'cov' is not positive semi-definite (smallest "
                         f"eigenvalue {float(evals.min()):.3g})")
    return mean, 0.5 * (cov + cov.T)


def load_input_distribution(path: str | Path, dim: int | None = None, dtype=torch.float64):
    from estimators.checkpoint import read_json  # missing file / bad JSON → one clear ValueError

    return validate_input_distribution(read_json(Path(path), "input distribution"), dim, dtype)


# ------------------------------------------------------------------ Monte Carlo truth, sharded

MC_SHARD_SAMPLES = 100_000
MC_BATCH = 50_000


def mlp_payload(mlp: PlainMLP) -> dict:
    """The MLP as a task payload: its config and its weights as safetensors bytes (a worker
    rebuilds it with `mlp_from_payload`; nothing is pickled)."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in mlp.state_dict().items()}
    return {"config": mlp.config(), "weights": save(state)}


def mlp_from_payload(p: dict, device="cpu") -> PlainMLP:
    from safetensors.torch import load

    cfg = p["config"]
    state = load(bytes(p["weights"]))
    mlp = PlainMLP(list(cfg["widths"]), cfg["activation"])
    mlp = mlp.to(next(iter(state.values())).dtype)
    mlp.load_state_dict(state)
    return mlp.to(device).eval()


@torch.no_grad()
def mc_moments_task(p: dict):
    """Task: (Σ y, Σ y²) over p["n"] outputs y = mlp(x), x = mean + L z, z ~ N(0, I) drawn on
    the CPU with seed p["seed"] (so any device gives the same inputs), in batches of
    MC_BATCH; float64 numpy arrays [d_out]."""
    from estimators.distributed import task_device

    dev = task_device(p.get("device", "cpu"))
    mlp = mlp_from_payload(p["mlp"], dev)
    dtype = next(mlp.parameters()).dtype
    d_in, d_out = mlp.widths[0], mlp.widths[-1]
    shift = torch.as_tensor(p["shift"], dtype=dtype) if p.get("shift") is not None else None
    root = torch.as_tensor(p["root"], dtype=dtype) if p.get("root") is not None else None
    g = torch.Generator().manual_seed(int(p["seed"]))
    s = torch.zeros(d_out, dtype=torch.float64, device=dev)
    s2 = torch.zeros(d_out, dtype=torch.float64, device=dev)
    done = 0
    while done < p["n"]:
        b = min(MC_BATCH, p["n"] - done)
        x = torch.randn(b, d_in, generator=g, dtype=dtype)
        if root is not None:
            x = x @ root.T
        if shift is not None:
            x = x + shift
        y = mlp(x.to(dev)).double()
        s += y.sum(0)
        s2 += (y * y).sum(0)
        done += b
    return s.cpu().numpy(), s2.cpu().numpy()


def monte_carlo_moments(mlp: PlainMLP, n: int, seed: int = 0, backend=None,
                        shard_samples: int = MC_SHARD_SAMPLES, mean: torch.Tensor | None = None,
                        cov: torch.Tensor | None = None, progress=None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Monte Carlo truth of the output moments of `mlp` under x ~ N(mean, cov) (default
    N(0, I)): (mean [d_out], variance [d_out]) in float64, from n samples.

    The samples are cut into shards of `shard_samples`; shard i uses seed
    `distributed.shard_seed(seed, i)`, and the driver adds the shards' sums in index order, so
    the answer depends on (n, seed, shard size) only — not on the backend (`estimators.
    distributed`: None = this process, or a Ray backend) or its number of workers. Variance is
    Σy²/n − ȳ² (population form). cov is factored as V·diag(√λ) (eigendecomposition, so a
    singular PSD cov works). Raises ValueError for n < 1."""
    import numpy as np

    from estimators.distributed import LocalBackend, shard_seed, shard_sizes

    if n < 1:
        raise ValueError(f"n must be a positive number of samples, got {n}")
    backend = backend or LocalBackend()
    root = None
    if cov is not None:
        evals, evecs = torch.linalg.eigh(torch.as_tensor(cov, dtype=torch.float64))
        root = (evecs * evals.clamp_min(0).sqrt()).numpy()
    base = {"mlp": mlp_payload(mlp), "device": str(next(mlp.parameters()).device),
            "shift": None if mean is None else torch.as_tensor(mean, dtype=torch.float64).numpy(),
            "root": root}
    sizes = shard_sizes(int(n), int(shard_samples))
    payloads = [{**base, "n": m, "seed": shard_seed(seed, i)} for i, m in enumerate(sizes)]
    parts = [None] * len(payloads)
    for k, (i, r) in enumerate(backend.run(mc_moments_task, payloads)):
        parts[i] = r
        if progress is not None:
            progress((k + 1) / len(payloads))
    s = np.zeros_like(parts[0][0])
    s2 = np.zeros_like(parts[0][1])
    for a, b in parts:  # index order: the same sum whatever the workers
        s, s2 = s + a, s2 + b
    m = torch.from_numpy(s / n)
    return m, torch.from_numpy(s2 / n) - m ** 2
