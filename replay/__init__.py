"""Replay: transaction files (``replay.sources``), the simulator (``replay.simulate``), replay into
Kafka or in-process, backtests and reports."""
