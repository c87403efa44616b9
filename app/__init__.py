"""Panda's Streamlit UI: each module draws one panel from engine data and sends engine commands."""
