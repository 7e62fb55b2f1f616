"""Simulated behaviours are classes registered by name: adding one is one new class.

::

    from iot_flows.device import Behaviour, MethodResponse, register_behaviour

    @register_behaviour
    class Blink(Behaviour):
        \"\"\"Direct method ``blink``: report ``led: {blinking: true}``.\"\"\"

        name = "blink"
        methods = ("blink",)

        def on_method(self, device, request):
            device.report_soon({"led": {"blinking": True}})
            return MethodResponse(200, {"message": "blinking"})

A behaviour object holds no per-device state: one instance serves every device and gets
the device (a :class:`~iot_flows.device.DeviceBehaviour`: its client, config, reported
state, helpers) as an argument. State several behaviours share (firmware version, the
running update, the maintenance window) lives on the device; state only one behaviour
needs goes in ``device.state_of(name)``.

Hooks, all optional:

* :meth:`Behaviour.on_method` answers the direct methods listed in ``methods``.
* :meth:`Behaviour.on_twin` sees each full twin (first connect, reconnect, restart);
  the patches all behaviours return are reported as one, *before* any work started by
* :meth:`Behaviour.on_desired`, called for each of ``desired_keys`` present in a full
  twin (``change.complete``) or a desired patch, in ``order``.
* :meth:`Behaviour.on_factory_reset` forgets the behaviour's state; the patches all
  behaviours return are reported once the device is back.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from iot_flows.device._messages import MethodRequest, MethodResponse, MethodResult

if TYPE_CHECKING:
    from iot_flows.device._behaviours import DeviceBehaviour

__all__ = [
    "Behaviour",
    "DesiredChange",
    "Dispatch",
    "dispatch_for",
    "register_behaviour",
    "registered_behaviours",
    "unregister_behaviour",
]

B = TypeVar("B", bound="type[Behaviour]")


@dataclass(frozen=True, slots=True)
class DesiredChange:
    """One desired property for a behaviour: ``key``, its ``value`` (``None``: removed),
    the desired ``$version``, whether it comes from a full twin (``complete``) or a
    patch, and what the twin reports under ``key`` (full twin only; ``None`` after a
    factory reset, so the device applies everything again)."""

    key: str
    value: Any
    version: int
    complete: bool
    reported: Any = None


class Behaviour:
    """Base class of a simulated device-management behaviour (see the module docstring).

    Class attributes: ``name`` (unique registry key), ``methods`` (direct-method names
    it answers), ``desired_keys`` (desired properties it applies) and ``order`` (lower
    runs first when several behaviours see the same twin or patch).
    """

    name: ClassVar[str] = ""
    methods: ClassVar[tuple[str, ...]] = ()
    desired_keys: ClassVar[tuple[str, ...]] = ()
    order: ClassVar[int] = 100

    def __repr__(self) -> str:
        return f"<Behaviour {self.name!r}>"

    def on_method(self, device: DeviceBehaviour, request: MethodRequest) -> MethodResult | Awaitable[MethodResult]:
        """Answer direct method ``request.name`` (one of ``methods``): a
        :class:`MethodResponse`, ``(status, payload)``, a status or ``None`` (200),
        directly or from a coroutine. Default: 501."""
        return MethodResponse(501, {"message": f"method {request.name!r} is not implemented"})

    def on_twin(
        self, device: DeviceBehaviour, desired: dict[str, Any], reported: dict[str, Any], fresh: bool
    ) -> dict[str, Any] | None:
        """A full twin arrived (``fresh``: after a factory reset). Return a reported patch
        to send at once, merged with the other behaviours' (default: nothing)."""
        return None

    def on_desired(self, device: DeviceBehaviour, change: DesiredChange) -> None:
        """Apply one of ``desired_keys``; report through ``device`` (default: ignore)."""

    def on_factory_reset(self, device: DeviceBehaviour) -> dict[str, Any] | None:
        """Forget what this behaviour applied (the device is going back to factory
        state); return the reported patch that clears it (default: nothing)."""
        return None


class Dispatch:
    """Lookup tables for one set of behaviours: by method name and by desired key."""

    __slots__ = ("behaviours", "methods", "desired")

    def __init__(self, behaviours: Iterable[Behaviour]) -> None:
        self.behaviours = sorted(behaviours, key=lambda b: b.order)
        self.methods: dict[str, Behaviour] = {}
        self.desired: list[tuple[str, Behaviour]] = []
        for behaviour in self.behaviours:
            for method in behaviour.methods:
                if method in self.methods:
                    raise ValueError(f"method {method!r} is claimed by {self.methods[method]!r} and {behaviour!r}")
                self.methods[method] = behaviour
            self.desired.extend((key, behaviour) for key in behaviour.desired_keys)


_REGISTRY: dict[str, Behaviour] = {}
_DISPATCH: dict[tuple[str, ...] | None, Dispatch] = {}


def register_behaviour(cls: B) -> B:
    """Register behaviour class ``cls`` under ``cls.name`` (replacing one of that name);
    usable as a class decorator. Devices created afterwards use it.

    Raises ``ValueError`` for an empty name or a method another behaviour answers.
    """
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a name")
    registry = {**_REGISTRY, cls.name: cls()}
    Dispatch(registry.values())  # check for clashes before changing anything
    _REGISTRY.clear()
    _REGISTRY.update(registry)
    _DISPATCH.clear()
    return cls


def unregister_behaviour(name: str) -> None:
    """Remove the behaviour registered as ``name`` (nothing if there is none)."""
    if _REGISTRY.pop(name, None) is not None:
        _DISPATCH.clear()


def registered_behaviours() -> dict[str, Behaviour]:
    """The registered behaviours by name, in ``order``."""
    return {b.name: b for b in sorted(_REGISTRY.values(), key=lambda b: b.order)}


def dispatch_for(names: Iterable[str] | None = None) -> Dispatch:
    """The (cached) :class:`Dispatch` for the behaviours called ``names`` (default: all).

    Raises ``KeyError`` for a name nobody registered.
    """
    key = None if names is None else tuple(names)
    table = _DISPATCH.get(key)
    if table is None:
        if key is None:
            table = Dispatch(_REGISTRY.values())
        else:
            missing = [name for name in key if name not in _REGISTRY]
            if missing:
                raise KeyError(f"no behaviour registered as {', '.join(map(repr, missing))}; known: {sorted(_REGISTRY)}")
            table = Dispatch(_REGISTRY[name] for name in key)
        _DISPATCH[key] = table
    return table
