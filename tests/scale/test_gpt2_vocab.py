"""Issue 11's test: a GPT-2-shaped model shrunk to 2 layers, with GPT-2's real 50,257-token
vocabulary (tests/scale/conftest.py), runs every CLI command and every page.

CLI: every command of `python -m estimators` in-process through `main(argv)` (one subprocess
smoke), on the folder, its SAE and `text:` data tokenized by the folder's tokenizer: exit 0 with
JSON, or exit 2 with one `error:` line where a command does not apply — never a traceback.
Pages: Streamlit AppTest of the real app with the model, SAE and data chosen through the link's
query parameters (as a shared link would), each page's main result rendered without an
exception or an error element."""

from __future__ import annotations

import json
import math
import subprocess
import sys

from estimators.cli import main
from tests.app.conftest import ROOT, assert_no_exception, open_page

from .conftest import HOOK, N_VOCAB, UNICODE_LINE, write_json

THE = 262  # GPT-2's id of ' the' ('Ġthe')


def run_cli(capsys, *argv) -> tuple[int, dict | str]:
    """(exit code, parsed JSON on success / the stderr text on failure)."""
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    if rc == 0 and "--json" in argv:
        return rc, json.loads(out)
    return rc, err if rc else out


def refused(rc: int, err: str) -> bool:
    """A clean refusal: exit 2, one `error:` line, no traceback."""
    lines = err.strip().splitlines()
    return rc == 2 and len(lines) == 1 and lines[0].startswith("error: ") and \
        "Traceback" not in err


# ------------------------------------------------------------------------------- tokenizer

def test_the_tokenizer_is_gpt2s(gpt2_world):
    from estimators.data import decode, token_id
    from estimators.loading import load_model

    tok = gpt2_world.tokenizer
    assert len(tok) == N_VOCAB
    assert tok.encode("Hello world") == [15496, 995]  # GPT-2's ids
    lm = load_model(gpt2_world.model)
    assert lm.kind == "hf-folder" and lm.model.cfg.d_vocab == N_VOCAB
    assert token_id(lm, " the") == token_id(lm, "Ġthe") == THE
    assert token_id(lm, " the cat") is None
    ids = tok.encode(UNICODE_LINE)
    assert decode(lm, ids) == UNICODE_LINE  # byte-level pieces (Ġ, Ã©, ðŁĻĤ) decode back


# ------------------------------------------------------------------------------------- CLI

def test_info_and_data(gpt2_world, capsys):
    w = gpt2_world
    rc, info = run_cli(capsys, "info", "--model", w.model, "--sae", w.sae, "--data", w.data,
                       "--json")
    assert rc == 0, info
    assert info["config"]["d_vocab"] == N_VOCAB
    assert info["card"]["tokenizer"] == "the folder's"
    assert all(v["ok"] for v in info["conformance"].values()), info["conformance"]
    assert info["sae"]["n_activations"] == 16 * 32 and info["sae"]["hook"] == HOOK
    rc, data = run_cli(capsys, "data", "--model", w.model, "--data", w.data, "--hooks", HOOK,
                       "--json")
    assert rc == 0, data
    assert (data["data"]["n"], data["data"]["seq_len"]) == (16, 32)
    assert abs(data["loss_nats"] - math.log(N_VOCAB)) < 1.0  # random weights: ≈ uniform
    assert data["activations"] == {HOOK: [16, 32, 64]}
    assert all(isinstance(e["text"], str) and e["text"] for e in data["examples"])


def test_propagate(gpt2_world, capsys):
    w = gpt2_world
    rc, out = run_cli(capsys, "propagate", "--model", w.model, "--sae", w.sae, "--data", w.data,
                      "--samples", 8, "--n-inputs", 16, "--output-code", "argmax", "--json")
    assert rc == 0, out
    names = [s["name"] for s in out["sites"]]
    assert names[-1] == "logits@-1" and f"sae:{HOOK}" in names
    assert all(math.isfinite(s["kl"]) for s in out["sites"])


def test_scrub_both_engines_and_search(gpt2_world, capsys, tmp_path):
    w = gpt2_world
    common = ["--model", w.model, "--data", w.data, "--n", 16]
    chain = write_json(tmp_path / "chain.json", {"important": ["embed>a1.*:q>logits"]})
    rc, out = run_cli(capsys, "scrub", *common, "--partition", chain, "--json")
    assert rc == 0, out
    assert out["n_paths"] > 0 and math.isfinite(out["loss_scrubbed"])
    rc, err = run_cli(capsys, "scrub", *common, "--partition", chain, "--engine", "edges")
    assert refused(rc, err) and "edge engine" in err, err  # a chain of edges: said so
    edge = write_json(tmp_path / "edge.json", {"important": ["*>a0.0:*>logits"]})
    rc, out = run_cli(capsys, "scrub", *common, "--partition", edge, "--engine", "edges",
                      "--json")
    assert rc == 0, out
    rc, out = run_cli(capsys, "scrub-search", *common, "--steps", 1, "--unit", "node", "--json")
    assert rc == 0, out
    assert out["steps"][0]["partition"]["important"] == []


