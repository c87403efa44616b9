"""The smallest Streamlit page with a plotly chart: what any Streamlit + plotly dashboard costs a
browser to load on this machine. bench/ui_contention.py measures Panda's page load against it."""
import numpy as np
import plotly.graph_objects as go
import streamlit as st

st.set_page_config(page_title="floor", layout="wide")
x = np.arange(1, 501)
st.plotly_chart(go.Figure(go.Scatter(x=x, y=np.exp(-x / 100.0), name="train loss")))
