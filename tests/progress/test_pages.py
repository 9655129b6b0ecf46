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
