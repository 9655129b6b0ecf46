"""`python -m estimators propagate`: run the activation model once and print sites, surprise,
output and cost.

    python -m estimators propagate --model induction --mask full --samples 1024 --json
    python -m estimators propagate --model path/to/mlp_folder --input-dist dist.json --mask full

--model: a zoo name, a TransformerLens checkpoint or Hugging Face folder (then --data is
needed), or a plain MLP folder (config.json {"kind": "mlp", ...} + model.safetensors). A
transformer the activation engine's conformance check refuses is one error line (exit 2).
--mask: naive, full,
topk:K, position-blocks, or a JSON file written by CovarianceMask.to_dict().
--data: real inputs (transformers; default: the zoo model's generator): a data spec of
`estimators.data` (zoo, tokens:FILE.json, text:PATH, hf:FOLDER; ,n=,len=,seed=); --tokens FILE is
the same as --data tokens:FILE.
--input-dist: {"mean": [...], "cov": [[...]]} (MLPs; default standard normal).
--units SPEC [SPEC]: model only some units, the rest held at the real activations
(`estimators.activation.scale`): first:K, top-variance:K or 3,17,42 at the residual sites;
firing:K for the SAE site's K most frequent features. An Activation model page file given as
--mask brings the unit subset its chain used (context "units") unless --units is given.
--time-budget SECONDS: K (--samples) and N (--n-inputs) chosen from a timed pilot to fit the
run into SECONDS; the plan (per-sample and per-input seconds, predicted and measured seconds)
is printed under "budget".
--distance-method auto (default: Ledoit–Wolf covariance of the real activations when N < the
site's dimension, else the ridge) | ridge | ledoit-wolf; every site also reports kl_marginal,
the mean over units of the per-unit Gaussian KL(real ‖ est).
--output-code continuous (default: the output site's real values, e.g. the logits, coded jointly
under the propagated Gaussian at --epsilon per coordinate) | argmax (the model's argmax tokens);
accounting.py derives both.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from estimators.loading import read_json_file


def register(subparsers) -> None:
    from estimators.cli import add_common_json, progress_flag

    p = subparsers.add_parser(
        "propagate", help="activation model: propagate Gaussians under a covariance mask",
        description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="zoo name, checkpoint folder or MLP folder")
    p.add_argument("--sae", default=None, help="SAE: 'zoo', an sae_lens folder, release/id")
    p.add_argument("--sites", nargs="+", default=None, help="site names (default: residual "
                   "stream at every block boundary, the SAE site, logits)")
    p.add_argument("--positions", nargs="+", type=int, default=None,
                   help="positions modelled (default: all when small, else the last few)")
    p.add_argument("--mask", default="naive",
                   help="naive | full | topk:K | position-blocks | FILE.json")
    p.add_argument("--samples", type=int, default=512, help="K samples per sampled transition")
    p.add_argument("--n-inputs", type=int, default=512, help="real inputs for the ground truth")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--input-dist", default=None, help="MLP input distribution JSON")
    p.add_argument("--data", default=None,
                   help="real inputs: zoo, tokens:FILE.json, text:PATH, hf:FOLDER[:COLUMN] "
                        "with options ,n=,len=,seed= (default: the zoo generator)")
    p.add_argument("--tokens", default=None,
                   help="JSON [[token ids]] of real inputs (same as --data tokens:FILE)")
    p.add_argument("--bits-per-parameter", type=float, default=None,
                   help="S(π) bits per tracked covariance (default ½·log2 N)")
    p.add_argument("--epsilon", type=float, default=1e-2,
                   help="quantisation ε of the continuous output code, per coordinate (logits: "
                        "nats; default 0.01)")
    p.add_argument("--output-code", choices=["continuous", "argmax"], default="continuous",
                   help="S(Y|π): the output site's real values coded jointly under the "
                        "propagated Gaussian at ε (default), or the model's argmax tokens "
                        "(logits sites)")
    p.add_argument("--search", choices=["greedy", "gradient"], default=None,
                   help="search for a better argument from --mask; adds search.path to the "
                        "output (steps with argument_bits, data_bits, total_bits, switched_on)")
    p.add_argument("--search-steps", type=int, default=5,
                   help="greedy steps or gradient updates (default 5)")
    p.add_argument("--cumulants", type=int, choices=(2, 3, 4), default=None,
                   help="plain MLPs: cumulant order tracked (2 Gaussian closure, default; 3 + "
                   "factored third cumulants and two fourth-cumulant slices; 4 + the whole "
                   "fourth cumulant, factored, O(width^4) per layer)")
    p.add_argument("--hermite-order", type=int, default=None,
                   help="plain MLPs: terms of the Hermite series for covariances (1-12, "
                   "default 4)")
    p.add_argument("--units", nargs="+", default=None, metavar="SPEC",
                   help="model only these units (the rest stay real): first:K, "
                        "top-variance:K or a list 3,17,42 at the residual sites; firing:K "
                        "for the SAE site's most frequent features (transformers)")
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="choose --samples K and --n-inputs N to fit this many seconds, from "
                        "one timed pilot (K = N = 16); stated under 'budget'")
    p.add_argument("--distance-method", choices=["auto", "ridge", "ledoit-wolf"],
                   default="auto", help="covariance of the real side of the joint KL/W2: "
                   "ridge λ·I, Ledoit-Wolf shrinkage, or auto (Ledoit-Wolf when N < dim)")
    progress_flag(p)
    add_common_json(p)
    p.set_defaults(func=run_cli)


def parse_mask(spec: str, layouts) -> "CovarianceMask":
    from estimators.activation.masks import CovarianceMask

    if spec in ("naive", "full", "position-blocks"):
        return CovarianceMask.preset(spec, layouts)
    if spec.startswith("topk:"):
        try:
            k = int(spec.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"--mask {spec}: k must be an integer (topk:16)") from None
        return CovarianceMask.preset("topk", layouts, k=k)
    doc, _ = read_mask_file(spec)
    mask = CovarianceMask.from_dict(doc)
    mask.validate(layouts)
    return mask


def read_mask_file(spec: str) -> tuple[dict, dict | None]:
    """(mask dict, context or None) from a bare mask JSON (CovarianceMask.to_dict) or the
    Activation model page's explanation file (kind covariance-mask), whose context carries the
    page's settings (positions, sites) the mask was made for."""
    from estimators.explanation import unwrap

    if not spec.endswith(".json") and not Path(spec).exists():
        raise ValueError(f"--mask {spec!r}: give naive, full, topk:K, position-blocks or a "
                         f"JSON file")
    return unwrap(read_json_file(spec, "mask"), "covariance-mask")


