"""AHCL schedules: the auto lr scales with the code length, the authors' does not."""

import pytest

from rsir_train.ahcl.config import AUTO_LR, AHCLConfig


@pytest.mark.parametrize("bits, lr", [(8, AUTO_LR), (16, AUTO_LR), (32, AUTO_LR / 2),
                                      (64, AUTO_LR / 4)])
def test_auto_lr_by_bits(bits, lr):
    resolved = AHCLConfig(bits=bits).resolved(1920, cached=True)
    assert resolved.lr == pytest.approx(lr)
    assert resolved.outer == 30 and resolved.inner == 1 and resolved.momentum == 0.9


def test_authors_and_explicit_lr_kept():
    assert AHCLConfig(bits=64, schedule="authors").resolved(1920, cached=True).lr == 1e-3
    assert AHCLConfig(bits=64, lr=3e-3).resolved(1920, cached=True).lr == 3e-3
