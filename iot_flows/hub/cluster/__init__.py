"""Several hub nodes over one shared store and NATS (docs/architecture.md §1).

``iot-flows hub serve --bus nats://host:4222 [--node-id NAME]`` runs a hub as one node;
any node accepts any device and any REST call. See :class:`ClusterNode` for the hooks.
"""

from iot_flows.hub.cluster._bus import Bus, BusUnavailableError, ClusterError, NodeIdInUseError
from iot_flows.hub.cluster._node import ClusterNode, ClusterSettings, default_node_id

__all__ = ["Bus", "BusUnavailableError", "ClusterError", "NodeIdInUseError", "ClusterNode", "ClusterSettings", "default_node_id"]
