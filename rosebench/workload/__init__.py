"""Workloads: the requests a benchmark pass sends, with their arrival times. One dataclass per kind
(``FixedWorkload``, ``RandomWorkload``, ``SharedPrefixWorkload``, ``JsonlWorkload``) is both the
``workload`` config node and the maker of its prompts."""

from rosebench.workload.build import WORKLOAD_KINDS, Workload, build_workload
from rosebench.workload.errors import WorkloadError
from rosebench.workload.fixed import FixedWorkload
from rosebench.workload.jsonl import JsonlWorkload
from rosebench.workload.prompt import Vocabulary
from rosebench.workload.random_tokens import RandomWorkload
from rosebench.workload.request import Request
from rosebench.workload.shared_prefix import SharedPrefixWorkload

__all__ = [
    "WORKLOAD_KINDS",
    "FixedWorkload",
    "JsonlWorkload",
    "RandomWorkload",
    "Request",
    "SharedPrefixWorkload",
    "Vocabulary",
    "Workload",
    "WorkloadError",
    "build_workload",
]
