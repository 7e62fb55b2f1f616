"""``python -m iot_flows.demo`` (what ``./scripts/demo`` runs): see :mod:`iot_flows.demo`."""

from iot_flows.cli import demo_app

if __name__ == "__main__":
    demo_app(prog_name="./scripts/demo")
