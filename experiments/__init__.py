"""Studies: one folder per study (README with the question and exact command, sweep preset), the sweep aggregator
(``python -m experiments.aggregate SWEEP_DIR``) and benchmark scripts (``experiments/bench``)."""