def _page_defaults(args) -> None:
    """Unset --positions/--sites/--units come from a page's explanation file given as --mask,
    so a mask downloaded from the page fits the CLI's chain (otherwise --positions defaults to
    the page's own default, `page_positions`, in `build_chain`). The file's K, N and time
    budget are not taken: --samples, --n-inputs and --time-budget say them."""
    if args.mask in ("naive", "full", "position-blocks") or args.mask.startswith("topk:"):
        return
    _, context = read_mask_file(args.mask)
    settings = (context or {}).get("settings") or {}
    if not isinstance(settings, dict):
        return
    if args.positions is None and isinstance(settings.get("positions"), list):
        args.positions = [int(p) for p in settings["positions"]
                          if isinstance(p, int) and not isinstance(p, bool)]
    if args.sites is None and isinstance(settings.get("sites"), list) and settings["sites"]:
        args.sites = [str(s) for s in settings["sites"]]
    if getattr(args, "units", None) is None:
        args.units = file_units(context)


# The Activation model page's unit settings (one definition for the page and for a page file
# read here): "auto" models every unit of a residual stream at most AUTO_FULL_WIDTH wide (every
# zoo model) and, on wider ones, the top-variance units that keep a residual site at
# DEFAULT_MAX_DIM variables; "all"; "first", "top-variance" (K residual units); "firing" (the
# SAE site's K most frequent features, every residual unit).
UNIT_MODES = ("auto", "all", "first", "top-variance", "firing")
AUTO_FULL_WIDTH = 128  # residual widths above this get an automatic unit subset on the page


