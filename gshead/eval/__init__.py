"""Evaluation protocols (self- and cross-reenactment) and result tables; see ``protocols``."""

from gshead.eval.protocols import (
    CROSS_METRICS,
    SELF_METRICS,
    MethodResults,
    MetricSuite,
    ProtocolResult,
    aggregate,
    evaluate,
    reenact,
    score_frames,
    source_baseline,
    write_results,
)

__all__ = [
    "CROSS_METRICS",
    "SELF_METRICS",
    "MethodResults",
    "MetricSuite",
    "ProtocolResult",
    "aggregate",
    "evaluate",
    "reenact",
    "score_frames",
    "source_baseline",
    "write_results",
]
