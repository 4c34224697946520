"""The ``schedule`` settings of a run and GAWU's switch rule, declared once and without torch.

``zigzag.schedules`` (the schedulers), ``zigzag.runconfig`` (the run's settings), ``zigzag.analysis`` (GAWU's change
point found again from a trajectory) and the readers of a trajectory's recorded schedule take them from here.
"""

from __future__ import annotations

from zigzag.settings import Spec

WINDOW_H = 5  # the paper's window h of the mean correlation (eq. 3): the default of GAWU's h and the analysis's h
GROWTHS = ("paper", "constant")  # warm-up exponent e(u): u (u + 1) / 2, or u
SCHEDULES = ("constant", "warmup_cosine", "gawu")
UNITS = ("epoch", "iteration")

# The keys of a run's ``schedule`` mapping, and which of them each kind takes.
SCHEDULE = {
    "kind": Spec("constant lr, warm-up then cosine decay at a fixed change point, or GAWU", "str", "constant",
                 choices=SCHEDULES),
    "eta0": Spec("initial warm-up lr (scaled by the linear scaling rule)", "float", None, low=0, low_open=True,
                 fill=False),
    "omega": Spec("warm-up rate: eta_u = exp(omega u) eta_(u-1) (growth paper) or exp(omega) eta_(u-1) "
                  "(growth constant)", "float", None, low=0, low_open=True, fill=False),
    "growth": Spec("warm-up rule: paper (Section 5.2: eta_u = eta0 exp(omega u (u+1) / 2)) or constant "
                   "(eta0 exp(omega u))", "str", "paper", choices=GROWTHS, fill=False),
    "change_point": Spec("warmup_cosine: unit t where the cosine decay starts", "int", None, low=0, fill=False),
    "unit": Spec("what a schedule step is", "str", UNITS[0], choices=UNITS, fill=False),
    "h": Spec("gawu: window of the online mean correlation", "int", WINDOW_H, low=2, fill=False),
    "max_warmup": Spec("gawu: start the decay here at the latest", "int", None, low=0, fill=False),
}
SCHEDULE_KEYS = {"constant": {"kind"},
                 "warmup_cosine": {"kind", "eta0", "omega", "change_point", "unit", "growth"},
                 "gawu": {"kind", "eta0", "omega", "unit", "h", "max_warmup", "growth"}}


def schedule_setting(schedule: dict | None, key: str):
    """``schedule.<key>`` as given (a run's settings or a trajectory's recorded ones), else its declared default."""
    return (schedule or {}).get(key, SCHEDULE[key].default)


def gawu_switches(mean: float, seen_positive: bool, unit: int, max_warmup: int | None) -> tuple[bool, bool]:
    """GAWU's rule at the end of ``unit``, whose mean correlation is ``mean``: (switch now, a positive mean seen).

    It switches at the first unit whose mean is < 0 after some earlier unit's mean was > 0 (NaN and exact 0
    neither arm nor trigger; negative means before any positive one do not switch), or at ``max_warmup``."""
    seen_positive = seen_positive or mean > 0  # False for NaN
    return (mean < 0 and seen_positive) or unit == max_warmup, seen_positive
