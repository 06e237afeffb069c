"""The membership-inference attacks on synthetic entropies / losses with a known answer."""

from __future__ import annotations

import numpy as np

from unlearn.mia import best_threshold, entropy_attack, loss_attack


def test_entropy_attack_calls_low_entropy_samples_members():
    rng = np.random.default_rng(0)
    members = rng.uniform(0.0, 0.2, 200)
    nonmembers = rng.uniform(1.0, 2.0, 200)
    assert entropy_attack(members, nonmembers, rng.uniform(0.0, 0.2, 50)) == 1.0
    assert entropy_attack(members, nonmembers, rng.uniform(1.2, 2.0, 50)) == 0.0
    mixed = np.concatenate([rng.uniform(0.0, 0.2, 30), rng.uniform(1.2, 2.0, 70)])
    assert entropy_attack(members, nonmembers, mixed) == 0.3


def test_loss_threshold_is_the_balanced_accuracy_optimum():
    members = np.array([0.1, 0.2, 0.3, 0.9])
    nonmembers = np.array([0.5, 0.8, 1.0, 2.0])
    assert best_threshold(members, nonmembers) == 0.3  # tpr 3/4, tnr 1 beats every other cut
    assert loss_attack(members, nonmembers, np.array([0.05, 0.3, 0.31, 5.0])) == 0.5
