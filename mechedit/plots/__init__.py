"""Plotly figures: patching scores, probe accuracy curves, evaluation results."""
