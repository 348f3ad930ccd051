"""Experiments: papermill runs, notebook setup, sweeps and SLURM, ensembles built from members, the run lister, comparisons."""
