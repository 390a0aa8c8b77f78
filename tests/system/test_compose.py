"""The compose deployment (compose/), checked without Docker: every compose file validates
against the Compose Specification's JSON schema (vendored in compose/schema/), every
command of our image is a real `lumbarnode` subcommand whose options parse, and the
structural promises of compose/README.md hold (shared spool volume, GPU reservation,
health checks, loopback-only admin page, no literal secrets, Dockerfiles that install
the right extra). Each checker returns a list of problems; a mutated copy of the real
file shows that each check can fail. The health-check script runs for real against a
listener, an HTTP server and a Celery worker on Redis."""

from __future__ import annotations

import argparse
import copy
import http.server
import importlib.util
import json
import os
import re
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import jsonschema
import pytest
import yaml

from tests.helpers.tools import free_port
from worker.cli import build_parser
from worker.settings import Settings, parse_callers

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose"
MAIN = COMPOSE / "docker-compose.yml"
FILES = [MAIN, COMPOSE / "multi-host.yml", COMPOSE / "gpu-worker.yml"]
SCHEMA = COMPOSE / "schema" / "compose-spec.json"
SECRETS = ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "ORTHANC_PASSWORD")
DATA_MOUNT = "/var/lib/lumbarnode"
LUMBARNODE = Path(sys.executable).with_name("lumbarnode")


# ----------------------------------------------------------------- compose interpolation

_VAR = re.compile(r"\$(?:\$|\{(?P<braced>[^}]*)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")
_BRACED = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|-|:\?|\?|:\+|\+)(?P<arg>.*))?", re.S)


class MissingVariable(ValueError):
    pass


def interpolate_text(text: str, env: dict[str, str]) -> str:
    """Compose's interpolation: $$, $VAR, ${VAR}, ${VAR:-d}, ${VAR-d}, ${VAR:?e}, ${VAR?e},
    ${VAR:+a}, ${VAR+a}. A required variable that is unset (or empty, with ':') raises."""

    def one(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        if match.group("plain"):
            return env.get(match.group("plain"), "")
        inner = _BRACED.fullmatch(match.group("braced"))
        if inner is None:
            raise ValueError(f"invalid interpolation {match.group(0)!r}")
        name, op, arg = inner.group("name"), inner.group("op"), inner.group("arg") or ""
        value = env.get(name)
        empty = value is None or (value == "" and op is not None and op.startswith(":"))
        if op in (":-", "-"):
            return interpolate_text(arg, env) if empty else value
        if op in (":?", "?"):
            if empty:
                raise MissingVariable(f"{name}: {arg}")
            return value
        if op in (":+", "+"):
            return "" if empty else interpolate_text(arg, env)
        return value or ""

    return _VAR.sub(one, text)


def interpolate(node, env: dict[str, str]):
    if isinstance(node, str):
        return interpolate_text(node, env)
    if isinstance(node, list):
        return [interpolate(item, env) for item in node]
    if isinstance(node, dict):
        return {key: interpolate(value, env) for key, value in node.items()}
    return node


def read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


def example_env() -> dict[str, str]:
    """compose/.env.example with the blanks a site fills in."""
    env = read_env_file(COMPOSE / ".env.example")
    env.update({name: f"test-{name.lower().replace('_', '-')}" for name in SECRETS})
    env.update(LUMBARNODE_PRIVATE_BIND="10.0.0.20", LUMBARNODE_NFS_SERVER="10.0.0.30",
               LUMBARNODE_NFS_EXPORT="/export/lumbarnode", LUMBARNODE_DB_HOST="10.0.0.20",
               LUMBARNODE_REDIS_HOST="10.0.0.20")
    return env


def raw(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def load(path: Path, env: dict[str, str] | None = None) -> dict:
    return interpolate(raw(path), example_env() if env is None else env)


# ---------------------------------------------------------------------------- the schema

def schema_errors(document: dict) -> list[str]:
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
            for e in sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.path)))]


def test_the_vendored_schema_is_the_compose_specification_with_its_licence():
    schema = json.loads(SCHEMA.read_text())
    assert schema["title"] == "Compose Specification"
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    licence = (COMPOSE / "schema" / "LICENSE").read_text()
    assert "Apache License" in licence and "Version 2.0" in licence
    import hashlib

    digest = hashlib.sha256(SCHEMA.read_bytes()).hexdigest()
    assert digest in (COMPOSE / "schema" / "README.md").read_text(), "schema/README.md names another sha256"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_compose_file_validates_against_the_compose_specification(path):
    assert schema_errors(load(path)) == []