def test_tail_risk_and_ground_truth(gpt2_world, capsys, tmp_path):
    w = gpt2_world
    common = ["--model", w.model, "--data", w.data.replace("len=32", "len=8"),
              "--distribution", "empirical"]
    rc, out = run_cli(capsys, "tail-risk", *common, "--target", " the", "--method", "mc",
                      "--budget", 64, "--json")
    assert rc == 0, out
    assert (out["target"], out["target_token"]) == (THE, " the")
    rc, out = run_cli(capsys, "tail-risk", *common, "--target", "Ġthe", "--behaviour", "logit",
                      "--threshold", 0.5, "--method", "activation", "--budget", 64, "--json")
    assert rc == 0, out
    assert out["target"] == THE and 0.0 <= out["estimate"] <= 1.0
    rc, err = run_cli(capsys, "tail-risk", *common, "--target", " the cat", "--method", "mc")
    assert refused(rc, err) and "not a token" in err, err
    words = write_json(tmp_path / "words.json", {"positions": [  # tokens by their text
        {"uniform": ["The", "A"]}, {"uniform": [" cat", " dog", "id:13"]}]})
    rc, out = run_cli(capsys, "tail-risk", "--model", w.model, "--distribution", words,
                      "--target", " the", "--method", "mc", "--budget", 32, "--json")
    assert rc == 0, out
    assert out["n_inputs"] == 2 * 3
    rc, out = run_cli(capsys, "ground-truth", *common, "--target", " the", "--samples", 256,
                      "--json")
    assert rc == 0, out
    assert out["method"] == "sampled" and out["target_token"] == " the"
    lo, hi = out["interval"]
    assert 0.0 <= lo <= out["probability"] <= hi <= 1.0


def test_sweep_circuit_and_zoo(gpt2_world, capsys, tmp_path):
    w = gpt2_world
    dist = write_json(tmp_path / "dist.json", {"positions": [
        {"uniform": ["id:464", "id:32"]}, {"uniform": ["id:2068", "id:3290"]}]})
    spec = write_json(tmp_path / "sweep.json", {
        "model": w.model, "distribution": dist, "behaviour": "argmax",
        "targets": [" the", "id:13"], "methods": ["mc"], "budgets": [16], "seeds": [0]})
    rc, out = run_cli(capsys, "sweep", "--spec", spec, "--out", tmp_path / "r.jsonl", "--json")
    assert rc == 0, out
    cells = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert sorted(c["target"] for c in cells if c["kind"] == "cell") == [13, THE]
    rc, out = run_cli(capsys, "circuit", "--circuit", "square", "--json")  # needs no model
    assert rc == 0, out
    rc, err = run_cli(capsys, "zoo", "card", w.model)  # the zoo commands name zoo models
    assert refused(rc, err) and "unknown zoo model" in err, err


