"""The floor for benchmarks/bench_clicks.py --baseline: a bare Streamlit app (one button and one
line of text, and the same in an st.fragment), no torch, no model. Not one of the app's pages."""

import streamlit as st

st.session_state.setdefault("clicks", 0)
st.session_state.setdefault("fragment_clicks", 0)
if st.button("Count"):
    st.session_state.clicks += 1
st.write("clicks:", st.session_state.clicks)


@st.fragment
def counter() -> None:
    if st.button("Count in fragment"):
        st.session_state.fragment_clicks += 1
    st.write("fragment clicks:", st.session_state.fragment_clicks)


counter()
