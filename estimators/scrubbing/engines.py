"""Which scrubbing engine evaluates a model's hypotheses: treeified paths or patched edges.

    choice = choose_engine(model, "auto")        # EngineChoice(engine="edges", reason=...)
    scrubber, choice = make_scrubber(model, data, "auto", seed=0)

`treeified` (treeify.py, `Scrubber`) enumerates the model's treeified paths and takes any path
pattern; it refuses models with more than `paths.DEFAULT_MAX_PATHS` (200,000) paths.
`edges` (edges.py, `EdgeScrubber`) patches edges, any model size, and takes single edges and
whole nodes only. `auto` picks treeified when the path count allows, else edges; the choice
carries a one-line reason that the page and the CLI show. Both engines use the same data,
resampling streams (common random numbers), losses and surprise code (over paths, or over
edges).
"""

from __future__ import annotations

from dataclasses import dataclass

from estimators.scrubbing.paths import DEFAULT_MAX_PATHS, PathError, PathGraph, check_supported

ENGINES = ("auto", "treeified", "edges")


def _count(n: int) -> str:
    """A path count for a message: exact up to a billion, else 2 significant digits."""
    return f"{n:,}" if n < 10 ** 9 else f"{float(n):.2g}"


@dataclass(frozen=True)
class EngineChoice:
    """The engine that runs (`treeified` or `edges`), what was asked for, the model's
    treeified path count and edge count, and why, in one line."""

    engine: str
    requested: str
    n_paths: int
    n_edges: int
    reason: str

    @property
    def unit(self) -> str:
        return "path" if self.engine == "treeified" else "edge"

    def to_dict(self) -> dict:
        return {"engine": self.engine, "requested": self.requested, "reason": self.reason,
                "n_paths": _count(self.n_paths), "n_edges": self.n_edges}


def choose_engine(model, requested: str = "auto",
                  max_paths: int = DEFAULT_MAX_PATHS) -> EngineChoice:
    """The engine for `model`: `requested` if it can run, auto = treeified when the model has
    at most `max_paths` treeified paths, else edges. Counting costs no enumeration.

    Raises PathError (one line) for an unknown engine name, a model that cannot be split into
    per-head paths or edges at all (`paths.check_supported`), and `treeified` on a model with
    more than `max_paths` paths."""
    if requested not in ENGINES:
        raise PathError(f"unknown scrubbing engine {requested!r}; use one of "
                        f"{', '.join(ENGINES)}")
    check_supported(model)
    cfg = model.cfg
    n_paths = PathGraph(cfg.n_layers, cfg.n_heads, cfg.attn_only, max_paths=float("inf"),
                        parallel=bool(getattr(cfg, "parallel_attn_mlp", False))).n_paths
    from estimators.scrubbing.edges import EdgeGraph

    n_edges = EdgeGraph.from_model(model).n_edges
    fits = n_paths <= max_paths
    if requested == "treeified" and not fits:
        raise PathError(f"the treeified engine enumerates at most {max_paths:,} paths and this "
                        f"model has {_count(n_paths)}: use the edge engine (auto picks it)")
    if requested == "auto":
        engine = "treeified" if fits else "edges"
        why = (f"auto: treeified, this model's {_count(n_paths)} treeified paths are within "
               f"the {max_paths:,} the treeified engine enumerates" if fits else
               f"auto: edges, this model has {_count(n_paths)} treeified paths, more than the "
               f"{max_paths:,} the treeified engine enumerates; hypotheses are written in its "
               f"{n_edges:,} edges")
    else:
        engine = requested
        why = f"{engine}, as chosen (" + (f"{_count(n_paths)} treeified paths)" if engine ==
                                          "treeified" else f"{n_edges:,} edges)")
    return EngineChoice(engine, requested, int(n_paths), int(n_edges), why)


def scrubber_class(engine: str):
    """`Scrubber` for "treeified", `EdgeScrubber` for "edges" (PathError otherwise)."""
    if engine == "treeified":
        from estimators.scrubbing.evaluate import Scrubber
        return Scrubber
    if engine == "edges":
        from estimators.scrubbing.edges import EdgeScrubber
        return EdgeScrubber
    raise PathError(f"unknown scrubbing engine {engine!r}; use treeified or edges")


def make_scrubber(model, data, requested: str = "auto", config=None, **settings):
    """(scrubber, EngineChoice): the evaluator of the chosen engine on `data` (a ScrubData),
    with a `ScrubConfig` or its settings as keywords. Raises as `choose_engine`, and as the
    engine's constructor (conformance refusal: `conformance.EngineUnsupported`)."""
    choice = choose_engine(model, requested)
    cls = scrubber_class(choice.engine)
    scrubber = cls(model, data, config, **settings) if config is not None else \
        cls(model, data, **settings)
    return scrubber, choice
