"""Continual learning: task streams, methods, the accuracy matrix and its metrics."""
