"""Benchmarks of emudev: side-by-side measurements printed as tables, never pass/fail tests.

Every public module of this package (a name not starting with "_") is one benchmark and defines
`run(quick: bool) -> int`, which prints its tables and returns an exit status: 0 whenever it could
report something, even if a target was missed. `python -m benchmarks` runs them all in turn.
Ratios are measured in the same run because absolute latencies on a shared VM drift from day to day.
"""