def test_a_subprocess_smoke(gpt2_world):
    """The real entry point, once: exit 0, the token's text, no traceback on stderr."""
    w = gpt2_world
    proc = subprocess.run(
        [sys.executable, "-m", "estimators", "tail-risk", "--model", w.model, "--data",
         w.data.replace("len=32", "len=8"), "--distribution", "data-tokens", "--target",
         " the", "--method", "mc", "--budget", "32", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert json.loads(proc.stdout)["target_token"] == " the"


# ----------------------------------------------------------------------------------- pages

def _open(w, page, **extra):
    at = open_page(page, {"model": w.model, "sae": w.sae, "data": w.data, **extra})
    assert_no_exception(at)
    assert not at.error, [e.value for e in at.error]
    return at


def test_model_page(gpt2_world):
    at = _open(gpt2_world, "model.py")
    metrics = {m.label: m.value for m in at.metric}
    assert {"Explained variance", "L0 (mean active latents)", "Dead latents"} <= set(metrics)
    frames = [d.value for d in at.dataframe]
    preds = next(f for f in frames if "top-3" in f.columns)
    assert len(preds) == 32
    assert all(t.startswith(("'", '"')) for t in preds["token"])  # token text, not ids
    assert "(0.00)" not in " ".join(preds["top-3"])  # 50k-vocabulary probabilities readable


def test_circuits_page(gpt2_world):
    at = _open(gpt2_world, "circuits.py", circuit="square")  # model-independent: still runs
    assert {m.label: m.value for m in at.metric}["E[y] true"] == "2"


def test_activation_page(gpt2_world):
    at = _open(gpt2_world, "activation.py")
    assert any(c.value.startswith("Real inputs: the first N sequences of text:")
               for c in at.caption)
    sites = at.dataframe[0].value
    assert list(sites["site"])[-1] == "logits@-1"
    assert sites["KL(real‖est) (nats)"].notna().all()
    logits = at.dataframe[1].value  # one row per modelled logit, labelled with its token
    assert list(logits["token"][:2]) == ["'!'", "'\"'"]  # GPT-2's ids 0 and 1


def test_scrubbing_page(gpt2_world):
    at = _open(gpt2_world, "scrubbing.py", scrub_n="16")
    metrics = {m.label: m.value for m in at.metric}
    assert math.isfinite(float(metrics["Loss original"]))
    assert any(c.value.startswith("Examples: text:") for c in at.caption)
    at.button(key="_scrub_all").click().run()  # a hypothesis: every treeified path important
    assert_no_exception(at)
    assert not at.error, [e.value for e in at.error]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Loss scrubbed"] == metrics["Loss original"]  # all-important is exact


def test_tail_risk_page_one_target(gpt2_world):
    at = _open(gpt2_world, "tail_risk.py")
    assert at.selectbox(key="tr_w_dist").value == "from data: empirical"
    at.number_input(key="tr_w_len").set_value(2).run()  # 2 positions: exact truth is cheap
    at.radio(key="tr_w_mode").set_value("one").run()
    box = at.number_input(key="tr_w_target")  # a number field, not a 50,257-entry list
    box.set_value(THE).run()
    assert any(c.value == "Token 262: ' the'" for c in at.caption)
    at.multiselect(key="tr_w_methods").set_value(["mc"]).run()
    next(b for b in at.button if b.label == "Run").click().run()
    assert_no_exception(at)
    assert not at.error, [e.value for e in at.error]
    assert at.subheader[0].value == "Results (truth: exact)"
    table = at.dataframe[0].value
    assert list(table["token"]) == ["' the'"] and list(table["target"]) == [THE]


def test_a_byte_token_is_labelled_by_its_piece(gpt2_world):
    from app.model_page import token_label
    from estimators.loading import load_model

    lm = load_model(gpt2_world.model)
    piece = gpt2_world.tokenizer.convert_tokens_to_ids("âĢ")  # the first 2 bytes of '—'
    assert gpt2_world.tokenizer.decode([piece]) == "\ufffd"
    assert token_label(lm, piece) == "'âĢ'" and token_label(lm, THE) == "' the'"


def test_alpha_intervals_in_row_chunks_equal_one_pass(monkeypatch):
    """The polytope readers' memory bound (m = 50,256 argmax constraints) changes no number
    beyond the rounding of a matmul over fewer rows."""
    import torch

    from estimators.tailrisk import qld

    g = torch.Generator().manual_seed(0)
    Gz = torch.randn(6, 40, generator=g, dtype=torch.float64)
    hz = torch.randn(40, generator=g, dtype=torch.float64) + 8.0
    d = torch.randn(6, generator=g, dtype=torch.float64)
    d /= d.norm()
    z = torch.randn(50, 6, generator=g, dtype=torch.float64)
    beta = z - (z @ d)[:, None] * d
    whole = qld.alpha_intervals(beta, d, Gz, hz)
    monkeypatch.setattr(qld, "ALPHA_CHUNK_ELEMENTS", 7 * 40)  # 7 rows at a time
    chunked = qld.alpha_intervals(beta, d, Gz, hz)
    for a, b in zip(whole, chunked):  # the same up to the matmul's rounding per row block
        assert torch.allclose(a, b, rtol=1e-12, atol=0.0, equal_nan=False)
    assert bool(torch.isfinite(whole[0]).any())  # some non-empty intervals were compared


def test_tail_risk_page_reads_token_text_in_a_distribution(gpt2_world):
    from app import tail_risk as tr
    from app.state import encode_blob

    settings = {"distribution": tr.UPLOADED, "target_mode": "one", "target": THE,
                "uploaded": [{"uniform": ["The", "A"]}, {"uniform": [" cat", " dog"]}]}
    at = _open(gpt2_world, "tail_risk.py", tr=encode_blob(settings))
    assert any(c.value.startswith("uploaded: 2 positions") for c in at.caption), \
        [c.value for c in at.caption]
