"""The sidebar's **Data** field: the researcher's inputs for the model, one data spec
(`estimators.data`) shared by every page.

The spec is one string — `zoo`, `tokens:FILE.json`, `text:PATH`, `hf:FOLDER[:COLUMN]`, with
`,n=`, `len=`, `seed=` options — kept in the URL as `?data=...` (left out when it is the model's
default: `zoo` for a zoo model, empty otherwise) and written into every page's explanation file
(`context["data"]`). A spec that does not parse or load for the current model is reported in
one st.error line and the last good spec is kept. A new spec is read inside an st.status box
in the sidebar. Loaded data is cached per (model, spec): zoo samples with `st.cache_resource`,
files by `estimators.data`'s memo (which also notices an edited file).

Pages ask `current_data(lm)` for a `Data` (tokens [n, len] int64 on the CPU) or None when the
field is empty.
"""

from __future__ import annotations

import streamlit as st

from app import state
from estimators.data import Data, DataError, parse_spec
from estimators.loading import LoadedModel

URL_KEY = "data"
SPEC_KEY = "data_spec"          # session: the last good spec ("" = none)
SPEC_MODEL_KEY = "data_spec_model"  # session: the model source the spec was checked against
WIDGET_KEY = "_data_typed"
BAD_KEY = "data_spec_bad"  # session: (model source, spec, error) of the last spec that failed
ZOO = "zoo"


def default_spec(lm: LoadedModel | None) -> str:
    """`zoo` for a zoo model (its own generator), empty (no data) for any other model."""
    return ZOO if lm is not None and lm.kind == "zoo" else ""


def current_spec() -> str:
    """The sidebar's last good data spec ("" when none)."""
    return str(st.session_state.get(SPEC_KEY, "") or "")


@st.cache_resource(max_entries=8, show_spinner=False)
def _cached_zoo_data(model_source: str, device: str, spec: str, _lm: LoadedModel) -> Data:
    return parse_spec(spec).load(_lm)


def _data(lm: LoadedModel, spec: str, model_source: str, device: str) -> Data:
    """The data of `spec` for the model. Zoo generator samples are cached here per (model,
    device, spec); files are memoised by `estimators.data` per (spec, model vocabulary, context
    and tokenizer, the files' sizes and modification times), so an edited file is read again.
    Raises DataError / ValueError (one line)."""
    src = parse_spec(spec)
    if src.kind == "zoo":
        return _cached_zoo_data(model_source, device, spec, lm)
    return src.load(lm)


def load(lm: LoadedModel, spec: str, model_source: str, device: str, where=None) -> Data:
    """`_data` inside an st.status box (in `where`, default the sidebar) that says what is being
    read and then what was read; a rerun (navigating away, any click) abandons the page after
    the read. Raises DataError / ValueError (one line)."""
    where = where if where is not None else st.sidebar
    with where.status(f"Reading data `{spec}`…", expanded=False) as box:
        try:
            data = _data(lm, spec, model_source, device)
        except (DataError, ValueError, OSError):
            box.update(label="Data not read", state="error")
            raise
        box.update(label=f"Read {len(data):,} × {data.seq_len} tokens", state="complete")
    return data


def current_data(lm: LoadedModel) -> Data | None:
    """The data the sidebar chose for this model, or None (empty field). The spec was checked
    in the sidebar; a load that fails now (a file changed on disk) is shown and gives None."""
    from app import store

    spec = current_spec()
    if not spec:
        return None
    try:
        return _data(lm, spec, store.current_model_source(), store.current_device())
    except (DataError, ValueError, OSError) as e:
        st.error(f"The data `{spec}` could not be read: {e}")
        return None


def _check(lm: LoadedModel, spec: str, model_source: str, device: str) -> str | None:
    """None when `spec` loads for the model, else the one-line reason."""
    try:
        load(lm, spec, model_source, device)
        return None
    except (DataError, ValueError, OSError) as e:
        return str(e).splitlines()[0] if str(e) else type(e).__name__


def sidebar(lm: LoadedModel, model_source: str, device: str) -> None:
    """The Data field, after the model picker. First run: the URL's `data` (when it loads).
    A new model resets the field to that model's default."""
    ss = st.session_state
    sb = st.sidebar
    sb.header("Data")
    if ss.get(SPEC_MODEL_KEY) != model_source:
        first = SPEC_MODEL_KEY not in ss
        ss[SPEC_MODEL_KEY] = model_source
        ss[SPEC_KEY] = default_spec(lm)
        wanted = (state.get_param(URL_KEY) or "").strip() if first else ""
        if wanted and wanted != ss[SPEC_KEY]:
            error = _check(lm, wanted, model_source, device)
            if error is None:
                ss[SPEC_KEY] = wanted
            else:
                sb.error(f"Data from the link not used: {error}")
        ss[WIDGET_KEY] = ss[SPEC_KEY]
    elif WIDGET_KEY not in ss:  # Streamlit dropped the widget's state (a run without it)
        ss[WIDGET_KEY] = ss[SPEC_KEY]
    typed = sb.text_input(
        "Data spec", key=WIDGET_KEY, placeholder="tokens:FILE.json, text:PATH, hf:FOLDER",
        help="The inputs the pages use for this model: zoo (a built-in model's generator), "
             "tokens:FILE.json (token-id lists), text:FILE_OR_FOLDER (tokenized with the "
             "model's tokenizer), hf:FOLDER[:COLUMN] (a datasets folder from save_to_disk); "
             "options ,n=128,len=64,seed=0. Empty: the model's default (zoo for a built-in "
             "model, else no data).").strip()
    typed = typed or default_spec(lm)  # an emptied field: the model's default
    if typed != ss[SPEC_KEY]:
        bad = ss.get(BAD_KEY)
        if bad is not None and bad[:2] == (model_source, typed):
            error = bad[2]  # the same text failed on an earlier run: not read again
        else:
            error = _check(lm, typed, model_source, device)
        if error is None:
            ss[SPEC_KEY] = typed
            ss.pop(BAD_KEY, None)
        else:
            ss[BAD_KEY] = (model_source, typed, error)
            sb.error(f"Data not used ({error}); keeping "
                     f"{('`' + ss[SPEC_KEY] + '`') if ss[SPEC_KEY] else 'no data'}.")
    spec = ss[SPEC_KEY]
    if spec:
        try:
            sb.caption(_data(lm, spec, model_source, device).describe())
        except (DataError, ValueError, OSError) as e:
            sb.error(f"The data `{spec}` could not be read: {e}")
    else:
        sb.caption("No data: pages that need real inputs for this model say so.")
    state.set_param(URL_KEY, None if spec == default_spec(lm) else spec)
