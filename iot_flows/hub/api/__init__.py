"""The service REST API of the hub (Starlette routes, IoT Hub error bodies, request rules)."""