def page_units(mode: str, count: int, d_model: int, n_positions: int) -> str | None:
    """The `--units` spec (`scale.parse_units`) of the page's unit setting, or None for every
    unit. mode: one of UNIT_MODES; count: K (units or features; ignored for auto/all);
    d_model: residual width; n_positions: positions modelled. Raises ValueError (one line) for
    an unknown mode or a K outside 1..d_model (first, top-variance) or below 1 (firing)."""
    if mode not in UNIT_MODES:
        raise ValueError(f"units {mode!r}: use one of {', '.join(UNIT_MODES)}")
    if mode == "all":
        return None
    if mode == "auto":
        if d_model <= AUTO_FULL_WIDTH:
            return None
        return f"top-variance:{max(1, min(d_model, DEFAULT_MAX_DIM // max(1, n_positions)))}"
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"units {mode}: the count K must be a whole number ≥ 1, not {count!r}")
    if mode != "firing" and count > d_model:
        raise ValueError(f"units {mode}:{count}: the residual stream has {d_model} units")
    return f"{mode}:{count}"


def file_units(context: dict | None) -> list[str] | None:
    """The unit specs of the chain a page explanation file was made on: its context's `units`
    (the chain's own record, `chain.info["units"]`: {"resid": spec | None, "sae": spec |
    None}); None (every unit) when absent. Raises ValueError (one line) for a malformed
    record; the specs are checked by `scale.parse_units`."""
    from estimators.activation import scale

    rec = (context or {}).get("units")
    if rec is None:
        return None
    if not isinstance(rec, dict) or not all(isinstance(rec.get(k), (str, type(None)))
                                            for k in ("resid", "sae")):
        raise ValueError("the file's context 'units' must be {\"resid\": spec or null, "
                         "\"sae\": spec or null}")
    specs = [rec[k] for k in ("resid", "sae") if rec.get(k)]
    if not specs:
        return None
    scale.parse_units(specs)  # one line when malformed
    return specs


DEFAULT_MAX_DIM = 128  # positions × d_model of the default residual sites (page and CLI)


def page_positions(lm, n_ctx: int) -> list[int]:
    """The Activation model page's default positions: the last ⌊128 / d_model⌋ (≥ 1), always
    including the position the logits read (the zoo entry's label position, else the last)."""
    from estimators.activation.chain import default_positions

    entry = lm.zoo_entry
    lp = getattr(entry, "label_position", None) if entry is not None else None
    return default_positions(n_ctx, int(lm.model.cfg.d_model), DEFAULT_MAX_DIM,
                             -1 if lp is None else lp)


