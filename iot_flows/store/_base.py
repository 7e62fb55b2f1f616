"""The store interface every hub service depends on (docs/architecture.md §1).

One abstract base, :class:`HubStore`, with two backends: SQLite (the embedded default,
:mod:`._sqlite`) and PostgreSQL (:mod:`._postgres`). Services never see SQL or a
connection; they call these async methods. Rules every backend keeps:

* every write method is one short transaction, committed before it returns (the hub
  acknowledges only after that), unless it runs inside :meth:`HubStore.transaction`,
  which commits all of its writes together when the block ends;
* reads see every write committed before they started (read-your-writes);
* failures are domain errors from :mod:`iot_flows._exceptions`: a duplicate id is
  :class:`~iot_flows._exceptions.DeviceAlreadyExistsError` /
  :class:`~iot_flows._exceptions.JobAlreadyExistsError`, a lost database is
  :class:`~iot_flows._exceptions.ServiceUnavailableError` (503, retryable).

Job states travel as their string values (``'pending'``, ``'running'``...): the store
knows nothing of the jobs package.
"""

from __future__ import annotations

import builtins
from abc import ABC, abstractmethod
from collections.abc import Iterable
from contextlib import AbstractAsyncContextManager
from typing import Any

from iot_flows.query import CompiledQuery
from iot_flows.store._records import DeviceRecord

__all__ = ["DeviceOutcome", "HubStore", "JsonText"]

#: (device_id, status, start_time_utc, end_time_utc, outcome JSON | None, error JSON | None)
DeviceOutcome = tuple[str, str, str | None, str | None, Any, Any]


class JsonText(str):
    """A record's outcome or error already encoded as compact JSON: stored as is.

    A job whose devices all give the same answer encodes it once, not once per device.
    """


