"""Analyses of training runs: module sensitivity (which modules forget) and training-cost accounting (FLOPs)."""
