"""Plot builders: pure functions from data to plotly figures (no streamlit here)."""
