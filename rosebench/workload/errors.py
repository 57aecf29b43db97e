"""The one error type workloads raise, so the runner can report a bad workload in one line."""


class WorkloadError(ValueError):
    """A workload cannot be built: bad options or a malformed input file (the message says where)."""
