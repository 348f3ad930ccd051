"""Evaluation of a run: figures with CIs, notebook tables and plots, error analysis, the audit, annotator labels, ensembles."""
