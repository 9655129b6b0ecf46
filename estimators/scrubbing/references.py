"""Reference hypotheses shipped with the zoo models, with the numbers they scored.

Files: `estimators/scrubbing/hypotheses/<model>.json`:

    {"model": "induction",
     "eval": {"n": 256, "seed": 0},                 # ScrubData.from_zoo(model, n, seed)
     "heads": {...},                                # what `heads.find_heads` found (induction)
     "hypotheses": [{"name": ..., "description": ..., "important": [...], "blocks": [...],
                     "recorded": {"loss_original": ..., "loss_scrubbed": ..., "loss_random": ...,
                                  "loss_recovered": ..., "argument_bits": ..., "data_bits": ...,
                                  "total_bits": ...}}]}

`build(model_name)` re-derives the hypotheses from the trained model and records their numbers
(`python -m estimators.scrubbing.references induction parens`); a test re-evaluates the
recorded numbers.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from estimators.scrubbing.partition import Block, PathPartition

HYPOTHESES_DIR = Path(__file__).resolve().parent / "hypotheses"
EVAL = {"n": 256, "seed": 0}


@dataclass
class Reference:
    partition: PathPartition
    recorded: dict

    @property
    def name(self) -> str:
        return self.partition.name


def _file(model_name: str) -> Path:
    return HYPOTHESES_DIR / f"{model_name}.json"


def load_file(model_name: str) -> dict:
    path = _file(model_name)
    if not path.exists():
        return {"model": model_name, "eval": dict(EVAL), "hypotheses": []}
    return json.loads(path.read_text())


def available(model_name: str) -> list[Reference]:
    """The shipped reference hypotheses of a model (empty for models without any)."""
    doc = load_file(model_name)
    out = []
    for h in doc.get("hypotheses", []):
        h = dict(h)
        recorded = h.pop("recorded", {})
        out.append(Reference(PathPartition.from_dict(h), recorded))
    return out


def get(model_name: str, name: str) -> Reference:
    refs = available(model_name)
    for r in refs:
        if r.name == name:
            return r
    names = ", ".join(repr(r.name) for r in refs) or "none"
    raise ValueError(f"no reference hypothesis {name!r} for model {model_name!r} "
                     f"(available: {names})")


def eval_settings(model_name: str) -> dict:
    return dict(load_file(model_name).get("eval", EVAL))


# ------------------------------------------------------------------------------ builders
def induction_hypotheses(model, heads: dict) -> list[PathPartition]:
    prev, ind = heads["previous_token"], heads["induction"]
    k_paths = tuple(f"*>{p}:*>{i}:k>logits" for p in prev for i in ind)
    v_paths = tuple(f"embed>{i}:v>logits" for i in ind)
    q_paths = tuple(f"embed>{i}:q>logits" for i in ind)
    names = ", ".join(ind)
    return [
        PathPartition(k_paths, name="prev-token → induction K",
                      description=f"Only the previous-token head(s) {', '.join(prev)} feeding "
                                  f"the key input of the induction head(s) {names} keep the "
                                  f"real input; every other path sees a random sequence."),
        PathPartition(v_paths, name="embeddings → induction V",
                      description=f"Only the embeddings feeding the value input of {names}."),
        PathPartition(q_paths, name="embeddings → induction Q",
                      description=f"Only the embeddings feeding the query input of {names}."),
        PathPartition(k_paths + v_paths + q_paths, name="all three",
                      description="Previous-token head → induction K, embeddings → induction V "
                                  "and embeddings → induction Q together: the induction "
                                  "circuit."),
        refined_induction(heads),
    ]


def refined_induction(heads: dict, share: float = 0.5) -> PathPartition:
    """The circuit as the trained model implements it: previous-token attention is spread over
    every layer-0 head scoring at least `share`·(best previous-token score), and the induction
    heads' keys also read the embeddings directly, so every path into their key input is kept,
    with the embeddings into their query and value inputs."""
    ind = heads["induction"]
    prev_scores = heads["scores"]["previous_token"][0]
    best = max(prev_scores)
    prev = [f"a0.{h}" for h, v in enumerate(prev_scores) if v >= share * best]
    k_paths = tuple(f"*>{p}:*>{i}:k>logits" for p in prev for i in ind) + tuple(
        f"embed>{i}:k>logits" for i in ind)
    v_paths = tuple(f"embed>{i}:v>logits" for i in ind)
    q_paths = tuple(f"embed>{i}:q>logits" for i in ind)
    scores = ", ".join(f"a0.{h} {v:.2f}" for h, v in enumerate(prev_scores))
    return PathPartition(k_paths + v_paths + q_paths, name="all three, refined",
                         description=f"Previous-token scores of the layer-0 heads ({scores}) "
                                     f"show the previous token is carried by {', '.join(prev)} "
                                     f"together, and the keys of {', '.join(ind)} also read the "
                                     f"embeddings directly: all of these into the induction "
                                     f"heads' keys, with the embeddings into their queries and "
                                     f"values.")


def parens_hypotheses(model) -> list[PathPartition]:
    """Hypotheses for the balanced-parentheses classifier (answer read at position 0)."""
    cfg = model.cfg
    last = cfg.n_layers - 1
    hyps = [
        PathPartition(blocks=(Block(("*",), "match:label"),), name="only the label matters",
                      description="Every path shares one input with the same label (balanced "
                                  "or not): the claim that the output depends on the input "
                                  "only through its label."),
        PathPartition(blocks=(Block(("*",), "match:token_at:1"),),
                      name="only the first character matters",
                      description="Every path shares one input with the same first character "
                                  "(position 1, after BOS): the shallow cue \"a string that "
                                  "opens with ')' is unbalanced\" taken as the whole story."),
        PathPartition(("embed>logits", f"*>a{last}.*:*>logits") +
                      ((f"*>m{last}>logits",) if not cfg.attn_only else ()),
                      name="last layer reads everything",
                      description="Paths through the last layer (and the direct path) keep "
                                  "the real input; paths that skip it to the logits from "
                                  "earlier layers are resampled."),
    ]
    if not cfg.attn_only:
        hyps += [
            PathPartition((f"*>m{last}>logits",), name="the last MLP reads everything",
                          description="Only the paths that end through the last MLP keep the "
                                      "real input: the claim that the answer is assembled "
                                      "there."),
            PathPartition(tuple(f"*>m{l}>*" for l in range(cfg.n_layers)),
                          name="every path through an MLP",
                          description="Paths through any MLP keep the real input; attention-"
                                      "only paths to the logits are resampled."),
        ]
    return hyps


def build(model_name: str, n: int = EVAL["n"], seed: int = EVAL["seed"]) -> dict:
    """Derive a zoo model's reference hypotheses, score them, write the file."""
    import torch

    from estimators import zoo
    from estimators.scrubbing.evaluate import ScrubData, Scrubber
    from estimators.scrubbing.heads import find_heads

    torch.set_num_threads(1)
    entry = zoo.get(model_name)
    model = entry.load_model("cpu")
    data = ScrubData.from_zoo(entry, n=n, seed=seed)
    scrubber = Scrubber(model, data, seed=seed)
    doc: dict = {"model": model_name, "eval": {"n": n, "seed": seed}}
    if model_name == "induction":
        heads = find_heads(model, entry.sample(256, seed=seed + 99).tokens)
        doc["heads"] = heads
        hyps = induction_hypotheses(model, heads)
    elif model_name == "parens":
        hyps = parens_hypotheses(model)
    else:
        raise ValueError(f"no reference hypotheses are defined for {model_name!r}")
    results = scrubber.evaluate(hyps)
    doc["hypotheses"] = []
    for h, r in zip(hyps, results):
        d = h.to_dict()
        d["recorded"] = {"loss_original": r.loss_original, "loss_scrubbed": r.loss_scrubbed,
                         "loss_random": r.loss_random, "loss_recovered": r.loss_recovered,
                         "argument_bits": r.surprise.argument_bits,
                         "data_bits": r.surprise.data_bits, "total_bits": r.surprise.total_bits}
        doc["hypotheses"].append(d)
    HYPOTHESES_DIR.mkdir(parents=True, exist_ok=True)
    _file(model_name).write_text(json.dumps(doc, indent=2) + "\n")
    return doc


if __name__ == "__main__":  # python -m estimators.scrubbing.references induction parens
    for name in sys.argv[1:]:
        d = build(name)
        for h in d["hypotheses"]:
            r = h["recorded"]
            print(f"{name:10s} {h['name'][:40]:40s} recovered {r['loss_recovered']:7.3f} "
                  f"total {r['total_bits']:10.1f} bits")