def build_chain(args):
    from estimators import conformance
    from estimators.activation.chain import chain_for_zoo, transformer_chain
    from estimators.activation.mlp import is_mlp_folder, load_input_distribution, load_mlp
    from estimators.device import resolve_device
    from estimators.loading import load_model, load_sae

    device = str(resolve_device(args.device))
    if getattr(args, "units", None) and is_mlp_folder(args.model):
        raise ValueError("--units applies to transformers, not plain MLPs")
    if args.n_inputs < 2:
        raise ValueError("--n-inputs must be at least 2")
    if is_mlp_folder(args.model):
        from estimators.activation.cumulants import cumulant_chain

        if args.sae:
            raise ValueError("--sae applies to transformers, not plain MLPs")
        if args.data or args.tokens:
            raise ValueError("--data/--tokens apply to transformers; a plain MLP takes "
                             "--input-dist")
        mlp = load_mlp(args.model, device=device)
        from estimators.validation import require_memory
        require_memory(2.0 * args.n_inputs * sum(mlp.widths) * 8, f"--n-inputs {args.n_inputs}")
        d_in = mlp.widths[0]
        if args.input_dist:
            mean, cov = load_input_distribution(args.input_dist, dim=d_in)
        else:
            mean = torch.zeros(d_in, dtype=torch.float64)
            cov = torch.eye(d_in, dtype=torch.float64)
        if not args.epsilon > 0:
            raise ValueError("--epsilon must be > 0")
        if args.cumulants == 4 and not (args.mask == "naive" and args.search is None):
            # the naive argument's diagonal path never forms the fourth cumulant
            from estimators.activation.cumulants import check_k4_memory
            check_k4_memory(mlp)  # one line before allocating: the cap, then this machine
        return cumulant_chain(mlp, mean.to(device), cov.to(device),
                              cumulants=args.cumulants or 2,
                              hermite_order=4 if args.hermite_order is None else
                              args.hermite_order, n_empirical=args.n_inputs, seed=args.seed,
                              epsilon=args.epsilon, device=device)
    if args.cumulants is not None or args.hermite_order is not None:
        raise ValueError("--cumulants and --hermite-order are for plain MLP folders")
    if args.input_dist:
        raise ValueError("--input-dist is for plain MLP folders; transformers take --data")
    lm = getattr(args, "_lm", None) or load_model(args.model, device)
    args._lm = lm  # a --time-budget pilot and the run share the model
    conformance.require(lm.model, "activation")  # one line when this engine refuses the model
    from estimators.validation import require_memory, transformer_activation_bytes
    require_memory(transformer_activation_bytes(lm.model.cfg, args.n_inputs + args.samples),
                   f"--n-inputs {args.n_inputs} with --samples {args.samples}")
    sae = getattr(args, "_sae", None) or (load_sae(args.sae, lm, device) if args.sae else None)
    args._sae = sae
    units = getattr(args, "units", None)
    data = args._data if hasattr(args, "_data") else _data(args, lm)
    args._data = data
    tokens = None if data is None else data.tokens
    if tokens is not None and getattr(args, "time_budget", None) is not None:
        tokens = tokens[:args.n_inputs]  # the budget's N (the pilot's, then the run's)
    args.data_tokens = tokens  # the search's mixture variables
    if data is not None:
        positions = args.positions or page_positions(lm, int(tokens.shape[1]))
        return transformer_chain(lm.model, tokens, sites=args.sites, positions=positions,
                                 sae=sae, samples=args.samples, seed=args.seed, units=units,
                                 progress=_progress(args))
    if lm.kind != "zoo":
        raise ValueError("a non-zoo transformer needs real inputs: pass --data (tokens:FILE."
                         "json, text:PATH or hf:FOLDER)")
    positions = args.positions or page_positions(
        lm, int(lm.zoo_entry.sample(1, seed=0).tokens.shape[1]))
    return chain_for_zoo(lm, sae=sae, n_inputs=args.n_inputs, samples=args.samples,
                         seed=args.seed, sites=args.sites, positions=positions, units=units,
                         progress=_progress(args))


def _progress(args):
    """The stderr progress line of the chain build (real activations), or None (--progress)."""
    from estimators.cli import progress_printer

    return progress_printer("propagate", getattr(args, "progress", None))


def _with_code(chain, args):
    """The chain with S(Y|π) scoring its output by --output-code at --epsilon."""
    from estimators.activation.chain import with_output_code

    if args.output_code == "argmax":
        return with_output_code(chain, "argmax")
    return with_output_code(chain, "continuous", args.epsilon)


def _search_inputs(args):
    """(tokens, labels, n_ctx) of the chain's real inputs, for mixture variables."""
    from estimators import zoo
    from estimators.activation.mlp import is_mlp_folder

    if is_mlp_folder(args.model):
        return None, None, None
    t = getattr(args, "data_tokens", None)
    if t is not None:
        return t, None, int(t.shape[1])
    if args.model in zoo.names():
        b = zoo.get(args.model).sample(int(args.n_inputs), seed=int(args.seed))
        return b.tokens, b.labels, int(b.tokens.shape[1])
    return None, None, None


