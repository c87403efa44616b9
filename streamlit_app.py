"""Panda's dashboard: `streamlit run streamlit_app.py [-- --task spirals --run-dir runs/demo]`."""
import argparse
import sys

import streamlit as st

from app.main import main

parser = argparse.ArgumentParser(prog="streamlit run streamlit_app.py --")
parser.add_argument("--task", default="spirals", help="task for a new run (default: spirals)")
parser.add_argument("--run-dir", help="open this run, or create it with --task")
args, _ = parser.parse_known_args(sys.argv[1:])

st.set_page_config(page_title="Panda", page_icon="🐼", layout="wide")
main({"task": args.task, "run_dir": args.run_dir})
