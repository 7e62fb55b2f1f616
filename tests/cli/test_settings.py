"""Settings declared once: options derived from the models, flag > environment > default."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click
import pytest
import typer
from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from typer.testing import CliRunner

from iot_flows import _settings
from iot_flows._settings import ClientSettings, DemoSettings, FleetSettings, HubSettings, JobSettings
from iot_flows.cli._main import app
from iot_flows.cli._options import iter_options, settings_options, with_readme_table
from iot_flows.device import BehaviourConfig

ROOT = Path(__file__).resolve().parents[2]


def _command(*path: str) -> click.Command:
    command: Any = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    return command  # type: ignore[no-any-return]


def _flags(command: click.Command) -> set[str]:
    return {o for p in command.params for o in (*p.opts, *p.secondary_opts)}


def test_every_existing_flag_still_works() -> None:
    assert {
        "--host", "--hostname", "--mqtt-port", "--http-port", "--mqtts-port", "--db", "--tls-cert", "--tls-key",
        "--max-concurrent-jobs", "--job-device-concurrency", "--log-level",
    } <= _flags(_command("hub", "serve"))  # fmt: skip
    assert {
        "--hub", "--count", "-n", "--prefix", "--start-index", "--mqtt-host", "--mqtt-port", "--http-url", "--tls",
        "--no-tls", "--ca-file", "--provision", "--no-provision", "--connect-concurrency", "--keepalive",
        "--token-ttl", "--seed", "--reboot-seconds", "--factory-reset-seconds", "--fw-wait-seconds",
        "--fw-download-seconds", "--fw-apply-seconds", "--fw-reboot-seconds", "--config-apply-seconds",
        "--download-failure-rate", "--apply-failure-rate", "--hang-rate", "--config-failure-rate", "--slow-rate",
        "--churn-rate", "--churn-interval", "--churn-offline-seconds", "--duration", "--json", "--log-level",
    } <= _flags(_command("fleet", "simulate"))  # fmt: skip
    assert {"--devices", "--quick", "--only", "--verbose"} <= _flags(_command("demo"))


def test_every_field_is_an_option_and_nothing_else() -> None:
    def fields(model: type[BaseModel]) -> set[str]:
        out = set()
        for name, info in model.model_fields.items():
            if any(getattr(m, "hidden", False) for m in info.metadata):
                continue
            sub = info.annotation
            out |= (
                {f"{name}_{f}" for f in fields(sub)} if isinstance(sub, type) and issubclass(sub, BaseModel) else {name}
            )
        return out

    serve = {p.name for p in _command("hub", "serve").params} - {"help"}
    assert serve == {f"settings_{f}" for f in fields(HubSettings)}
    simulate = {p.name for p in _command("fleet", "simulate").params} - {"help"}
    assert simulate == (
        {f"client_{f}" for f in fields(ClientSettings)} | {f"fleet_{f}" for f in fields(FleetSettings)}
        | {f"behaviour_{f}" for f in fields(_settings.SimulatorSettings)}
    )  # fmt: skip
    assert {p.name for p in _command("demo").params} - {"help"} == {f"settings_{f}" for f in fields(DemoSettings)}


def test_simulator_settings_are_behaviour_configs_fields() -> None:
    simulator = _settings.SimulatorSettings
    assert list(simulator.model_fields) == [f.name for f in dataclasses.fields(BehaviourConfig)]
    defaults = BehaviourConfig()
    assert BehaviourConfig(**simulator().model_dump()) == defaults
    assert set(_settings._BEHAVIOUR_CLI) <= set(simulator.model_fields)  # no help for a field that is gone
    assert all(info.description for info in simulator.model_fields.values())


def test_serve_hub_request_is_derived_from_hub_settings() -> None:
    from iot_flows.flows.hub import _NOT_PARAMETERS, HubServeRequest

    request_fields = HubServeRequest.model_fields
    assert set(request_fields) == set(HubSettings.model_fields) - _NOT_PARAMETERS | {"duration_seconds"}
    for name in set(request_fields) - {"duration_seconds"}:
        assert request_fields[name].default == HubSettings.model_fields[name].default, name
        assert request_fields[name].description == HubSettings.model_fields[name].description, name


def test_client_and_hub_settings_share_only_the_profile() -> None:
    shared = set(ClientSettings.model_fields) & set(HubSettings.model_fields)
    assert shared == {"profile"}
    assert ClientSettings().profile == str(_settings.DEFAULT_PROFILE)


class _Toy(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IOT_FLOWS_TOY_", frozen=True)

    port: int = Field(1, ge=0, description="A port.")
    name: str = Field("n", description="A name.")
    fast: bool | None = Field(None, description="Go fast.")
    jobs: JobSettings = Field(default_factory=JobSettings)


def _toy_app(seen: list[Any]) -> typer.Typer:
    toy = typer.Typer()

    @toy.command()
    @settings_options(settings=_Toy)
    def run(settings: _Toy) -> None:
        seen.append(settings)

    @toy.command()
    def other() -> None:  # a second command, so "run" is a subcommand as in iot-flows
        pass

    return toy


def test_precedence_flag_then_environment_then_default(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[_Toy] = []
    monkeypatch.setenv("IOT_FLOWS_TOY_PORT", "7")
    monkeypatch.setenv("IOT_FLOWS_TOY_NAME", "from-env")
    monkeypatch.setenv("IOT_FLOWS_JOBS_BATCH_SIZE", "9")
    result = CliRunner().invoke(_toy_app(seen), ["run", "--port", "8", "--device-concurrency", "3"])
    assert result.exit_code == 0, result.output
    (settings,) = seen
    assert settings.port == 8  # flag beats environment
    assert settings.name == "from-env"  # environment beats default
    assert settings.fast is None  # default
    assert settings.jobs.device_concurrency == 3 and settings.jobs.batch_size == 9  # nested: same rule
    assert settings.jobs.max_concurrent_jobs == 10


def test_bool_flags_and_validation_errors_name_the_option() -> None:
    seen: list[_Toy] = []
    assert CliRunner().invoke(_toy_app(seen), ["run", "--no-fast"]).exit_code == 0
    assert seen[-1].fast is False
    result = CliRunner().invoke(_toy_app(seen), ["run", "--port", "-1"])
    assert result.exit_code == 2 and "--port" in result.output


def test_invalid_environment_value_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IOT_FLOWS_FLEET_HANG_RATE", "2")
    result = CliRunner().invoke(
        app, ["fleet", "simulate", "--hub", "HostName=h;SharedAccessKeyName=s;SharedAccessKey=a2V5"]
    )
    assert result.exit_code == 2
    assert "--hang-rate" in result.output


def test_generated_options_carry_help_range_and_env_name() -> None:
    options = {o.names[0]: o for o in iter_options("settings", HubSettings)}
    http = options["--http-port"]
    assert http.env == "IOT_FLOWS_HUB_HTTP_PORT" and http.default == 8080 and (http.minimum, http.maximum) == (0, 65535)
    assert options["--job-device-concurrency"].env == "IOT_FLOWS_JOBS_DEVICE_CONCURRENCY"
    assert "--owner-key" not in options  # secrets: environment only
    help_text = CliRunner().invoke(app, ["hub", "serve", "--help"], env={"COLUMNS": "200"}).output
    assert "IOT_FLOWS_HUB_HTTP_PORT" in help_text and "Service REST API port." in help_text


def test_environment_reaches_the_hub_settings_the_library_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IOT_FLOWS_HUB_OWNER_KEY", "a2V5")
    monkeypatch.setenv("IOT_FLOWS_JOBS_MAX_CONCURRENT_JOBS", "1")
    settings = HubSettings(http_port=0)
    assert settings.owner_key == "a2V5" and settings.jobs.max_concurrent_jobs == 1 and settings.http_port == 0
    assert "a2V5" not in repr(settings)


def test_readme_configuration_table_is_generated_from_the_models() -> None:
    readme = (ROOT / "README.md").read_text()
    assert readme == with_readme_table(readme), "run: python -m iot_flows.cli._options --write README.md"


def test_demo_is_the_same_typer_command_under_both_names() -> None:
    result = CliRunner().invoke(app, ["demo", "--quick", "--devices", "20"], env={"COLUMNS": "200"})
    assert result.exit_code == 2 and "not both" in result.output
    assert CliRunner().invoke(app, ["demo", "--devices", "5"]).exit_code == 2  # at least 10
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "iot_flows.demo", "--help"], cwd=ROOT, text=True, capture_output=True,
                          env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"}, timeout=60)  # fmt: skip
    assert done.returncode == 0 and "./scripts/demo" in done.stdout and "--devices" in done.stdout


def test_a_balancer_hub_url_does_not_take_the_node_profiles_mqtt_port(tmp_path):
    # Found by a newcomer following "Scaling out": a node's profile in the folder sent the
    # fleet's MQTT straight to that node, bypassing HAProxy given by --hub-url.
    from iot_flows._settings import ClientSettings, FleetSettings
    from iot_flows.cli._fleet import resolve_hub
    from iot_flows.cli._profile import HubProfile, write_profile

    cs = "HostName=127.0.0.1;SharedAccessKeyName=iothubowner;SharedAccessKey=" + "A" * 44
    path = tmp_path / "hub.json"
    write_profile(path, HubProfile(hostname="127.0.0.1", connection_string=cs, base_url="http://127.0.0.1:8081",
                                   mqtt_host="127.0.0.1", mqtt_port=1884, tls=False))
    node = resolve_hub(ClientSettings(connection_string=cs, profile=str(path)), FleetSettings())
    assert (node.http_url, node.mqtt_host, node.mqtt_port, node.tls) == ("http://127.0.0.1:8081", "127.0.0.1", 1884, False)
    same = resolve_hub(ClientSettings(connection_string=cs, url="http://127.0.0.1:8081/", profile=str(path)), FleetSettings())
    assert same.mqtt_port == 1884
    lb = resolve_hub(ClientSettings(connection_string=cs, url="http://127.0.0.1:8080", profile=str(path)), FleetSettings())
    assert (lb.http_url, lb.mqtt_host, lb.mqtt_port, lb.tls) == ("http://127.0.0.1:8080", "127.0.0.1", None, False)


def test_a_tls_hubs_profile_gives_the_fleet_its_mqtts_port_and_certificate(tmp_path):
    # Found by a newcomer: `fleet simulate --tls` in a TLS hub's folder dialled the plain
    # port with TLS and hung; `--ca-file` alone connected without TLS.
    from iot_flows._settings import ClientSettings, FleetSettings
    from iot_flows.cli._fleet import resolve_hub
    from iot_flows.cli._profile import HubProfile, write_profile

    cs = "HostName=localhost;SharedAccessKeyName=iothubowner;SharedAccessKey=" + "A" * 44
    path = tmp_path / "hub.json"
    write_profile(path, HubProfile(hostname="localhost", connection_string=cs, base_url="https://127.0.0.1:8443",
                                   mqtt_host="127.0.0.1", mqtt_port=1884, mqtts_port=8884, ca_file="/x/server.pem"))
    client = ClientSettings(profile=str(path))
    plain = resolve_hub(client, FleetSettings())
    assert (plain.mqtt_port, plain.tls, plain.ca_file) == (1884, False, "/x/server.pem")
    tls = resolve_hub(client, FleetSettings(tls=True))
    assert (tls.mqtt_port, tls.tls, tls.ca_file) == (8884, True, "/x/server.pem")
    by_ca = resolve_hub(client, FleetSettings(ca_file="/y/ca.pem"))
    assert (by_ca.mqtt_port, by_ca.tls, by_ca.ca_file) == (8884, True, "/y/ca.pem")
    assert resolve_hub(client, FleetSettings(tls=True, mqtt_port=9000)).mqtt_port == 9000
    write_profile(path, HubProfile(hostname="localhost", connection_string=cs, base_url="http://127.0.0.1:8080",
                                   mqtt_host="127.0.0.1", mqtt_port=1884))
    with pytest.raises(ValueError, match="serves no MQTT over TLS"):
        resolve_hub(client, FleetSettings(tls=True))


def test_hubs_started_together_in_one_folder_both_write_the_profile(tmp_path):
    # CI: the two nodes of the README's "Scaling out" share a folder; one node's profile write
    # moved the other's temporary file away and that node died (FileNotFoundError).
    import subprocess
    import sys

    code = (
        "import sys; from pathlib import Path; from iot_flows.cli._profile import HubProfile, write_profile\n"
        "p = HubProfile(hostname='h', connection_string='HostName=h;SharedAccessKeyName=a;SharedAccessKey=QQ==',"
        " base_url='http://127.0.0.1:1', mqtt_host='127.0.0.1', mqtt_port=int(sys.argv[1]))\n"
        "for _ in range(300): write_profile(Path(sys.argv[2]), p)\n"
    )
    path = tmp_path / ".iot-flows" / "hub.json"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(1000 + i), str(path)], stderr=subprocess.PIPE, text=True)
             for i in range(4)]  # fmt: skip
    errors = [proc.communicate(timeout=120)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0, 0], errors
    from iot_flows.cli._profile import read_profile

    found = read_profile(path)
    assert found is not None and found.mqtt_port in (1000, 1001, 1002, 1003)
    assert sorted(p.name for p in path.parent.iterdir()) == ["hub.json"]
