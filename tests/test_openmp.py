"""The OpenMP wait policy: spin briefly on idle CPUs, sleep on busy ones, never override the user."""

from __future__ import annotations

import pytest

from mathtune import openmp


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    return monkeypatch


@pytest.mark.parametrize("busy,choice", [(0.05, "spin"), (0.9, "passive")])
def test_policy_follows_how_busy_the_cpus_are(clean_env, busy, choice):
    import os

    clean_env.setattr(openmp, "busy_fraction", lambda interval=0.2: busy)
    assert openmp.configure_openmp() == choice
    assert ("GOMP_SPINCOUNT" in os.environ) == (choice == "spin")
    assert (os.environ.get("OMP_WAIT_POLICY") == "PASSIVE") == (choice == "passive")


def test_user_setting_wins(clean_env):
    import os

    clean_env.setenv("OMP_WAIT_POLICY", "ACTIVE")
    clean_env.setattr(openmp, "busy_fraction", lambda interval=0.2: 0.9)
    assert openmp.configure_openmp() == "user"
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE" and "GOMP_SPINCOUNT" not in os.environ


def test_busy_fraction_is_a_fraction_or_unknown():
    b = openmp.busy_fraction(0.05)
    assert b is None or 0.0 <= b <= 1.0
