"""Prefect tasks: thin, one hub operation each, retried with exponential backoff and jitter."""

from iot_flows.tasks._retry import RETRY, is_retryable, retry_if_retryable
from iot_flows.tasks.jobs import cancel_job, create_method_job, create_twin_update_job, get_job, query_device_jobs
from iot_flows.tasks.methods import invoke_device_method
from iot_flows.tasks.twins import get_twin, get_twins, query_twins, update_twin

__all__ = [
    "RETRY",
    "cancel_job",
    "create_method_job",
    "create_twin_update_job",
    "get_job",
    "get_twin",
    "get_twins",
    "invoke_device_method",
    "is_retryable",
    "query_device_jobs",
    "query_twins",
    "retry_if_retryable",
    "update_twin",
]
