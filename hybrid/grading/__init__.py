"""Nightly batch grading: read items, submit them paced and resumable through the broker, write grades.

- `io`: input (JSONL/CSV → items and rejected lines) and output (JSONL/CSV in input order);
- `state`: the run's SQLite state file next to the output, and the run registry in Redis;
- `runner`: the pipelined driver (window of jobs in flight, pauses on backpressure/budget);
- `job`: one run from a serializable request (CLI and RQ share it);
- `schedule`: nightly runs as RQ jobs (`enqueue_at`, one job per run).
"""
