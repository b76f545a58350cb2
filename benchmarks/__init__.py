"""bigarray's benchmark suite: bigarray against its peers, as ratios measured in the same run.

Run ``python -m benchmarks --size smoke|W1|large [--cases a,b] [--out DIR] [--compare OLD.json]
[--repeat N]`` from the root of a source checkout.
See ``benchmarks/README.md`` for the workloads, peers and goals, and :mod:`benchmarks.cases`
for how to add a case.
"""

from __future__ import annotations

from benchmarks.runner import main

__all__ = ["main"]
