"""The pages' progress (app/progress.py) in a real Streamlit AppTest: a long step shows a bar
"n of N units · ~T left" with a Cancel button; Cancel leaves one "cancelled" line (and, for a
step the page starts by itself, "Run again"), and the step runs again on request."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest


def _script():
    import streamlit as st

    from app.progress import CANCELLED, run_step
    from estimators.progress import Progress

    def step(progress):
        progress(Progress(1, 4, "sequences", "activations"))
        if st.session_state.get("stop_mid_step", True):
            st.stop()  # the script ends here, as when Streamlit interrupts it mid-step
        progress(Progress(4, 4, "sequences", "activations"))
        return "done"

    out = run_step("Long step", "demo-step", step)
    st.write("result: " + ("cancelled" if out is CANCELLED else out))


def test_a_long_step_shows_its_bar_and_cancel_and_can_run_again():
    at = AppTest.from_function(_script, default_timeout=60).run()
    assert not at.exception
    [bar] = at.get("progress")
    assert bar.proto.text.startswith("Long step — activations: 1 of 4 sequences · ")
    assert bar.proto.text.endswith(" left") and bar.proto.value == 25
    at.button(key="_progress_cancel_demo-step").click().run()
    assert not at.exception and not at.get("progress")
    assert [i.value for i in at.info] == ["Long step: cancelled."]
    assert at.markdown[-1].value == "result: cancelled"
    at.run()  # any other rerun: the step stays cancelled (its inputs did not change)
    assert at.markdown[-1].value == "result: cancelled"
    at.session_state["stop_mid_step"] = False
    at.button(key="_progress_again_demo-step").click().run()
    assert not at.exception and not at.info and not at.get("progress")  # done: no bar left
    assert at.markdown[-1].value == "result: done"


def test_the_model_page_keeps_a_cancelled_sae_measurement_until_run_again(tmp_path,
                                                                          monkeypatch):
    """The real Model page on a checkpoint with data: after Cancel (its flag, as Cancel's
    on_click sets it) the SAE numbers are replaced by one "cancelled" line and "Run again";
    Run again measures, with the library's numbers."""
    import json

    import torch

    from app.model_page import SAE_EVAL_SEED, SAE_EVAL_SEQUENCES, sae_step_key
    from estimators.data import load_data
    from estimators.loading import load_model, load_sae, save_checkpoint
    from estimators.sae_stats import sae_quality_on_data
    from tests.app.conftest import open_page
    from tests.data.conftest import tiny_model, tiny_sae

    monkeypatch.setenv("HEW_CACHE_DIR", str(tmp_path / "cache"))
    save_checkpoint(tiny_model(), tmp_path / "model")
    tiny_sae("blocks.1.hook_resid_pre").save_model(str(tmp_path / "sae"))
    seqs = torch.randint(0, 300, (12, 8), generator=torch.Generator().manual_seed(0)).tolist()
    (tmp_path / "seqs.json").write_text(json.dumps(seqs))
    model, sae, spec = str(tmp_path / "model"), str(tmp_path / "sae"), \
        f"tokens:{tmp_path / 'seqs.json'}"
    lm = load_model(model)
    data = load_data(spec, lm, n=SAE_EVAL_SEQUENCES, seed=SAE_EVAL_SEED)
    key = sae_step_key(model, sae, data.fingerprint)

    at = open_page("model.py", {"model": model, "sae": sae, "data": spec})
    assert not at.exception
    assert "Explained variance" in [m.label for m in at.metric]
    at.session_state["_progress_cancelled:" + key] = True
    at.run()
    assert not at.exception
    assert any(i.value.endswith(": cancelled.") and i.value.startswith("Measuring the SAE")
               for i in at.info)
    assert "Explained variance" not in [m.label for m in at.metric]
    at.button(key=f"_progress_again_{key}").click().run()
    assert not at.exception and not any("cancelled" in i.value for i in at.info)
    _, want = sae_quality_on_data(lm, load_sae(sae, lm), spec)
    got = {m.label: m.value for m in at.metric}
    assert got["Explained variance"] == f"{want['explained_variance']:.3f}"