def test_the_schema_check_rejects_what_compose_rejects():
    document = load(MAIN)
    bad = copy.deepcopy(document)
    bad["services"]["listener"]["healthcheck"]["intervall"] = "30s"  # a typo
    assert any("intervall" in e for e in schema_errors(bad))
    bad = copy.deepcopy(document)
    bad["services"]["gpu-worker"]["deploy"]["resources"]["reservations"]["devices"][0].pop("capabilities")
    assert schema_errors(bad)
    bad = copy.deepcopy(document)
    bad["services"]["listener"]["depends_on"]["migrate"]["condition"] = "service_finished"
    assert schema_errors(bad)


def test_interpolation_follows_compose_rules():
    env = {"A": "x", "EMPTY": ""}
    assert interpolate_text("$$A ${A} $A ${B:-d} ${EMPTY:-d} ${EMPTY-d} ${A:+y} ${B:+y}", env) == "$A x x d d  y "
    with pytest.raises(MissingVariable):
        interpolate_text("${EMPTY:?needed}", env)
    with pytest.raises(MissingVariable):
        interpolate_text("${B?needed}", env)


# ------------------------------------------------------------------- our image's commands

def our_services(document: dict) -> dict[str, dict]:
    """Services that run the lumbarnode image (built from compose/Dockerfile.*)."""
    return {name: service for name, service in document["services"].items()
            if str(service.get("build", {}).get("dockerfile", "")).startswith("compose/Dockerfile.")}


def subcommands(parser: argparse.ArgumentParser) -> set[str]:
    return {name for action in parser._actions if isinstance(action, argparse._SubParsersAction)
            for name in action.choices}


def command_problems(document: dict) -> list[str]:
    problems = []
    known = subcommands(build_parser())
    for name, service in our_services(document).items():
        command = service.get("command")
        if not isinstance(command, list) or not command:
            problems.append(f"{name}: command must be a non-empty list (exec form), got {command!r}")
            continue
        if command[0] not in known:
            problems.append(f"{name}: {command[0]!r} is not a lumbarnode subcommand ({sorted(known)})")
            continue
        try:
            args = build_parser().parse_args(command)
        except SystemExit:
            problems.append(f"{name}: `lumbarnode {' '.join(command)}` does not parse")
            continue
        if command[0] == "worker":
            queues = set(args.queues.split(","))
            if not queues <= {"inference", "export"}:
                problems.append(f"{name}: unknown queue(s) {sorted(queues - {'inference', 'export'})}")
    return problems


@pytest.mark.parametrize("path", [MAIN, COMPOSE / "gpu-worker.yml"], ids=lambda p: p.name)
def test_every_command_of_our_image_is_a_lumbarnode_subcommand_that_parses(path):
    document = load(path)
    assert our_services(document), "no service runs the lumbarnode image"
    assert command_problems(document) == []


def test_the_command_check_catches_unknown_subcommands_and_bad_options():
    document = load(MAIN)
    for service, command in (("listener", ["serve-forever"]), ("export-worker", ["worker", "--queuez", "export"]),
                             ("gpu-worker", ["worker", "--queues", "gpu"]), ("migrate", "db upgrade"),
                             ("migrate", ["db", "downgrade"])):
        bad = copy.deepcopy(document)
        bad["services"][service]["command"] = command
        assert command_problems(bad), (service, command)


def test_the_image_runs_lumbarnode_so_commands_are_its_arguments():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["lumbarnode"] == "worker.cli:main"
    for kind in ("cpu", "gpu"):
        instructions = dockerfile(COMPOSE / f"Dockerfile.{kind}")
        assert ("ENTRYPOINT", '["lumbarnode"]') in instructions


