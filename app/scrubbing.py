"""Streamlit glue of the Causal scrubbing page: engine choice, cached evaluations, URL/file
state, table edits.

Engines (`estimators.scrubbing.engines`): treeified paths or patched edges; "auto" treeifies
when the model has at most 200,000 paths. The page's graph is the engine's (`PathGraph` or
`EdgeGraph`, one API: `match_required`, `n_units`, `edge_patterns`, `node_patterns`), and a
partition is checked against it (`PathPartition.assign` dispatches on the graph).

Heavy results are cached by (model fingerprint — whole config + weights + code version —,
engine, model key, partition hash, settings): the scrubber (data pool, resampling draws and
baseline losses, the latter also on disk through `estimators.activation_cache`) with
`st.cache_resource`, each partition's scores in one shared score store (so the comparison
table scores every uncached hypothesis in one batched `Scrubber.evaluate` call), the anomaly
demo with `st.cache_data`. Forward passes run under the model store's lock.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np
import streamlit as st

from app import state
from estimators import conformance
from estimators.scrubbing import Block, PathError, PathGraph, PathPartition, ScrubData, Scrubber
from estimators.scrubbing import references
from estimators.scrubbing.engines import EngineChoice, choose_engine, scrubber_class
from estimators.scrubbing.partition import IMPORTANT, REST, UNIFORM

KIND = "scrubbing"
URL_KEY = "partition"
MAX_BLOCKS = 6
GROUPS = ["important"] + [f"block {j}" for j in range(1, MAX_BLOCKS + 1)]
RESAMPLE_CHOICES = [UNIFORM, "match:label", "match:token_at:-1", "match:token_at:-2",
                    "match:token_at:0"]


ENGINE_CHOICES = ["auto", "treeified", "edges"]
ENGINE_LABELS = {"auto": "auto", "treeified": "treeified paths", "edges": "patched edges"}
EDGE_LANGUAGE = ("Edge engine: a pattern names single edges — `embed>logits`, "
                 "`*>a0.1:*>logits`, `*>a0.1:*>a1.2:k>*`, `*>m0>a2.3:v>*` — or whole nodes "
                 "(`*>a0.1:*>*`: every edge into head 0.1); it cannot express a chain of two "
                 "or more edges whose routing matters (e.g. `embed>a0.1:q>a1.2:v>logits`), "
                 "nor two groups with edges on one path: those need the treeified engine.")


# ------------------------------------------------------------------------------ engines
def engine_setup(lm, requested: str) -> tuple[EngineChoice, object]:
    """(EngineChoice, graph) for the model: the engine `requested` (auto: treeified when the
    model's paths can be enumerated, else edges) and its PathGraph or EdgeGraph. Cached by
    the model's fingerprint. Raises PathError (one line) when the engine cannot run."""
    return _engine_setup(lm, conformance.model_fingerprint(lm.model), requested)


@st.cache_resource(max_entries=8, show_spinner=False)
def _engine_setup(_lm, fingerprint: str, requested: str):
    choice = choose_engine(_lm.model, requested)
    if choice.engine == "treeified":
        return choice, PathGraph.from_model(_lm.model)
    from estimators.scrubbing.edges import EdgeGraph
    return choice, EdgeGraph.from_model(_lm.model)


def unit_name(graph) -> str:
    """"path" or "edge": what the graph's partitions assign."""
    return getattr(graph, "UNIT", "path")


# ------------------------------------------------------------------------------ data & caches
def page_data(lm):
    """The sidebar's data (`app.data_source`) for a model outside the zoo, else None (a zoo
    model is scored on its own generator, as before)."""
    if lm.kind == "zoo":
        return None
    from app import data_source
    return data_source.current_data(lm)


def data_key(lm) -> str:
    """What the scores depend on beyond the model: the data's fingerprint for a model outside
    the zoo ("" for a zoo model). Appended to the model key of the caches."""
    data = page_data(lm)
    return "" if data is None else f"|data={data.fingerprint}"


def scrub_data(lm, n: int, seed: int, data=None) -> ScrubData:
    """A zoo model's own task data (N examples by seed), else the first N sequences of `data`
    (the sidebar's, scored by next-token loss at every position but the last). Raises
    PathError when a model outside the zoo has no data."""
    if lm.kind == "zoo":
        return ScrubData.from_zoo(lm.name, n=n, seed=seed)
    if data is None:
        raise PathError("this model is not in the zoo: give its data in the sidebar's Data field "
                        "(e.g. tokens:FILE.json or text:PATH)")
    cfg = lm.model.cfg
    return ScrubData.from_sequences(data.tokens[:n].tolist(), int(cfg.d_vocab), int(cfg.n_ctx),
                                    f"{data.source.spec} (first {min(n, len(data))})",
                                    int(getattr(cfg, "d_vocab_out", 0) or cfg.d_vocab))


def get_scrubber(_lm, model_key: str, n: int, seed: int, device: str,
                 engine: str = "treeified", _graph=None) -> Scrubber:
    """The scrubber of (model, data, N, seed, device, engine) — a `Scrubber` (treeified) or an
    `EdgeScrubber` (edges) — cached by the model's fingerprint (whole config + weights + code
    version, `estimators.conformance.model_fingerprint`); `model_key` carries the data's
    fingerprint (`data_key`) for a model outside the zoo. `_graph`: the engine's graph, when
    already built. The treeified scrubber's baseline passes run here, with a progress bar."""
    scrubber = _get_scrubber(_lm, conformance.model_fingerprint(_lm.model), model_key, n, seed,
                             device, engine, _graph)
    _baseline_with_progress(scrubber, model_key, n, seed)
    return scrubber


def _baseline_with_progress(scrubber: Scrubber, model_key: str, n: int, seed: int) -> None:
    """The treeified scrubber's baseline passes (original and all-resampled losses) with a
    progress bar, time left and Cancel (`app.progress`), the model lock released after every
    batch; cancelled: one line with "Run again", and the page stops there. (The edge engine
    gets its baseline from its first hypothesis' own passes, with no separate passes.)"""
    from app.progress import CANCELLED, run_step

    if scrubber.ENGINE != Scrubber.ENGINE or scrubber.has_baseline():
        return

    def step(progress):
        with _lock():
            scrubber.baseline_losses(progress=progress)

    if run_step("Baseline passes (original and all-resampled losses)",
                f"scrub-baseline|{model_key}|{n}|{seed}", step, lock_held=True) is CANCELLED:
        st.stop()


@st.cache_resource(max_entries=4, show_spinner=False)
def _get_scrubber(_lm, fingerprint: str, model_key: str, n: int, seed: int,
                  device: str, engine: str = "treeified", _graph=None) -> Scrubber:
    return scrubber_class(engine)(_lm.model, scrub_data(_lm, n, seed, page_data(_lm)),
                                  seed=seed, device=device, graph=_graph)


def _lock():
    from app import store
    return store.model_lock()


MAX_SCORES = 512
_SCORES_LOCK = threading.Lock()


@st.cache_resource(show_spinner=False)
def _score_store() -> "OrderedDict[tuple, dict]":
    """Scores of evaluated partitions, shared by every session (an LRU of MAX_SCORES)."""
    return OrderedDict()


def _score_key(scrubber, model_key: str, partition_hash: str, n: int, seed: int,
               device: str) -> tuple:
    return (conformance.model_fingerprint(scrubber.model), scrubber.ENGINE, model_key,
            partition_hash, n, seed, device)


def evaluate(_scrubber: Scrubber, model_key: str, partition_hash: str, partition_json: str,
             n: int, seed: int, device: str) -> dict:
    """Scores of one partition (plain data, cached by the model's fingerprint, engine,
    partition hash and settings). Raises PathError when the engine cannot express it."""
    [res] = evaluate_many(_scrubber, model_key, [PathPartition.from_json(partition_json)], n,
                          seed, device)
    if "error" in res:
        raise PathError(res["error"])
    return res


def evaluate_many(scrubber: Scrubber, model_key: str, parts: list[PathPartition], n: int,
                  seed: int, device: str) -> list[dict]:
    """Scores of several partitions: cached ones from the store, the others in ONE batched
    `scrubber.evaluate` call (common random numbers; the engine packs them into shared
    passes). A partition the engine cannot express gets {"error": one line} instead."""
    store = _score_store()
    keys = [_score_key(scrubber, model_key, p.hash, n, seed, device) for p in parts]
    out: list[dict | None] = []
    with _SCORES_LOCK:
        for k in keys:
            hit = store.get(k)
            if hit is not None:
                store.move_to_end(k)
            out.append(hit)
    todo: dict[str, int] = {}
    for i, p in enumerate(parts):
        if out[i] is not None or p.hash in todo:
            continue
        try:
            scrubber.check(p)
        except PathError as e:
            out[i] = {"error": str(e)}
            continue
        todo[p.hash] = i
    fresh: dict[str, dict] = {}
    if todo:
        from app.progress import lock_yielder
        with _lock():  # given up for a moment between batches of passes (at most every 0.1 s)
            results = scrubber.evaluate([parts[i] for i in todo.values()],
                                        progress=lock_yielder())
        for h, r in zip(todo, results):
            fresh[h] = {"loss_original": r.loss_original, "loss_scrubbed": r.loss_scrubbed,
                        "loss_random": r.loss_random, "loss_recovered": r.loss_recovered,
                        "surprise": r.surprise.to_dict(), "seconds": r.diagnostics["seconds"],
                        "engine": scrubber.ENGINE}
        with _SCORES_LOCK:
            for h, i in todo.items():
                store[keys[i]] = fresh[h]
            while len(store) > MAX_SCORES:
                store.popitem(last=False)
    return [o if o is not None else fresh[p.hash] for o, p in zip(out, parts)]


def anomaly_normal(lm, n: int, seed: int) -> ScrubData:
    """Fresh normal inputs for the anomaly demo: a zoo model's generator at seed + 1; for a
    model outside the zoo the sidebar data's sequences after the N that scrubbing uses (up to
    N of them). Raises PathError when fewer than 2 are left."""
    if lm.kind == "zoo":
        return ScrubData.from_zoo(lm.name, n=n, seed=seed + 1)
    data = page_data(lm)
    rest = [] if data is None else data.tokens[n:2 * n].tolist()
    if len(rest) < 2:
        raise PathError(f"the anomaly demo needs normal inputs beyond the {n} that scrubbing "
                        f"uses: give more data (n= in the Data field) or lower Examples N")
    cfg = lm.model.cfg
    return ScrubData.from_sequences(rest, int(cfg.d_vocab), int(cfg.n_ctx),
                                    f"{data.source.spec} (sequences {n}..{n + len(rest) - 1})",
                                    int(getattr(cfg, "d_vocab_out", 0) or cfg.d_vocab))


def anomaly(_scrubber: Scrubber, model_key: str, partition_hash: str, partition_json: str,
            n: int, seed: int, device: str, _lm=None) -> dict:
    """ROC of scrubbed losses on normal inputs (`anomaly_normal`) against the same inputs with
    their second halves shuffled; cached by the model's fingerprint, `model_key` (which carries
    a non-zoo model's data fingerprint), partition and settings. Raises PathError."""
    return _anomaly(_scrubber, conformance.model_fingerprint(_scrubber.model), model_key,
                    partition_hash, partition_json, n, seed, device, _lm, _scrubber.ENGINE)


@st.cache_data(max_entries=64, show_spinner=False)
def _anomaly(_scrubber: Scrubber, fingerprint: str, model_key: str, partition_hash: str,
             partition_json: str, n: int, seed: int, device: str, _lm,
             engine: str = "scrubbing") -> dict:
    from estimators.scrubbing.anomaly import anomaly_demo

    if _lm is None:
        model_name = model_key.split(":", 1)[1].split("|data=")[0]
        normal = ScrubData.from_zoo(model_name, n=n, seed=seed + 1)
    else:
        normal = anomaly_normal(_lm, n, seed)
    with _lock():
        return anomaly_demo(_scrubber, PathPartition.from_json(partition_json), normal, seed)


def fmt_percent(x: float) -> str:
    """A ratio as a percentage with 2 decimals; −0.00 % (float noise around 0) shows as 0.00 %."""
    if x != x:
        return "n/a"
    return f"{round(100 * x, 2) + 0.0:.2f}%"


# ------------------------------------------------------------------------------ state
def partition_from_url() -> tuple[PathPartition | None, str | None]:
    """The partition in the URL (None if absent) or an error message."""
    try:
        d = state.get_blob_param(URL_KEY)
        return (None, None) if d is None else (PathPartition.from_dict(d), None)
    except (state.StateError, PathError) as e:
        return None, f"The partition in the link could not be used: {e}"


def write_url(p: PathPartition) -> None:
    state.set_blob_param(URL_KEY, p.to_dict())


def download_bytes(p: PathPartition, context: dict) -> bytes:
    return state.explanation_bytes(KIND, p.to_dict(), context)


def parse_upload(data: bytes, graph) -> PathPartition:
    """An explanation file from this page, or a bare partition JSON; checked against the
    model's paths. Raises ValueError (StateError / PathError) with the reason."""
    payload, _ = state.read_argument_file(data, KIND)
    p = PathPartition.from_dict(payload)
    p.assign(graph)
    return p


# ------------------------------------------------------------------------------ editing
def partition_rows(p: PathPartition) -> list[dict]:
    rows = [{"group": "important", "pattern": pat, "resample": ""} for pat in p.important]
    for j, b in enumerate(p.blocks, start=1):
        rows += [{"group": f"block {j}", "pattern": pat, "resample": b.resample}
                 for pat in b.paths]
    return rows


def rows_to_partition(rows: list[dict], name: str = "", description: str = "") -> PathPartition:
    """The partition a table states; PathError naming the first bad row."""
    important, blocks, rules = [], {}, {}
    for i, r in enumerate(rows, start=1):
        group = (r.get("group") or "").strip()
        pattern = (r.get("pattern") or "").strip() if isinstance(r.get("pattern"), str) else ""
        if not group and not pattern:
            continue  # an empty row the editor added
        if not pattern:
            raise PathError(f"row {i}: the pattern is empty")
        if group == "important":
            important.append(pattern)
            continue
        if group not in GROUPS:
            raise PathError(f"row {i}: group must be one of {', '.join(GROUPS)}")
        j = int(group.split()[1])
        rs = (r.get("resample") or UNIFORM).strip() if isinstance(r.get("resample"), str) \
            else UNIFORM
        if j in rules and rules[j] != rs:
            raise PathError(f"row {i}: {group} already resamples {rules[j]!r}, not {rs!r} "
                            f"(one rule per block)")
        rules[j] = rs
        blocks.setdefault(j, []).append(pattern)
    return PathPartition(tuple(important),
                         tuple(Block(tuple(blocks[j]), rules[j]) for j in sorted(blocks)),
                         name, description)


def toggle_pattern(p: PathPartition, pattern: str, group: str, resample: str,
                   graph) -> PathPartition:
    """Add `pattern` to `group` (remove it if it is already there). PathError if its paths
    already belong to another group: a click never silently moves paths between groups."""
    rows = partition_rows(p)
    same = [r for r in rows if r["group"] == group and r["pattern"] == pattern]
    if same:
        rows = [r for r in rows if r not in same]
    else:
        assignment = p.assign(graph)
        idx = graph.match_required(pattern)
        gid = IMPORTANT if group == "important" else int(group.split()[1])
        taken = assignment[idx]
        other = taken[(taken != REST) & (taken != gid)]
        if other.size:
            og = "important" if other[0] == IMPORTANT else f"block {other[0]}"
            raise PathError(f"{pattern} includes paths already in {og}; remove them there "
                            f"first (in the table)")
        existing = [r["resample"] for r in rows if r["group"] == group]
        rs = existing[0] if existing else resample
        rows.append({"group": group, "pattern": pattern, "resample": rs})
    new = rows_to_partition(rows, p.name, p.description)
    new.assign(graph)
    return new


def reference_list(model_name: str) -> list[references.Reference]:
    try:
        return references.available(model_name)
    except (ValueError, OSError):
        return []


def assignment_or_empty(p: PathPartition, graph) -> np.ndarray:
    """The partition's group per unit (path or edge), all REST when it does not fit."""
    try:
        return p.assign(graph)
    except PathError:
        return np.full(graph.n_units, REST, dtype=np.int64)


def named_edges(graph, assignment: np.ndarray, limit: int = 2000) -> list[dict]:
    """The edges a partition names (edge engine): {"edge", "group"} rows, at most `limit`."""
    from app.plots.scrubbing import group_name

    idx = np.flatnonzero(assignment != REST)[:limit]
    return [{"edge": graph.edge_text(int(e)), "group": group_name(int(assignment[e]))}
            for e in idx]


def data_spec() -> str:
    """The sidebar's data spec, for the explanation file's context."""
    from app import data_source
    return data_source.current_spec()
