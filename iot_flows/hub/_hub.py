"""The hub process: store, services, MQTT listeners and the REST API on one event loop."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import ssl
from typing import TYPE_CHECKING, Any

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import WebSocketRoute

from iot_flows._exceptions import HubError, IoTFlowsError, error_for_status
from iot_flows._sas import ConnectionString
from iot_flows._settings import HubSettings
from iot_flows.hub._auth import ServiceAuthenticator
from iot_flows.hub._changes import ChangeFeed
from iot_flows.hub._device_endpoint import DeviceEndpoint
from iot_flows.hub._job_engine import JobEngine
from iot_flows.hub._methods import MethodInvoker
from iot_flows.hub._mqtt_server import MqttServer
from iot_flows.hub._mqtt_websocket import WEBSOCKET_PATH, mqtt_over_websocket
from iot_flows.hub._query import QueryService
from iot_flows.hub._quota import Paced, Quota, max_concurrent_jobs
from iot_flows.hub._registry import RegistryService
from iot_flows.hub._sessions import SessionRegistry
from iot_flows.hub._twins import TwinService
from iot_flows.hub.api._errors import error_response, hub_error_handler, storage_error_handler, unexpected_error_handler
from iot_flows.hub.api._hot_routes import hot_route
from iot_flows.hub.api._http_timeouts import guarded_http_protocol
from iot_flows.hub.api._request_rules import RequestRules
from iot_flows.hub.api._routes import routes
from iot_flows.hub.api._routes_jobs import extension_routes
from iot_flows.hub.api._routes_jobs import routes as job_routes
from iot_flows.query import compile_condition
from iot_flows.store import STORAGE_ERRORS, HubStore, open_store
from iot_flows.twin import utc_now

if TYPE_CHECKING:
    from iot_flows.hub.cluster import ClusterNode

__all__ = ["Hub", "HubSettings", "ListenError"]

log = logging.getLogger(__name__)


class ListenError(IoTFlowsError):
    """A listener could not open its port (in use, not allowed, or no such address): the
    message names the listener, the address, the reason and the option that sets the port."""


_PORT_OPTIONS = {"MQTT": "--mqtt-port", "MQTT over TLS": "--mqtts-port", "REST": "--http-port"}


def _listen_error(what: str, host: str, port: int, exc: OSError) -> ListenError:
    reason = exc.strerror or str(exc)
    if "error while attempting to bind" in str(exc):  # asyncio's wording: keep the OS reason only
        reason = str(exc).rsplit(": ", 1)[-1]
    hint = f"choose another port with {_PORT_OPTIONS[what]}"
    if exc.errno == 98:  # EADDRINUSE
        hint = f"another hub or server listens there; stop it or {hint}"
    elif exc.errno == 99:  # EADDRNOTAVAIL
        hint = "no network interface here has that address; choose another with --host"
    return ListenError(f"cannot listen for {what} on {host}:{port}: {reason.lower()} ({hint})")


def _bind(host: str, port: int) -> socket.socket:
    # proto must be IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted sockets only then,
    # and without it every response pays Nagle + delayed ACK (~40 ms).
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error_response(error_for_status(exc.status_code, str(exc.detail)))


class Hub:
    """An IoT Hub-compatible hub. ``await hub.start()``, then ``await hub.stop()``."""

    def __init__(self, settings: HubSettings) -> None:
        self.settings = settings
        #: Azure's per-tier throttles (``--quota``); None: off. May be replaced while running.
        self.quota: Quota | None = Quota.for_tier(settings.quota, settings.quota_units)
        self.ready = False
        self.mqtt_port: int | None = None
        self.mqtts_port: int | None = None
        self.http_port: int | None = None
        self._uvicorn: uvicorn.Server | None = None
        self._uvicorn_task: asyncio.Task[None] | None = None
        self._http_socket: socket.socket | None = None
        self.store: HubStore
        #: per device: [lock, users] serialising its connection-state writes
        self._state_locks: dict[str, list[Any]] = {}
        self.cluster: ClusterNode | None = None

    # ---- wiring -----------------------------------------------------------------------
    async def _open_store(self) -> None:
        self.store = await open_store(
            self.settings.db, pool_size=self.settings.db_pool_size, acquire_timeout=self.settings.db_acquire_timeout
        )
        if self.settings.bus is None:  # a cluster node resets only its own (ClusterNode.connect)
            await self.store.reset_connection_states(utc_now())
        owner_key = self.settings.owner_key or None
        stored = await self.store.get_meta("policy_keys")
        if stored is None:  # a new database: the first node to store its keys wins, the others read them
            fresh = ServiceAuthenticator.generate_policy_keys(owner_key)
            stored = await self.store.set_meta_if_absent("policy_keys", json.dumps(fresh))
        keys = json.loads(stored)
        if owner_key and keys.get("iothubowner") != owner_key:
            keys["iothubowner"] = owner_key
            await self.store.set_meta("policy_keys", json.dumps(keys))
        self.service_auth = ServiceAuthenticator(self.settings.hostname, keys)

    async def _on_connection_change(self, device_id: str, connected: bool) -> None:
        # Writes for one device run one at a time and store what is true when each runs,
        # so a late disconnect of an old connection never overwrites a newer connect.
        entry = self._state_locks.setdefault(device_id, [asyncio.Lock(), 0])
        entry[1] += 1
        try:
            async with entry[0]:
                now_connected = self.sessions.is_connected(device_id)
                if self.cluster is None or await self.cluster.on_connection_change(device_id, now_connected):
                    await self.store.set_connection_state(
                        device_id, "Connected" if now_connected else "Disconnected", utc_now()
                    )
        except Exception:
            if connected:
                raise  # the CONNECT fails: the device retries
            log.warning("could not store the disconnect of %s", device_id, exc_info=True)
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                self._state_locks.pop(device_id, None)
        self.changes.on_connection_change(device_id, connected)

    def _on_revoked(self, device_id: str) -> None:
        self.sessions.forget(device_id)
        if self.cluster is not None:
            self.cluster.on_revoked(device_id)

    async def _join_cluster(self) -> None:
        from iot_flows.hub.cluster import ClusterNode, ClusterSettings

        s = self.settings
        assert s.bus is not None
        node = ClusterNode(self, ClusterSettings(bus=s.bus, node_id=s.node_id or "", lease_seconds=s.node_lease_seconds))
        try:
            await node.connect()
        except BaseException:
            await node.bus.close()
            await self.store.close()
            raise
        await node.start()
        self.cluster = node

    def _build_services(self) -> None:
        self.changes = ChangeFeed(self.settings.change_feed_capacity)
        self.sessions = SessionRegistry(self._on_connection_change, persistence=self.store)
        self.twins = TwinService(self.store, self.sessions)
        self.methods = MethodInvoker(self.sessions)
        self.registry = RegistryService(self.store, on_revoked=self._on_revoked)
        self.endpoint = DeviceEndpoint(self.twins, self.methods, self.sessions)
        self.twins.add_listener(self.changes.on_twin_change)
        self.queries = QueryService(self.store)
        # --quota paces the jobs' device operations (twin updates, method calls).
        paced_twins = Paced(self.twins, ("update",), lambda: self.quota)
        paced_methods = Paced(self.methods, ("invoke",), lambda: self.quota)
        self.jobs = JobEngine(
            self.store, paced_twins, paced_methods, self.sessions, compile_condition,  # type: ignore[arg-type]
            self._job_settings(),
        )
        self.jobs.add_listener(self.changes.on_job_change)
        self.mqtt = MqttServer(
            store=self.store, sessions=self.sessions, endpoint=self.endpoint, hostname=self.settings.hostname,
            policy_keys=self.service_auth.policy_keys, quota=lambda: self.quota,
            max_connections=self.settings.max_connections or None,
        )

    def _job_settings(self) -> Any:
        # A --quota tier also caps concurrent jobs (docs/iothub-reference.md §6.2) unless set explicitly.
        jobs = self.settings.jobs
        if self.quota is None or "max_concurrent_jobs" in jobs.model_fields_set:
            return jobs
        return jobs.model_copy(update={"max_concurrent_jobs": max_concurrent_jobs(self.settings.quota)})

    def _tls_context(self) -> ssl.SSLContext | None:
        if not (self.settings.tls_cert and self.settings.tls_key):
            return None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # Azure SDKs speak TLS 1.2
        ctx.load_cert_chain(self.settings.tls_cert, self.settings.tls_key)
        ctx.verify_mode = ssl.CERT_NONE  # a client certificate is neither needed nor checked
        return ctx

    def build_app(self) -> Starlette:
        """The Starlette app: REST routes, request rules, throttling, and MQTT over WebSocket (``/$iothub/websocket``)."""
        app = Starlette(
            routes=[*job_routes(), *extension_routes(), *routes(), WebSocketRoute(WEBSOCKET_PATH, mqtt_over_websocket)],
            middleware=[Middleware(RequestRules, quota=lambda: self.quota, hot=hot_route)],
            exception_handlers={
                HubError: hub_error_handler,
                HTTPException: _http_exception,
                **dict.fromkeys(STORAGE_ERRORS, storage_error_handler),
                Exception: unexpected_error_handler,
            },
        )
        app.router.redirect_slashes = False  # SDKs do not follow redirects; RequestRules strips the '/'
        app.state.hub = self
        return app

    # ---- lifecycle --------------------------------------------------------------------
    async def start(self) -> None:
        """Open the store and start every listener; ``ready`` once all accept connections."""
        s = self.settings
        await self._open_store()
        self._build_services()
        if s.bus is not None:
            await self._join_cluster()
        try:
            self.mqtt_port = await self.mqtt.listen(s.host, s.mqtt_port)
        except OSError as exc:
            raise _listen_error("MQTT", s.host, s.mqtt_port, exc) from None
        tls = self._tls_context()
        if tls is not None:
            try:
                self.mqtts_port = await self.mqtt.listen(s.host, s.mqtts_port, ssl_context=tls)
            except OSError as exc:
                raise _listen_error("MQTT over TLS", s.host, s.mqtts_port, exc) from None
        try:
            self._http_socket = _bind(s.host, s.http_port)
        except OSError as exc:
            raise _listen_error("REST", s.host, s.http_port, exc) from None
        self.http_port = int(self._http_socket.getsockname()[1])
        config = uvicorn.Config(
            self.build_app(),
            log_level="warning",
            lifespan="off",
            access_log=False,
            ssl_certfile=s.tls_cert if tls else None,
            ssl_keyfile=s.tls_key if tls else None,
            timeout_graceful_shutdown=2,
            http=guarded_http_protocol(),  # closes sockets that never send complete request headers
        )
        config.load()
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=[self._http_socket])
        self._uvicorn = server
        self._uvicorn_task = asyncio.create_task(server.main_loop(), name="hub-http")
        await self.jobs.resume()
        self.ready = True

    async def stop(self) -> None:
        """Close connections and listeners, then the store."""
        self.ready = False
        if self.cluster is not None:
            await self.cluster.stop_heartbeat()  # adopts no job while this node shuts down
        if self._uvicorn is not None:
            self.methods.shut_down()  # REST callers waiting for a device get 503 before the HTTP server goes
            self._uvicorn.should_exit = True
            if self._uvicorn_task is not None:
                await self._uvicorn_task
            await self._uvicorn.shutdown(sockets=[self._http_socket] if self._http_socket else None)
            self._uvicorn = None
        await self.jobs.stop()
        await self.mqtt.close()
        await self.sessions.close()
        if self.cluster is not None:
            await self.cluster.leave()
            await self.cluster.stop()
        await self.store.close()

    # ---- facts for users --------------------------------------------------------------
    @property
    def scheme(self) -> str:
        """``https`` when TLS is configured, else ``http``."""
        return "https" if self.mqtts_port is not None else "http"

    @property
    def base_url(self) -> str:
        """``scheme://host:http_port`` of the REST API (after :meth:`start`)."""
        return f"{self.scheme}://{self.settings.host}:{self.http_port}"

    def connection_string(self, policy: str = "iothubowner") -> str:
        """The service connection string for ``policy``."""
        return str(
            ConnectionString(
                host_name=self.settings.hostname,
                shared_access_key_name=policy,
                shared_access_key=self.service_auth.policy_keys[policy],
            )
        )

    async def device_connection_string(self, device_id: str) -> str:
        """The device connection string of a registered device (404001 when unknown)."""
        record = await self.registry.get(device_id)
        return str(
            ConnectionString(
                host_name=self.settings.hostname, device_id=device_id, shared_access_key=record.primary_key or ""
            )
        )
