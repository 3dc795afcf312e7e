"""Inductor heuristic override: row reductions up to 4096 elements in one pass.

Inductor keeps a reduction "persistent" (the whole row in registers, read once) only up to 1024 elements;
longer rows are looped over twice when the reduced value feeds an elementwise op on the same row: the
layer norms over FLUX's and Ovis' 3072 channels, and fp8's per-row activation scale (amax of the row, then
divide and cast). Measured on an H100 (benchmarks/image_gpu_profile.py): persistent up to 16384 made the
3072-long rows faster (FLUX bf16 forward 135.8 -> 132.0 ms) but the 15360-long fp8 rows slower (7.9 -> 9.3
ms a forward), hence the 4096 limit. Imported only when compiling on a GPU; the class lives at module level
because inductor pickles it into its FX graph cache key.
"""

from __future__ import annotations

from typing import Any

from torch._inductor import config
from torch._inductor.choices import InductorChoices
from torch._inductor.runtime.hints import ReductionHint

PERSISTENT_MAX = 4096


class LongRowReductions(InductorChoices):
    def __init__(self, max_rnumel: int = PERSISTENT_MAX) -> None:
        super().__init__()
        # An instance attribute, so that the limit is part of the pickled handler, hence of the FX graph
        # cache key: changing it must not reuse kernels compiled under another limit.
        self.max_rnumel = max_rnumel

    def should_use_persistent_reduction(self, features: Any, cooperative_reduction: bool) -> bool:
        if self.long_inner_row(features, cooperative_reduction):
            return True
        return InductorChoices.should_use_persistent_reduction(features, cooperative_reduction)

    def long_inner_row(self, features: Any, cooperative_reduction: bool) -> bool:
        """A static row reduction (INNER: along contiguous memory) short enough to hold in registers."""
        if cooperative_reduction or not config.triton.persistent_reductions:
            return False
        if features.get_reduction_hint() != ReductionHint.INNER:
            return False
        try:
            numel = int(features.reduction_numel)
        except (TypeError, ValueError):  # symbolic length: keep inductor's answer
            return False
        return numel <= self.max_rnumel


def install() -> None:
    from torch._inductor.virtualized import V

    V.set_choices_handler(LongRowReductions())
