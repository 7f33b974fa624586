"""GPU worker: the consumer side. Today the dynamic batcher; model runners, drain and reclaim follow."""

from gpu_worker.batcher import (
    BatcherClosed,
    BatcherError,
    BatcherStats,
    BatchPolicy,
    BatchSizeMismatch,
    DynamicBatcher,
    Expired,
    Histogram,
    QueueFull,
)

__all__ = [
    "BatchPolicy",
    "BatchSizeMismatch",
    "BatcherClosed",
    "BatcherError",
    "BatcherStats",
    "DynamicBatcher",
    "Expired",
    "Histogram",
    "QueueFull",
]
