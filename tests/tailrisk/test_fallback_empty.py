"""The zero-hit fallback on a behaviour no input can meet. The softcap-logits case's capped
logits never exceed 2, so P(logit_3 > 2.5) is exactly 0 (../shared/cases/softcap-logits); ITGIS
and MHIS with no hit reported half a QLD count (1.5e-3, 2.5e-4) instead."""

import json

import pytest

from estimators.cli import main

CASE = "../shared/cases/softcap-logits"


@pytest.mark.parametrize("method", ["itgis", "mhis"])
def test_threshold_above_the_soft_cap_reads_exactly_zero(capsys, method):
    code = main(["tail-risk", "--model", f"{CASE}/model", "--distribution",
                 f"{CASE}/dist3.json", "--behaviour", "logit", "--target", "id:3",
                 "--threshold", "2.5", "--method", method, "--budget", "512", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    r = json.loads(out)
    assert r["estimate"] == 0.0 and r["interval"] == [0.0, 0.0]
    assert r["fallback"] == "empty" and "exactly 0" in r["note"]
    assert r["calls"] <= 512
