"""The model store: the loaded model and SAE, shared across sessions, plus the sidebar that picks
them.

Models and SAEs are held with `st.cache_resource` (one model at a time on a GPU, two on a CPU),
and forward passes go through `model_lock()`, since the script threads of several sessions
share the same torch module. The choice (model, SAE, device) lives in the URL, so a link
reproduces the view; a choice that fails to load is reported and the last good one is kept.
"""

from __future__ import annotations

import threading

import streamlit as st

from app import data_source, messages, state
from estimators import zoo
from estimators.device import available_devices, default_device, device_summary
from estimators.loading import LoadError, LoadedModel, load_model, load_sae

_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()

NO_SAE = "none"
BUILTIN_SAE = "zoo"


def _max_models() -> int:
    return 1 if any(d != "cpu" for d in available_devices()) else 2


@st.cache_resource(max_entries=_max_models(), show_spinner="Loading model…")
def _cached_model(source: str, device: str) -> LoadedModel:
    return load_model(source, device)


@st.cache_resource(max_entries=4, show_spinner="Loading SAE…")
def _cached_sae(sae_source: str, model_source: str, device: str):
    return load_sae(sae_source, _cached_model(model_source, device), device)


def model_lock(source: str | None = None) -> threading.Lock:
    """The lock to hold around forward passes through the current (or named) model."""
    key = source or current_model_source()
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(key, threading.Lock())


def yield_model_lock(source: str | None = None, pause_s: float = 0.002) -> None:
    """Called by a long job that holds `model_lock()` between two of its forward passes (a
    search step, an estimator run): release the lock briefly so other sessions' clicks on the
    same model run now, not after the whole job, then take it back. The caller must hold it."""
    import time

    lock = model_lock(source)
    lock.release()
    try:
        time.sleep(pause_s)  # a waiting thread wakes and takes the lock
    finally:
        lock.acquire()


def current_model_source() -> str:
    """What the sidebar's model was loaded from (a zoo name, folder or hub name): a cache key."""
    return st.session_state.get("model_source", zoo.DEFAULT_MODEL)


def current_sae_source() -> str:
    """What the sidebar's SAE was loaded from, or NO_SAE: a cache key."""
    return st.session_state.get("sae_source", NO_SAE)


def current_device() -> str:
    return st.session_state.get("device", default_device())


def current_model() -> LoadedModel:
    """The sidebar's model; a page that needs one stops here, with the reason, if none loads."""
    try:
        return _cached_model(current_model_source(), current_device())
    except (LoadError, ValueError, OSError, RuntimeError) as e:
        st.error(f"This page needs a model, and none could be loaded: {e}")
        st.stop()


def current_sae():
    """The SAE chosen in the sidebar, or None."""
    sae_source = current_sae_source()
    if sae_source == NO_SAE:
        return None
    return _cached_sae(sae_source, current_model_source(), current_device())


def _try(load, what: str) -> bool:
    try:
        load()
        return True
    except (LoadError, ValueError, FileNotFoundError, OSError, RuntimeError) as e:
        st.sidebar.error(f"Could not load {what}: {e}")
        return False


def _hub_name(source: str, local_names: list[str]) -> bool:
    """True when `source` would be fetched from the hub: not one of `local_names` (built-in) and
    not a path on this server. A link must never make the server download anything."""
    from pathlib import Path

    looks_local = source.startswith((".", "/", "~")) or source.count("/") > 1
    return (source not in local_names and not looks_local
            and not Path(source).expanduser().exists())


