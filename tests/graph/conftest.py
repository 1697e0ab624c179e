"""Lets the graph tests import their shared models (graph_models.py) by name."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))