def test_the_main_services_are_all_there_with_the_right_image_and_queue():
    services = load(MAIN)["services"]
    assert {"orthanc", "redis", "postgres", "migrate", "listener", "gpu-worker", "export-worker",
            "admin"} <= set(services)
    ours = our_services(load(MAIN))
    dockerfiles = {name: s["build"]["dockerfile"] for name, s in ours.items()}
    assert dockerfiles == {"migrate": "compose/Dockerfile.cpu", "listener": "compose/Dockerfile.cpu",
                           "gpu-worker": "compose/Dockerfile.gpu", "export-worker": "compose/Dockerfile.cpu",
                           "admin": "compose/Dockerfile.cpu", "cpu-worker": "compose/Dockerfile.cpu"}
    for service in ours.values():
        assert (COMPOSE / service["build"]["context"]).resolve() == ROOT
        assert (ROOT / service["build"]["dockerfile"]).is_file()
    assert services["migrate"]["command"] == ["db", "upgrade"]
    assert services["listener"]["command"] == ["listen"]
    assert services["gpu-worker"]["command"][:3] == ["worker", "--queues", "inference"]
    assert services["export-worker"]["command"][:3] == ["worker", "--queues", "export"]
    assert services["admin"]["command"][0] == "admin"
    assert services["cpu-worker"]["command"][:3] == ["worker", "--queues", "inference"]
    assert services["cpu-worker"]["profiles"] == ["cpu-inference"], "CPU inference only when asked for"
    assert services["postgres"]["image"].split(":")[1].startswith("16")
    assert services["redis"]["image"].split(":")[1].startswith("7")
    assert services["orthanc"]["image"].startswith("orthancteam/orthanc:")


# --------------------------------------------------------------- the structural promises

def volume_mounts(service: dict) -> dict[str, tuple[str, str]]:
    """target -> (source, mode) for the short volume syntax."""
    mounts = {}
    for entry in service.get("volumes", []):
        parts = entry.split(":")
        mounts[parts[1]] = (parts[0], parts[2] if len(parts) > 2 else "rw")
    return mounts


def shared_volume_problems(document: dict, services: tuple[str, ...]) -> list[str]:
    problems, seen = [], {}
    for name in services:
        service = document["services"][name]
        env = service.get("environment", {})
        mount = volume_mounts(service).get(DATA_MOUNT)
        if mount is None or mount[1] != "rw":
            problems.append(f"{name}: the data volume is not mounted read-write at {DATA_MOUNT}")
            continue
        if mount[0] not in (document.get("volumes") or {}):
            problems.append(f"{name}: {mount[0]!r} is not a named volume of the file")
        paths = (mount[0], env.get("LUMBARNODE_SPOOL_DIR"), env.get("LUMBARNODE_RESULTS_DIR"))
        for path in paths[1:]:
            if not (path or "").startswith(DATA_MOUNT + "/"):
                problems.append(f"{name}: {path!r} is not on the shared volume")
        seen[name] = paths
    if len(set(seen.values())) > 1:
        problems.append(f"volume, spool and results differ between services: {seen}")
    return problems


def test_listener_and_every_worker_share_the_spool_and_results_at_the_same_path():
    document = load(MAIN)
    assert shared_volume_problems(document, ("listener", "gpu-worker", "cpu-worker", "export-worker")) == []
    remote = load(COMPOSE / "gpu-worker.yml")
    assert shared_volume_problems(remote, ("gpu-worker",)) == []
    assert (remote["services"]["gpu-worker"]["environment"]["LUMBARNODE_SPOOL_DIR"]
            == document["services"]["listener"]["environment"]["LUMBARNODE_SPOOL_DIR"])


def test_the_shared_volume_check_can_fail():
    document = load(MAIN)
    bad = copy.deepcopy(document)
    bad["services"]["export-worker"]["volumes"] = ["lumbarnode-data:/data"]
    assert shared_volume_problems(bad, ("listener", "export-worker"))
    bad = copy.deepcopy(document)
    bad["services"]["gpu-worker"]["environment"] = {**bad["services"]["gpu-worker"]["environment"],
                                                   "LUMBARNODE_SPOOL_DIR": "/tmp/spool"}
    assert shared_volume_problems(bad, ("listener", "gpu-worker"))
    bad = copy.deepcopy(document)
    bad["services"]["listener"]["volumes"] = ["lumbarnode-data:/var/lib/lumbarnode:ro"]
    assert shared_volume_problems(bad, ("listener",))


def test_the_multi_host_override_puts_the_shared_volume_on_nfs_like_the_gpu_hosts():
    override = load(COMPOSE / "multi-host.yml")
    remote = load(COMPOSE / "gpu-worker.yml")
    assert override["volumes"]["lumbarnode-data"] == remote["volumes"]["lumbarnode-data"]
    assert override["volumes"]["lumbarnode-data"]["driver_opts"]["type"] == "nfs"
    for name in ("postgres", "redis"):
        (port,) = override["services"][name]["ports"]
        assert port.startswith("10.0.0.20:"), "published on the private address only"
    with pytest.raises(MissingVariable):  # never published on every interface by default
        load(COMPOSE / "multi-host.yml", {k: v for k, v in example_env().items() if k != "LUMBARNODE_PRIVATE_BIND"})