def init_from_url() -> None:
    """First run of a session: take model, SAE and device from the URL when they load."""
    if st.session_state.get("_store_initialised"):
        return
    st.session_state["_store_initialised"] = True
    devices = available_devices()
    device = state.get_param("device", default_device())
    if device not in devices:
        st.sidebar.warning(f"Device {device!r} from the link is not available here; using "
                           f"{default_device()}.")
        device = default_device()
    st.session_state["device"] = device
    st.session_state["model_source"] = zoo.DEFAULT_MODEL
    st.session_state["sae_source"] = NO_SAE
    model_source = state.get_param("model", zoo.DEFAULT_MODEL)
    if _hub_name(model_source, zoo.names()):
        st.sidebar.error(f"The link's model {messages.code(model_source)} is neither built in "
                         f"nor a folder on this server; a link never fetches from the hub "
                         f"(type a hub name under other…).")
    elif _try(lambda: _cached_model(model_source, device), f"model {model_source!r}"):
        st.session_state["model_source"] = model_source
    sae_source = state.get_param("sae", NO_SAE)
    if sae_source != NO_SAE and _hub_name(sae_source, [BUILTIN_SAE, "builtin", *zoo.names()]):
        st.sidebar.error(f"The link's SAE {messages.code(sae_source)} is neither built in nor "
                         f"a folder on this server; a link never fetches from the hub.")
    elif sae_source != NO_SAE and _try(
            lambda: _cached_sae(sae_source, st.session_state["model_source"], device),
            f"SAE {sae_source!r}"):
        st.session_state["sae_source"] = sae_source


def sidebar() -> None:
    """Model, SAE and device pickers. A choice is committed only once it has loaded."""
    init_from_url()
    sb = st.sidebar
    sb.header("Model")
    names = zoo.names()
    current = st.session_state["model_source"]
    options = names + ["other…"]
    choice = sb.selectbox("Model", options,
                          index=options.index(current) if current in names else len(names),
                          format_func=lambda n: n if n == "other…" else f"{n} (built-in)",
                          key="_model_choice")
    if choice == "other…":
        typed = sb.text_input("Folder or hub name", value="" if current in names else current,
                              key="_model_typed",
                              help="A TransformerLens checkpoint folder (config.json + "
                                   "model.safetensors), a Hugging Face model folder, or a hub "
                                   "name (needs the network).").strip()
        wanted = typed or current
    else:
        wanted = choice
    device_options = available_devices()
    device = sb.selectbox("Device", device_options,
                          index=device_options.index(current_device())
                          if current_device() in device_options else 0, key="_device_choice")
    if (wanted, device) != (current, current_device()):
        if _try(lambda: _cached_model(wanted, device), f"model {wanted!r}"):
            if wanted != current:
                st.session_state["sae_source"] = NO_SAE
            st.session_state["model_source"] = wanted
            st.session_state["device"] = device
    info = device_summary(current_device())
    if "memory_total_gib" in info:
        sb.caption(f"{info['name']}: {info['memory_free_gib']:.1f} of "
                   f"{info['memory_total_gib']:.1f} GiB free")

    sb.header("SAE")
    try:
        lm = _cached_model(st.session_state["model_source"], current_device())
    except (LoadError, ValueError, OSError, RuntimeError):
        sb.caption("No model loaded, so no SAE.")  # model-free pages still work
        _sync_url()
        return
    sae_opts = [NO_SAE] + ([BUILTIN_SAE] if lm.kind == "zoo" else []) + ["folder…"]
    sae_current = st.session_state["sae_source"]
    sae_choice = sb.selectbox("SAE", sae_opts,
                              index=sae_opts.index(sae_current) if sae_current in sae_opts
                              else len(sae_opts) - 1,
                              format_func={NO_SAE: "none", BUILTIN_SAE: "built-in (zoo)",
                                           "folder…": "folder or release/id…"}.get,
                              key="_sae_choice")
    if sae_choice == "folder…":
        sae_wanted = sb.text_input("SAE folder or release/sae_id",
                                   value="" if sae_current in sae_opts else sae_current,
                                   key="_sae_typed").strip() or sae_current
    else:
        sae_wanted = sae_choice
    if sae_wanted != sae_current:
        if sae_wanted == NO_SAE or _try(
                lambda: _cached_sae(sae_wanted, st.session_state["model_source"], current_device()),
                f"SAE {sae_wanted!r}"):
            st.session_state["sae_source"] = sae_wanted

    data_source.sidebar(lm, st.session_state["model_source"], current_device())
    _sync_url()


def _sync_url() -> None:
    """The URL carries the view; defaults are left out to keep links short."""
    m = st.session_state["model_source"]
    state.set_param("model", None if m == zoo.DEFAULT_MODEL else m)
    s = st.session_state["sae_source"]
    state.set_param("sae", None if s == NO_SAE else s)
    d = current_device()
    state.set_param("device", None if d == default_device() else d)
