"""Coefficient sweep: the candidates of a grid, the objective that picks one, and the report.

The sweep's merges and evaluations are ordinary ``merge`` and ``evaluate`` stages (one cached folder and one
MLflow run each); this package only names the candidates and reads their validation metrics.
"""
