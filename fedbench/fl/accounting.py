"""Privacy accounting with Google's ``dp-accounting``: epsilon after r rounds, and the noise
multiplier that meets a target epsilon.

A round of central DP releases the noised sum of the selected clients' clipped changes: a
Gaussian mechanism on a sample of the clients. ``sampling`` says which sample the accountant
assumes:

* ``poisson`` (default): every client joins a round independently with probability
  ``q = clients_per_round / num_clients`` (``PoissonSampledDpEvent``), under the add-or-remove-one
  relation (a client's data present or absent). This is DP-FedAvg's analysis (McMahan et al.
  2018) and what TensorFlow Federated and Opacus report. fedbench selects exactly
  ``clients_per_round`` clients without replacement, so this is an approximation of its
  selection (same expected participation, no variance in the count).
* ``fixed_size`` (RDP only): exactly ``clients_per_round`` of ``num_clients`` without
  replacement (``SampledWithoutReplacementDpEvent``, Wang, Balle, Kasiviswanathan 2019), which
  is fedbench's selection, under the replace-one relation that analysis needs (a client's data
  swapped for other data; the sum's sensitivity is then ``2 * clip``, so the event's multiplier
  is ``sigma / 2``). PLD has no fixed-size sampling in dp-accounting 0.6.0.

Local DP (``privacy=local``) has no amplification: a client's noised change is seen by the
server every time it reports; each report is a Gaussian mechanism of sensitivity
``2 * clip`` (any change swapped for any other), i.e. multiplier ``sigma / 2``, composed over
the client's reports (:func:`local_epsilon`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math

ACCOUNTANTS = ("rdp", "pld")
SAMPLINGS = ("poisson", "fixed_size")
# Calibration searches noise multipliers up to this; a target that needs more is refused.
SIGMA_MAX = 1000.0
# Calibration stops once epsilon is within this fraction below the target.
CALIBRATION_TOLERANCE = 0.005
# dp-accounting's PLD discretisation (its default).
PLD_DISCRETIZATION = 1e-4


@contextlib.contextmanager
def _quiet():
    """dp-accounting's RDP logs (through absl) each fractional order it cannot evaluate and
    leaves out of the minimum; that is its normal operation, not news for a run's log."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _accountant(accountant: str, relation: str):
    import dp_accounting as dpa
    from dp_accounting.pld import PLDAccountant
    from dp_accounting.rdp import RdpAccountant

    rel = dpa.NeighboringRelation[relation]
    if accountant == "rdp":
        return RdpAccountant(neighboring_relation=rel)
    if accountant == "pld":
        return PLDAccountant(neighboring_relation=rel, value_discretization_interval=PLD_DISCRETIZATION)
    raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")


@functools.lru_cache(maxsize=65536)
def central_epsilon(
    sigma: float,
    rounds: int,
    delta: float,
    accountant: str,
    sampling: str,
    num_clients: int,
    clients_per_round: int,
) -> float:
    """Epsilon at ``delta`` after ``rounds`` rounds of a sampled Gaussian with multiplier
    ``sigma`` (0: no noise, epsilon infinite)."""
    if rounds <= 0:
        return 0.0
    if sigma <= 0:
        return math.inf
    import dp_accounting as dpa

    if sampling == "poisson":
        one = dpa.PoissonSampledDpEvent(clients_per_round / num_clients, dpa.GaussianDpEvent(sigma))
        relation = "ADD_OR_REMOVE_ONE"
    elif sampling == "fixed_size":
        one = dpa.SampledWithoutReplacementDpEvent(
            num_clients, clients_per_round, dpa.GaussianDpEvent(sigma / 2)
        )
        relation = "REPLACE_ONE"
    else:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    acc = _accountant(accountant, relation)
    with _quiet():
        acc.compose(dpa.SelfComposedDpEvent(one, rounds))
        return float(acc.get_epsilon(delta))


@functools.lru_cache(maxsize=65536)
def local_epsilon(sigma: float, reports: int, delta: float, accountant: str) -> float:
    """Epsilon at ``delta`` of one client's ``reports`` noised changes (local DP)."""
    if reports <= 0:
        return 0.0
    if sigma <= 0:
        return math.inf
    import dp_accounting as dpa

    acc = _accountant(accountant, "ADD_OR_REMOVE_ONE")
    with _quiet():
        acc.compose(dpa.SelfComposedDpEvent(dpa.GaussianDpEvent(sigma / 2), reports))
        return float(acc.get_epsilon(delta))


class Unreachable(ValueError):
    """No noise multiplier up to :data:`SIGMA_MAX` meets the target."""


def calibrate(epsilon_of, target: float) -> float:
    """The noise multiplier whose epsilon (``epsilon_of(sigma)``, decreasing in sigma) is at most
    ``target`` and within :data:`CALIBRATION_TOLERANCE` of it (bisection)."""
    if not epsilon_of(SIGMA_MAX) <= target:
        raise Unreachable(f"epsilon {epsilon_of(SIGMA_MAX):.4g} even at noise_multiplier {SIGMA_MAX:g}")
    hi = 1.0
    while epsilon_of(hi) > target:
        hi *= 2.0
    lo = hi / 2.0 if hi > 1.0 else 0.0  # epsilon(lo) > target (infinite at 0)
    for _ in range(100):
        if epsilon_of(hi) >= (1.0 - CALIBRATION_TOLERANCE) * target:
            break
        mid = (lo + hi) / 2.0
        if epsilon_of(mid) > target:
            lo = mid
        else:
            hi = mid
    return hi


@functools.lru_cache(maxsize=1024)
def calibrate_central(
    target: float,
    rounds: int,
    delta: float,
    accountant: str,
    sampling: str,
    num_clients: int,
    clients_per_round: int,
) -> float:
    return calibrate(
        lambda s: central_epsilon(s, rounds, delta, accountant, sampling, num_clients, clients_per_round),
        target,
    )


@functools.lru_cache(maxsize=1024)
def calibrate_local(target: float, reports: int, delta: float, accountant: str) -> float:
    return calibrate(lambda s: local_epsilon(s, reports, delta, accountant), target)
