"""Multi-task active learning: choosing which pool examples to annotate next.

`select(confidences, budget, strategy, ...)` implements the strategies of Rotman & Reichart
(TACL 2022) listed in `STRATEGIES`; see `ernie_style.active_learning.selection`.
"""

from ernie_style.active_learning.selection import STRATEGIES, select

__all__ = ["STRATEGIES", "select"]
