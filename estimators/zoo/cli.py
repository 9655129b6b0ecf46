"""`python -m estimators zoo ...`: list the built-in models, show a card, retrain one.

    python -m estimators zoo list [--json]
    python -m estimators zoo card NAME [--json]
    python -m estimators zoo train NAME [--quick] [--out DIR] [--sae-only] [--json]

Unknown names raise ValueError, which `estimators.cli.main` turns into one line on stderr and
exit code 2.
"""

from __future__ import annotations

import argparse
from typing import Any

from estimators.cli import add_common_json


def register(subparsers) -> None:
    p = subparsers.add_parser("zoo", help="built-in models and their SAEs: list, card, train",
                              description="The model zoo: small models shipped with the "
                                          "workbench, each with an SAE and a card.")
    sub = p.add_subparsers(dest="zoo_command", metavar="ZOO_COMMAND")
    sub.required = True

    q = sub.add_parser("list", help="list the zoo models with their held-out metric and SAE")
    add_common_json(q)
    q.set_defaults(func=cmd_list)

    q = sub.add_parser("card", help="show a model's card (task, metrics, SAE, training)")
    q.add_argument("name", help="zoo model name (see `zoo list`)")
    add_common_json(q)
    q.set_defaults(func=cmd_card)

    q = sub.add_parser("train", help="retrain a model and its SAE from the fixed seed "
                                     "(bit-for-bit on CPU)")
    q.add_argument("name", help="zoo model name (see `zoo list`)")
    q.add_argument("--quick", action="store_true",
                   help="a few steps only (to check reproducibility; not for shipping)")
    q.add_argument("--out", default=None, metavar="DIR",
                   help="write here instead of overwriting the shipped weights")
    q.add_argument("--sae-only", action="store_true",
                   help="retrain only the SAE on the model already in the folder")
    add_common_json(q)
    q.set_defaults(func=cmd_train)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def cmd_list(args: argparse.Namespace) -> dict | str:
    from estimators import zoo

    rows = [zoo.get(n).summary() for n in zoo.names()]
    if args.json:
        return {"default": zoo.DEFAULT_MODEL, "models": rows}
    header = ["name", "title", "held-out metric", "SAE hook", "SAE width", "SAE expl. var.",
              "SAE L0"]
    table = [[r["name"] + (" (default)" if r["name"] == zoo.DEFAULT_MODEL else ""), r["title"],
              f"{r['metric']} {_fmt(r['value'])} (n={_fmt(r['eval_examples'])})",
              r["sae_hook"], _fmt(r["sae_width"]), _fmt(r["sae_explained_variance"]),
              _fmt(r["sae_l0"])]
             for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *table)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in table])


def cmd_card(args: argparse.Namespace) -> dict | str:
    from estimators import zoo

    entry = zoo.get(args.name)
    card = entry.card()
    if args.json:
        return card
    ev, sae, tr = card.get("eval", {}), card.get("sae", {}), card.get("training", {})
    arch = card.get("architecture", {})
    lines = [
        f"{card['name']}: {card['title']}",
        "",
        card.get("description", ""),
        "",
        f"task:          {card.get('task', '')}",
        f"architecture:  {arch.get('n_layers')} layers, d_model {arch.get('d_model')}, "
        f"{arch.get('n_heads')} heads, d_mlp {_fmt(arch.get('d_mlp'))}, "
        f"norm {arch.get('normalization_type')}, {arch.get('attention_dir')} attention, "
        f"n_ctx {arch.get('n_ctx')}, vocab {arch.get('d_vocab')} -> {arch.get('d_vocab_out')}, "
        f"{arch.get('n_params')} parameters",
        f"held-out:      {card.get('metric')} = {_fmt(ev.get(card.get('metric')))} "
        f"(accuracy {_fmt(ev.get('accuracy'))}, loss {_fmt(ev.get('loss_nats'))} nats; "
        f"{ev.get('n_examples')} examples, {ev.get('n_predictions')} predictions, "
        f"seed {ev.get('seed')})",
        f"SAE:           {sae.get('hook')}, width {sae.get('d_sae')}, explained variance "
        f"{_fmt(sae.get('explained_variance'))}, L0 {_fmt(sae.get('l0'))}, dead "
        f"{sae.get('dead_features')} ({sae.get('positions')})",
        f"training:      seed {tr.get('seed')}, {tr.get('steps')} steps x batch "
        f"{tr.get('batch_size')}, {_fmt(tr.get('seconds'))} s (torch {tr.get('torch')}, "
        f"1 thread); reproduce: {tr.get('command')}",
        f"inputs:        {', '.join(card.get('input_distributions', []))}",
        "hypotheses:    " + (", ".join(h["name"] for h in card.get("reference_hypotheses", []))
                             or "none"),
        f"weights:       {entry.weights_dir}",
    ]
    return "\n".join(lines)


def cmd_train(args: argparse.Namespace) -> dict:
    from estimators import zoo

    entry = zoo.get(args.name)  # unknown names fail before anything heavy is imported
    if args.sae_only:
        from estimators.zoo.training import retrain_sae

        return retrain_sae(entry, out_dir=args.out)
    return zoo.train(args.name, out_dir=args.out, quick=args.quick)
