"""Workloads: the requests a benchmark pass sends, with their arrival times."""

from rosebench.workload.build import KIND_OPTIONS, build_workload
from rosebench.workload.errors import WorkloadError
from rosebench.workload.request import Request

__all__ = ["KIND_OPTIONS", "Request", "WorkloadError", "build_workload"]