class HubStore(ABC):
    """Registry, twins, meta values, MQTT sessions, jobs and queries of one hub."""

    #: ``"sqlite"`` or ``"postgresql"``: the SQL dialect queries compile to.
    dialect: str = ""
    #: Where the data lives (a file path or a URL without password), for messages.
    location: str = ""

    # ---- lifecycle ------------------------------------------------------------------
    @abstractmethod
    async def close(self) -> None:
        """Release every connection."""

    @abstractmethod
    def transaction(self) -> AbstractAsyncContextManager[None]:
        """``async with store.transaction():`` groups the writes inside into one commit."""

    # ---- meta -----------------------------------------------------------------------
    @abstractmethod
    async def get_meta(self, key: str) -> str | None:
        """A hub-wide value (policy keys, ...), or None."""

    @abstractmethod
    async def set_meta(self, key: str, value: str) -> None:
        """Set a hub-wide value."""

    @abstractmethod
    async def set_meta_if_absent(self, key: str, value: str) -> str:
        """Store ``value`` unless ``key`` has one; return the value stored now (the first
        writer's when several nodes start at once on a new database)."""

    # ---- registry and twins ----------------------------------------------------------
    @abstractmethod
    async def get(self, device_id: str) -> DeviceRecord | None:
        """The device's identity and twin, or None."""

    @abstractmethod
    async def get_many(self, device_ids: builtins.list[str]) -> builtins.list[DeviceRecord]:
        """Records for the ids that exist, in id order."""

    @abstractmethod
    async def insert(self, record: DeviceRecord) -> None:
        """Register a device; raises DeviceAlreadyExistsError if the id is taken."""

    @abstractmethod
    async def update_identity(self, record: DeviceRecord) -> None:
        """Store the identity fields (status, keys, thumbprints, capabilities, etag)."""

    @abstractmethod
    async def update_twin(
        self, record: DeviceRecord, *, expected_version: int | None = None, sections: tuple[str, ...] | None = None
    ) -> bool:
        """Store the twin fields (sections, metadata, versions, etag); True when written.

        With ``expected_version`` the write is a compare-and-set: it happens only while the
        stored twin ``version`` still equals it, so read-modify-writes by several hub nodes
        on one database never lose each other's changes (the loser reads again).
        ``sections`` (with ``expected_version``): the only sections that changed, of
        ``"tags"``, ``"desired"``, ``"reported"``; a backend may then write just those
        (the compare-and-set guarantees the others are as stored). None: all of them."""

    @abstractmethod
    async def delete(self, device_id: str) -> bool:
        """Delete a device; False when there was none."""

    @abstractmethod
    async def list(self, *, after: str = "", limit: int = 1000) -> builtins.list[DeviceRecord]:
        """Devices with id > ``after``, in id order, at most ``limit``."""

    @abstractmethod
    async def count(self) -> int:
        """Number of registered devices."""

    @abstractmethod
    async def set_connection_state(self, device_id: str, state: str, when: str) -> None:
        """Record ``'Connected'``/``'Disconnected'`` at ``when``; never touches the twin etag."""

    @abstractmethod
    async def set_model_id(self, device_id: str, model_id: str) -> None:
        """Record the Plug and Play model id a device announced at CONNECT (twin ``modelId``).

        Never touches the twin etag (docs/iothub-reference.md §2.1, PnP ``model-id``)."""

    @abstractmethod
    async def reset_connection_states(self, when: str) -> None:
        """Mark every device disconnected (hub start: no connection survives a restart)."""

    # ---- MQTT persistent sessions ------------------------------------------------------
    @abstractmethod
    async def get_subscriptions(self, device_id: str) -> builtins.list[str]:
        """Topic filters of the device's persistent session (``clean_session=0``)."""

    @abstractmethod
    async def set_subscriptions(self, device_id: str, filters: builtins.list[str]) -> None:
        """Replace the device's persistent topic filters."""

    async def get_for_connect(self, device_id: str) -> tuple[DeviceRecord | None, builtins.list[str]]:
        """What a CONNECT reads: the device's record (None when unknown) and its stored
        session's topic filters ([] when unknown). Backends may read both in one statement."""
        record = await self.get(device_id)
        return record, (await self.get_subscriptions(device_id) if record is not None else [])

    # ---- queries ----------------------------------------------------------------------
    @abstractmethod
    def compile_query(self, text: str) -> CompiledQuery:
        """Parse and compile query text to this backend's SQL; raises QuerySyntaxError."""

    @abstractmethod
    def page_statement(
        self, compiled: CompiledQuery, *, after: str = "", offset: int = 0, limit: int
    ) -> tuple[str, tuple[Any, ...]]:
        """The SQL text and arguments :meth:`query_twins` (twin queries, keyset ``after``) or
        :meth:`query_raw` (projections and aggregates, ``offset``) runs for one page: for
        EXPLAIN and for benchmarks that compare with the same SQL run directly."""

    @abstractmethod
    async def query_twins(
        self, compiled: CompiledQuery, *, after: str, limit: int
    ) -> builtins.list[tuple[str, str]]:
        """Devices matching a ``SELECT * FROM devices`` query, id > ``after``, in id order:
        ``(device_id, Twin document as JSON text)`` (``DeviceRecord.twin_json`` once parsed)."""

    @abstractmethod
    async def query_device_jobs(
        self, compiled: CompiledQuery, *, after: tuple[str, str], limit: int
    ) -> builtins.list[dict[str, Any]]:
        """Device-job items (reference 3.6 shape) after ``(job_id, device_id)``, in key order."""

    @abstractmethod
    async def query_raw(self, compiled: CompiledQuery, *, offset: int, limit: int) -> builtins.list[dict[str, Any]]:
        """Items of a projection or aggregate query, offset-paged."""

    # ---- jobs -------------------------------------------------------------------------
    @abstractmethod
    async def insert_job(self, job_id: str, job_type: str, status: str, created: str, doc: dict[str, Any]) -> None:
        """Store a new job document; raises JobAlreadyExistsError if the id is taken."""

    @abstractmethod
    async def save_job(self, doc: dict[str, Any]) -> None:
        """Replace a job document (and its status column)."""

    @abstractmethod
    async def get_job(self, job_id: str) -> dict[str, Any] | None:
        """A job document, or None."""

    @abstractmethod
    async def active_jobs(self) -> builtins.list[dict[str, Any]]:
        """Queued, scheduled and running jobs, oldest first."""

    @abstractmethod
    async def count_active_jobs(self) -> int:
        """Number of queued, scheduled and running jobs."""

    @abstractmethod
    async def list_jobs(
        self, *, job_type: str | None, status: str | None, after: str, limit: int
    ) -> builtins.list[dict[str, Any]]:
        """Jobs ordered by (created time, id); ``after`` is ``created|job_id`` of the last seen."""

    @abstractmethod
    async def select_device_ids(self, condition: str) -> builtins.list[str]:
        """Ids of devices matching a job ``queryCondition`` now, in id order."""

    @abstractmethod
    async def add_device_jobs(
        self, job_id: str, job_type: str, device_ids: Iterable[str], status: str, now: str
    ) -> None:
        """Create device-job records (existing ones are kept)."""

    @abstractmethod
    async def mark_device_jobs_running(self, job_id: str, device_ids: builtins.list[str], now: str) -> None:
        """Mark records running (committed before the requests go out)."""

    @abstractmethod
    async def record_device_outcomes(self, job_id: str, outcomes: builtins.list[DeviceOutcome], now: str) -> None:
        """Store final or intermediate outcomes of devices."""

    @abstractmethod
    async def set_device_jobs_status_where(
        self, job_id: str, from_states: Iterable[str], to: str, now: str, error: Any = None
    ) -> int:
        """Move every record of the job in ``from_states`` to ``to``; return how many moved."""

    @abstractmethod
    async def device_job_ids(self, job_id: str, status: str) -> builtins.list[str]:
        """Ids of the job's devices in ``status``, in id order."""

    @abstractmethod
    async def device_job_counts(self, job_id: str) -> dict[str, int]:
        """Number of the job's records per status."""