def gpu_problems(service: dict) -> list[str]:
    devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    nvidia = [d for d in devices if d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])
              and ("count" in d or d.get("device_ids"))]
    return [] if nvidia else ["no nvidia GPU reservation (deploy.resources.reservations.devices)"]


def test_the_gpu_worker_reserves_an_nvidia_gpu():
    main = load(MAIN)["services"]["gpu-worker"]
    assert gpu_problems(main) == []
    assert main["deploy"]["resources"]["reservations"]["devices"][0]["count"] == 1
    assert gpu_problems(load(COMPOSE / "gpu-worker.yml")["services"]["gpu-worker"]) == []
    for service in ("listener", "export-worker", "admin", "migrate", "cpu-worker"):
        assert gpu_problems(load(MAIN)["services"][service]), f"{service} should not hold a GPU"
    bad = copy.deepcopy(main)
    bad["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] = ["utility"]
    assert gpu_problems(bad)


def healthcheck_problems(document: dict) -> list[str]:
    problems = []
    for name, service in document["services"].items():
        one_shot = service.get("restart", "no") == "no"
        check = service.get("healthcheck")
        if one_shot:
            continue
        if not check or check.get("disable") or not check.get("test") or check["test"][0] == "NONE":
            problems.append(f"{name}: a long-running service without a health check")
    return problems


def test_every_long_running_service_has_a_health_check():
    document = load(MAIN)
    assert healthcheck_problems(document) == []
    assert healthcheck_problems(load(COMPOSE / "gpu-worker.yml")) == []
    assert [name for name, s in document["services"].items() if s.get("restart", "no") == "no"] == ["migrate"]
    bad = copy.deepcopy(document)
    del bad["services"]["export-worker"]["healthcheck"]
    assert healthcheck_problems(bad) == ["export-worker: a long-running service without a health check"]
    bad = copy.deepcopy(document)
    bad["services"]["redis"]["healthcheck"]["test"] = ["NONE"]
    assert healthcheck_problems(bad)


def test_health_checks_of_our_image_call_the_script_with_arguments_it_accepts():
    script = load_healthcheck_module()
    for path in (MAIN, COMPOSE / "gpu-worker.yml"):
        for name, service in our_services(load(path)).items():
            test = service.get("healthcheck", {}).get("test")
            if test is None:
                continue
            assert test[:3] == ["CMD", "python", "/app/healthcheck.py"], name
            parser_error = []
            try:
                script.main_parser().parse_args(test[3:])
            except SystemExit:
                parser_error.append(test)
            assert not parser_error, f"{name}: {test}"
    expected = {"listener": "listener", "gpu-worker": "worker", "cpu-worker": "worker", "export-worker": "worker",
                "admin": "admin"}
    for name, mode in expected.items():
        assert load(MAIN)["services"][name]["healthcheck"]["test"][3] == mode


def test_listener_and_workers_start_after_migrations_and_healthy_services():
    services = load(MAIN)["services"]
    for name in ("listener", "gpu-worker", "cpu-worker", "export-worker", "admin"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["postgres"]["condition"] == "service_healthy", name
        assert depends["redis"]["condition"] == "service_healthy", name
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def published(service: dict) -> list[tuple[str | None, str, str]]:
    """(host ip or None, host port, container port) of each published port."""
    out = []
    for entry in service.get("ports", []):
        parts = str(entry).rsplit(":", 2)
        out.append((parts[0], parts[1], parts[2]) if len(parts) == 3 else (None, *parts[-2:]))
    return out


def exposure_problems(document: dict, raw_document: dict) -> list[str]:
    """Everything published binds to an explicit address; only the listener's DICOM port
    may leave loopback (through LUMBARNODE_DICOM_BIND); the admin page never can."""
    problems = []
    for name, service in document["services"].items():
        for ip, host_port, _ in published(service):
            if ip is None:
                problems.append(f"{name}: port {host_port} published on every interface")
            elif ip != "127.0.0.1" and name != "listener":
                problems.append(f"{name}: port {host_port} published on {ip}")
    for entry in raw_document["services"]["admin"].get("ports", []):
        if not str(entry).startswith("127.0.0.1:"):
            problems.append(f"admin: {entry!r} is not fixed to 127.0.0.1")
    if not document["services"]["admin"].get("ports"):
        problems.append("admin: not published at all")
    return problems


def test_admin_and_orthanc_are_published_on_loopback_only():
    document, raw_document = load(MAIN), raw(MAIN)
    assert exposure_problems(document, raw_document) == []
    assert published(document["services"]["admin"]) == [("127.0.0.1", "8080", "8080")]
    assert ("127.0.0.1", "8042", "8042") in published(document["services"]["orthanc"])
    assert published(document["services"]["listener"]) == [("127.0.0.1", "11112", "11112")]
    for name in ("redis", "postgres", "gpu-worker", "cpu-worker", "export-worker", "migrate"):
        assert not document["services"][name].get("ports"), f"{name} must not be published"
    bad_raw = copy.deepcopy(raw_document)
    bad_raw["services"]["admin"]["ports"] = ["${ADMIN_BIND:-127.0.0.1}:8080:8080"]
    assert exposure_problems(interpolate(bad_raw, example_env()), bad_raw)
    bad_raw["services"]["admin"]["ports"] = ["8080:8080"]
    assert exposure_problems(interpolate(bad_raw, example_env()), bad_raw)
    bad_raw = copy.deepcopy(raw_document)
    bad_raw["services"]["orthanc"]["ports"] = ["0.0.0.0:8042:8042"]
    assert exposure_problems(interpolate(bad_raw, example_env()), bad_raw)


def strings(node, path=()):
    if isinstance(node, str):
        yield path, node
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from strings(item, (*path, str(i)))
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from strings(value, (*path, str(key)))


_REQUIRED_VAR = re.compile(r"\$\{[A-Z_][A-Z0-9_]*:\?[^}]*\}")
_URL_PASSWORD = re.compile(r"://[^/@\s:]*:([^@\s]+)@")


def secret_problems(raw_document: dict) -> list[str]:
    """Passwords come from required variables (${NAME:?...}), never from the file."""
    problems = []
    for path, value in strings(raw_document):
        key = path[-1] if path else ""
        secret_file = key.endswith("_FILE") and value.startswith("/run/secrets/")  # a Compose secret's file
        if re.search(r"PASSWORD|SECRET|TOKEN|REDISCLI_AUTH", key) and not _REQUIRED_VAR.fullmatch(value) \
                and not secret_file:
            problems.append(f"{'/'.join(path)}: {value!r} is not a required variable")
        for password in _URL_PASSWORD.findall(value):
            if not _REQUIRED_VAR.fullmatch(password):
                problems.append(f"{'/'.join(path)}: URL password {password!r} is not a required variable")
        if re.search(r"requirepass\s+(?!\S*\$)", value):
            problems.append(f"{'/'.join(path)}: literal requirepass")
    return problems


def test_no_literal_secrets_in_the_compose_files():
    for path in FILES:
        assert secret_problems(raw(path)) == [], path.name
    for bad_value in ("postgresql+psycopg://lumbarnode:hunter2@postgres:5432/lumbarnode",
                      "postgresql+psycopg://lumbarnode:${POSTGRES_PASSWORD:-hunter2}@postgres/lumbarnode"):
        bad = copy.deepcopy(raw(MAIN))
        bad["x-lumbarnode-env"]["LUMBARNODE_DATABASE_URL"] = bad_value
        assert secret_problems(bad)
    bad = copy.deepcopy(raw(MAIN))
    bad["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"] = "lumbarnode"
    assert secret_problems(bad)


def test_compose_refuses_to_start_without_each_secret():
    for name in SECRETS:
        env = example_env()
        env[name] = ""
        with pytest.raises(MissingVariable, match=name):
            load(MAIN, env)
    example = read_env_file(COMPOSE / ".env.example")
    assert all(example[name] == "" for name in SECRETS), ".env.example must not carry a password"


def test_the_admin_page_signs_in_with_the_first_admin_from_a_compose_secret():
    """Authentication is on by default (it cannot be off): the first admin's password reaches the
    admin service as a secret file from compose/.env's ADMIN_PASSWORD, which .env.example leaves
    empty; so does the single sign-on client secret."""
    document = raw(MAIN)
    admin = load(MAIN)["services"]["admin"]
    env = admin["environment"]
    assert env["LUMBARNODE_ADMIN_INITIAL_PASSWORD_FILE"] == "/run/secrets/admin_password"
    assert env["LUMBARNODE_OIDC_CLIENT_SECRET_FILE"] == "/run/secrets/oidc_client_secret"
    assert env["LUMBARNODE_DATABASE_URL"].startswith("postgresql+psycopg://")  # the node's settings, merged in
    assert env["LUMBARNODE_BROKER_URL"].startswith("redis://")  # an operator's retry reaches the workers
    assert set(document["services"]["admin"]["secrets"]) == {"admin_password", "oidc_client_secret"}
    assert document["secrets"] == {"admin_password": {"environment": "ADMIN_PASSWORD"},
                                   "oidc_client_secret": {"environment": "OIDC_CLIENT_SECRET"}}
    example = read_env_file(COMPOSE / ".env.example")
    assert example["ADMIN_PASSWORD"] == "" and example["OIDC_CLIENT_SECRET"] == ""


def test_orthanc_knows_the_node_and_the_node_returns_results_to_orthanc():
    document = load(MAIN)
    services = document["services"]
    orthanc_env = services["orthanc"]["environment"]
    assert orthanc_env["DICOM_WEB_PLUGIN_ENABLED"] == "true"
    assert "./orthanc.json:/etc/orthanc/orthanc.json:ro" in raw(MAIN)["services"]["orthanc"]["volumes"]
    config = json.loads((COMPOSE / "orthanc.json").read_text())
    node_env = services["listener"]["environment"]
    ae, host, port = config["DicomModalities"]["lumbarnode"]
    assert (ae, host, port) == (node_env["LUMBARNODE_AE_TITLE"], "listener", int(node_env["LUMBARNODE_PORT"]))
    assert "11112" == published(services["listener"])[0][2] == node_env["LUMBARNODE_PORT"]
    callers = parse_callers(node_env["LUMBARNODE_ALLOWED_CALLERS"])
    back = callers[config["DicomAet"]]
    assert (back.ae_title, back.host, back.port) == (config["DicomAet"], "orthanc", config["DicomPort"])
    assert config["DicomWeb"]["Enable"] is True and config["AuthenticationEnabled"] is True
    assert config["RegisteredUsers"] == {"${ORTHANC_USERNAME}": "${ORTHANC_PASSWORD}"}
    assert config["OverwriteInstances"] is True  # a re-run job replaces its results
    assert {"ORTHANC_USERNAME", "ORTHANC_PASSWORD"} <= set(orthanc_env)


def test_data_that_must_survive_restarts_lives_in_named_volumes():
    document = load(MAIN)
    expected = {"postgres": ("postgres-data", "/var/lib/postgresql/data"), "redis": ("redis-data", "/data"),
                "orthanc": ("orthanc-data", "/var/lib/orthanc/db"),
                "listener": ("lumbarnode-data", DATA_MOUNT)}
    for name, (volume, target) in expected.items():
        assert volume_mounts(document["services"][name]).get(target, ("",))[0] == volume, name
        assert volume in document["volumes"]
    assert "--appendonly" in " ".join(document["services"]["redis"]["command"])


def test_the_environment_is_a_valid_lumbarnode_configuration():
    fields = {name.upper() for name in Settings.__dataclass_fields__}
    single_host = {k: v for k, v in example_env().items() if k not in ("LUMBARNODE_DB_HOST", "LUMBARNODE_REDIS_HOST")}
    main = load(MAIN, single_host)
    assert "@postgres:5432/" in main["services"]["listener"]["environment"]["LUMBARNODE_DATABASE_URL"]
    assert "@redis:6379/" in main["services"]["listener"]["environment"]["LUMBARNODE_BROKER_URL"]
    for path in (MAIN, COMPOSE / "gpu-worker.yml"):
        for name, service in our_services(load(path)).items():
            env = service["environment"]
            unknown = [k for k in env if k.startswith("LUMBARNODE_") and k[len("LUMBARNODE_"):] not in fields]
            assert unknown == [], f"{path.name} {name}: not settings: {unknown}"
            settings = Settings.from_env({k: str(v) for k, v in env.items()})
            assert str(settings.spool_dir).startswith(DATA_MOUNT) and settings.database_url.startswith("postgresql")
            assert settings.broker_url.startswith("redis://")
    remote = load(COMPOSE / "gpu-worker.yml")["services"]["gpu-worker"]["environment"]
    local = main["services"]["gpu-worker"]["environment"]
    assert set(remote) == set(local), "gpu-worker.yml must carry the same settings as the main file"
    assert {k for k in remote if remote[k] != local[k]} == {"LUMBARNODE_DATABASE_URL", "LUMBARNODE_BROKER_URL"}


# ---------------------------------------------------------------------------- Dockerfiles

def dockerfile(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


def _glob_regex(pattern: str) -> re.Pattern:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def ignored(relative: str, patterns: list[str]) -> bool:
    """.dockerignore semantics: the last matching pattern wins, a match on a parent folder
    counts, '!' re-includes."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _glob_regex(pattern.lstrip("!").strip("/"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            result = not negate
    return result


def copied_files(instructions: list[tuple[str, str]]) -> list[str]:
    files = []
    for word, rest in instructions:
        if word != "COPY":
            continue
        args = [a for a in rest.split() if not a.startswith("--")]
        for source in args[:-1]:
            matches = sorted(ROOT.glob(source))
            assert matches, f"COPY {source}: nothing in the repository matches"
            for match in matches:
                for path in ([match] if match.is_file() else sorted(match.rglob("*"))):
                    if path.is_file() and "__pycache__" not in path.parts:
                        files.append(path.relative_to(ROOT).as_posix())
    return files


@pytest.mark.parametrize("kind", ["cpu", "gpu"])
def test_dockerfile_installs_its_extra_as_a_non_root_user(kind):
    path = COMPOSE / f"Dockerfile.{kind}"
    instructions = dockerfile(path)
    runs = " ".join(rest for word, rest in instructions if word == "RUN")
    other = {"cpu": "gpu", "gpu": "cpu"}[kind]
    assert re.search(rf"pip install ['\"]?\S*\[{kind}\]", runs), f"{path.name} does not install .[{kind}]"
    assert f"[{other}]" not in runs, f"{path.name} installs the {other} extra too"
    assert instructions[0][0] == "FROM" or instructions[0][0] == "ARG"
    assert "python:3.11" in next(rest for word, rest in instructions if word == "FROM")
    users = [rest for word, rest in instructions if word == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must run as a non-root user"
    env = " ".join(rest for word, rest in instructions if word == "ENV")
    assert "LUMBARNODE_MODEL_DIR=/app/models" in env


@pytest.mark.parametrize("kind", ["cpu", "gpu"])
def test_dockerfile_copies_every_package_and_its_dockerignore_lets_exactly_that_in(kind):
    instructions = dockerfile(COMPOSE / f"Dockerfile.{kind}")
    files = copied_files(instructions)
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    for package in packages:
        name = package.rstrip("*")
        assert any(f.startswith(f"{name}/") for f in files), f"package {name} is not copied into the image"
    for weights in ("unet_4class.weights.h5", "deteclordose.weights.h5"):
        assert f"models/{weights}" in files
    assert "compose/healthcheck.py" in files and "pyproject.toml" in files and "README.md" in files
    patterns = [line.strip() for line in (COMPOSE / f"Dockerfile.{kind}.dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    let_in_wrongly = [f for f in files if ignored(f, patterns)]
    assert let_in_wrongly == [], f"the dockerignore keeps out files the Dockerfile copies: {let_in_wrongly}"
    for outside in (".venv/bin/python", ".git/HEAD", "var/spool/x.dcm", "tests/system/test_compose.py",
                    "worker/__pycache__/cli.cpython-311.pyc", "compose/.env", "models/eval/plot.png"):
        assert ignored(outside, patterns), f"{outside} would be sent to the builder"


def test_the_non_editable_install_of_the_image_carries_every_file_of_our_packages(tmp_path):
    """What `pip install '/src[...]'` builds from exactly what the Dockerfile copies: a wheel
    with every module and data file (migrations, templates), so the image needs no checkout."""
    files = copied_files(dockerfile(COMPOSE / "Dockerfile.cpu"))
    source = tmp_path / "src"
    packaged = [f for f in files if not f.startswith(("models/", "compose/"))]
    for relative in packaged:
        (source / relative).parent.mkdir(parents=True, exist_ok=True)
        (source / relative).write_bytes((ROOT / relative).read_bytes())
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    import zipfile

    (wheel,) = (tmp_path / "dist").glob("lumbarnode-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [f for f in packaged if f not in ("pyproject.toml", "README.md") and f not in names]
    assert missing == [], f"not in the installed package: {missing}"
    assert any(n.endswith("entry_points.txt") for n in names)


# ------------------------------------------------------------- the health-check script

def load_healthcheck_module():
    spec = importlib.util.spec_from_file_location("compose_healthcheck", COMPOSE / "healthcheck.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_healthcheck(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LUMBARNODE_")}
    return subprocess.run([sys.executable, str(COMPOSE / "healthcheck.py"), *args], capture_output=True,
                          text=True, timeout=60, env={**clean, **env}, cwd=ROOT)


def test_listener_health_check_is_a_real_c_echo_as_an_allowed_caller(tmp_path):
    from dicom_io.scp import StorageSCP
    from dicom_io.series import decodable_transfer_syntaxes

    port = free_port()
    env = {"LUMBARNODE_DATA_DIR": str(tmp_path), "LUMBARNODE_PORT": str(port),
           "LUMBARNODE_ALLOWED_CALLERS": "ORTHANC=ORTHANC@orthanc:4242"}
    down = run_healthcheck("listener", "--timeout", "3", env=env)
    assert down.returncode == 1 and "UNHEALTHY" in down.stdout
    listener = StorageSCP("LUMBARNODE", tmp_path / "spool", allowed_callers={"ORTHANC"},
                          transfer_syntaxes=[str(t) for t in decodable_transfer_syntaxes()])
    listener.start("127.0.0.1", port)
    try:
        up = run_healthcheck("listener", "--timeout", "3", env=env)
        assert up.returncode == 0, up.stdout + up.stderr
        wrong_ae = run_healthcheck("listener", "--timeout", "3", env={**env, "LUMBARNODE_AE_TITLE": "OTHER"})
        assert wrong_ae.returncode == 1
    finally:
        listener.stop()


def test_admin_health_check_wants_200_from_healthz():
    status = {"code": 200}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(status["code"] if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = str(server.server_address[1])
        assert run_healthcheck("admin", "--port", port, env={}).returncode == 0
        status["code"] = 503
        assert run_healthcheck("admin", "--port", port, env={}).returncode == 1
    finally:
        server.shutdown()
        server.server_close()
    assert run_healthcheck("admin", "--port", port, env={}).returncode == 1


def redis_url(db: int) -> str:
    base = urlsplit(os.environ.get("LUMBARNODE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))
    return urlunsplit((base.scheme, base.netloc, f"/{db}", "", ""))


def test_worker_health_check_pings_this_hosts_celery_worker_through_the_broker(tmp_path):
    env = {"LUMBARNODE_DATA_DIR": str(tmp_path), "LUMBARNODE_BROKER_URL": redis_url(13),
           "LUMBARNODE_DATABASE_URL": f"sqlite:///{tmp_path / 'jobs.db'}"}
    before = run_healthcheck("worker", "--timeout", "2", env=env)
    assert before.returncode == 1, before.stdout
    log = open(tmp_path / "worker.log", "w")
    worker = subprocess.Popen([str(LUMBARNODE), "worker", "--queues", "export", "--concurrency", "1"],
                              env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        deadline, result = time.monotonic() + 60, None
        while time.monotonic() < deadline:
            result = run_healthcheck("worker", "--timeout", "2", env=env)
            if result.returncode == 0 or worker.poll() is not None:
                break
        assert result is not None and result.returncode == 0, (result.stdout if result else "",
                                                               (tmp_path / "worker.log").read_text()[-2000:])
        assert "lumbarnode-export-" in result.stdout
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        log.close()
    after = run_healthcheck("worker", "--timeout", "2", env=env)
    assert after.returncode == 1, after.stdout
    unreachable = run_healthcheck("worker", "--timeout", "2",
                                  env={**env, "LUMBARNODE_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"})
    assert unreachable.returncode == 1 and "broker not reachable" in unreachable.stdout


def test_the_sites_viewer_is_the_ohif_build_and_configuration_the_viewer_tests_drive():
    """compose's viewer serves build/ohif (scripts/install-viewer.sh: the pinned @ohif/app with
    compose/ohif/app-config.js, what tests/viewer opens) on loopback, with DICOMweb forwarded
    to Orthanc at the paths app-config.js names, on the same origin."""
    from tests.viewer.harness import OHIF_VERSION

    viewer = load(MAIN)["services"]["viewer"]
    assert "../build/ohif:/usr/share/nginx/html:ro" in viewer["volumes"]
    assert published(viewer) == [("127.0.0.1", "3000", "80")]
    install = (ROOT / "scripts" / "install-viewer.sh").read_text()
    assert f"OHIF_VERSION={OHIF_VERSION}\n" in install and "compose/ohif/app-config.js" in install
    config = (COMPOSE / "ohif" / "app-config.js").read_text()
    roots = set(re.findall(r"(?:wadoUriRoot|qidoRoot|wadoRoot): '([^']+)'", config))
    assert roots == {"/dicom-web", "/wado"}
    nginx = (COMPOSE / "ohif" / "nginx.conf").read_text()
    forwarded = dict(re.findall(r"location (\S+) \{\s*proxy_pass (\S+);", nginx))
    assert forwarded == {"/dicom-web/": "http://orthanc:8042", "/wado": "http://orthanc:8042"}
    assert load(MAIN)["services"]["orthanc"]["environment"]["OHIF_PLUGIN_ENABLED"] == "false"  # one viewer