def _search(args, prop) -> dict:
    from estimators.activation.search import gradient_search, greedy_search

    if args.search == "greedy":
        tokens, labels, n_ctx = _search_inputs(args)
        res = greedy_search(prop, max_steps=args.search_steps, tokens=tokens, labels=labels,
                            n_ctx=n_ctx)
    else:
        res = gradient_search(prop, steps=args.search_steps)
    d = res.to_dict()
    d["method"] = args.search
    return d


def _data(args, lm):
    """The inputs of --data / --tokens (None: the zoo generator with --n-inputs and --seed).
    --tokens FILE keeps its old meaning: every sequence of the file."""
    from estimators.data import load_data, parse_spec

    if args.tokens and args.data:
        raise ValueError("give --data or --tokens, not both")
    if args.tokens:
        data = load_data(f"tokens:{args.tokens}", lm, n=2 ** 62)
    elif args.data:
        src = parse_spec(args.data, n=args.n_inputs, seed=args.seed)
        if src.kind == "zoo" and src.path in (None, lm.name) and lm.kind == "zoo":
            src.load(lm)  # validates len=
            args.n_inputs, args.seed = src.n, src.seed  # the zoo path keeps its label position
            return None
        data = src.load(lm)
    else:
        return None
    if len(data) < 2:
        raise ValueError(f"{data.source.spec}: at least 2 sequences are needed")
    return data


def run_cli(args) -> dict:
    from estimators.activation.engine import Propagator

    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
    t0 = time.perf_counter()
    if args.search is not None and args.search_steps < 1:
        raise ValueError("--search-steps must be at least 1")
    _page_defaults(args)
    if not args.epsilon > 0 or args.epsilon == float("inf"):
        raise ValueError("--epsilon must be a positive number")
    plan = _plan_budget(args) if args.time_budget is not None else None
    t_run = time.perf_counter()
    chain = _with_code(build_chain(args), args)
    mask = parse_mask(args.mask, chain.layouts)
    prop = Propagator(chain, mask, bits_per_parameter=args.bits_per_parameter,
                      distance_method=args.distance_method)
    if args.search is not None:
        search = _search(args, prop)
        prop.set_mask(mask)  # the top level reports the stated mask; `search` the best one
    res = prop.run(progress=_progress(args))
    if plan is not None:
        plan.run_seconds = time.perf_counter() - t_run
    out = res.to_dict()
    if args.search is not None:
        out["search"] = search
    out["mask"] = mask.to_dict()
    out["mask_hash"] = mask.hash()
    out["chain"] = chain.to_dict()
    out["cost"]["total_seconds_with_ground_truth"] = time.perf_counter() - t0
    out["layers"] = [{"name": name, "estimate_mean": est.mean.tolist(),
                      "empirical_mean": chain.empirical_stats(name)[0].tolist()}
                     for name, est in res.sites.items()]
    out["distance_method"] = args.distance_method
    if plan is not None:
        out["budget"] = plan.to_dict()
    return out


def _plan_budget(args):
    """K and N for --time-budget from one timed pilot (scale.pilot); sets args.samples and
    args.n_inputs. Transformers only."""
    from estimators.activation import scale
    from estimators.activation.mlp import is_mlp_folder

    if is_mlp_folder(args.model):
        raise ValueError("--time-budget applies to transformers")
    if not (args.time_budget > 0 and args.time_budget < float("inf")):
        raise ValueError("--time-budget must be a positive number of seconds")
    from estimators.device import resolve_device
    from estimators.loading import load_model

    args._lm = load_model(args.model, str(resolve_device(args.device)))
    data = args._data = _data(args, args._lm)  # loaded once, kept on args
    n_available = scale.N_BOUNDS[1] if data is None else len(data)

    def build(samples, n_inputs):
        args.samples, args.n_inputs = samples, n_inputs
        return _with_code(build_chain(args), args)

    plan = scale.pilot(build, lambda ch: parse_mask(args.mask, ch.layouts), n_available,
                       args.time_budget)
    args.samples, args.n_inputs = plan.samples, plan.n_inputs
    return plan
