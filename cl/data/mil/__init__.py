"""Continual multiple-instance learning data: bags of instance features (CLAM-layout whole-slide features, the offline
``digit_bags``), packed bags for fixed-shape replay buffers, and the task stream (:mod:`cl.data.mil.bags`)."""
