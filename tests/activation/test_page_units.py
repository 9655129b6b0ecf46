"""The Activation model page's unit settings as the library reads them (`page_units`), and the
units record of a page explanation file that `propagate --mask FILE` takes (`file_units`)."""

import pytest

from estimators.activation.cli import AUTO_FULL_WIDTH, file_units, page_units


def test_page_units_modes():
    assert page_units("all", 0, 768, 1) is None
    assert page_units("auto", 0, AUTO_FULL_WIDTH, 4) is None  # every zoo model: all units
    assert page_units("auto", 0, 768, 1) == "top-variance:128"
    assert page_units("auto", 0, 768, 3) == "top-variance:42"
    assert page_units("first", 8, 32, 4) == "first:8"
    assert page_units("top-variance", 32, 32, 4) == "top-variance:32"
    assert page_units("firing", 500, 32, 4) == "firing:500"
    for mode, k, msg in (("first", 33, "has 32 units"), ("first", 0, "≥ 1"),
                         ("top-variance", True, "≥ 1"), ("most", 1, "use one of")):
        with pytest.raises(ValueError, match=msg):
            page_units(mode, k, 32, 4)


def test_file_units_reads_the_chains_record():
    assert file_units(None) is None and file_units({}) is None
    assert file_units({"units": {"resid": "first:8", "sae": None}}) == ["first:8"]
    assert file_units({"units": {"resid": None, "sae": "firing:4"}}) == ["firing:4"]
    for bad in ({"units": "first:8"}, {"units": {"resid": 8}},
                {"units": {"resid": "first:x", "sae": None}}):
        with pytest.raises(ValueError):
            file_units(bad)
