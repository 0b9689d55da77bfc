"""Kubernetes manifests from an :class:`~corral.k8s.intent.Intent`, as Python data.

Theory of operation
-------------------
:func:`render` returns a list of plain dicts, one per Kubernetes object; :func:`dump`
writes them as YAML with PyYAML. No text templates: every object is built as data,
so a value is never mis-quoted or mis-indented.

Every flag, environment variable and default a container gets comes from the one
configuration schema (:mod:`corral.config.tables`): :func:`env` looks each setting up
by name, takes its environment variable from there and checks the value with the
setting's own parser, so a manifest cannot set a variable the CLI does not read, or
a value it would refuse. The ports are the schema's defaults where it has one.

What comes out, for an intent named ``corral`` with a model ``gemma``:

- ``corral-weights``: the shared weight cache (PersistentVolumeClaim).
- ``corral-balancer`` (StatefulSet, so each balancer pod has a stable name agents can
  register with: every balancer must know every agent), ``corral-balancer-pods``
  (headless Service for those names), ``corral`` (Service: inference, management,
  the KEDA scaler), ``corral-balancer`` (PodDisruptionBudget).
- ``corral-gemma`` (Deployment): an init container copies and verifies the model into
  the cache once (``corral k8s fetch``: temporary name, SHA-256, rename); the
  ``agent`` container runs ``corral agent``, which supervises llama-server, answers
  the probes on ``--probe-addr`` and drains before the pod goes (preStop
  ``corral k8s drain``).
- ``corral-gemma`` (KEDA ScaledObject) when ``replicas.min < replicas.max``: one
  ``external-push`` trigger per balancer pod (the balancer's scaler), or a
  ``prometheus`` trigger.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from corral import __version__
from corral.config import AGENT, BALANCER, Schema
from corral.config.schema import format_value
from corral.k8s.intent import Intent, Model, Resources, Values

INFERENCE_PORT: int = BALANCER.default("inference_addr").port
MANAGEMENT_PORT: int = BALANCER.default("management_addr").port
KEDA_PORT = 9095
"""The balancer's ``--keda-addr`` port in a pod (the setting is off by default)."""
PROBE_PORT = 8070
"""The agent's ``--probe-addr`` port in a pod (the setting is off by default)."""
LLAMACPP_PORT = 8080
"""The supervised llama-server's port in a pod (llama-server's own default)."""
CACHE_DIR = "/cache"
SOURCE_DIR = "/source"
DRAIN_TIMEOUT = 120
"""Seconds the preStop hook waits for requests in flight to end."""
SECRET_KEYS = {"agent_token": "agent-token", "management_token": "management-token"}

_SECURITY = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def env(schema: Schema, values: Mapping[str, Any]) -> list[dict[str, str]]:
    """Environment entries that set ``schema``'s settings, by setting name.

    Each value is written as a person writes it on the command line and parsed back
    with the setting's own parser (unless it uses Kubernetes' ``$(VAR)``
    substitution), so a manifest never carries a value the CLI would refuse.

    Raises:
        KeyError: The schema has no such setting.
        argparse.ArgumentTypeError: The value is not valid for the setting.
    """
    entries = []
    for name, value in values.items():
        setting = schema[name]
        text = format_value(value)
        if "$(" not in text:
            setting.parse_text(text)
        entries.append({"name": setting.env, "value": text})
    return entries


def secret_env(schema: Schema, secret: str) -> list[dict[str, Any]]:
    """The secret settings (tokens) from an optional Secret: unset when it is absent."""
    return [
        {
            "name": schema[name].env,
            "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": True}},
        }
        for name, key in SECRET_KEYS.items()
        if name in schema
    ]


def _labels(intent: Intent, values: Values, component: str, **more: str) -> dict[str, str]:
    labels = {
        "app.kubernetes.io/name": "corral",
        "app.kubernetes.io/instance": intent.name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": "corral-k8s-render",
        "app.kubernetes.io/version": __version__,
        **{f"corral.dev/{k}": v for k, v in more.items()},
    }
    return {**values.labels, **labels}


def _selector(intent: Intent, component: str, **more: str) -> dict[str, str]:
    selector = {
        "app.kubernetes.io/name": "corral",
        "app.kubernetes.io/instance": intent.name,
        "app.kubernetes.io/component": component,
    }
    selector.update({f"corral.dev/{k}": v for k, v in more.items()})
    return selector


def _meta(intent: Intent, values: Values, name: str, labels: dict[str, str]) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": labels}
    if intent.namespace:
        meta["namespace"] = intent.namespace
    if values.annotations:
        meta["annotations"] = dict(values.annotations)
    return meta


def _resources(resources: Resources) -> dict[str, Any]:
    requests: dict[str, Any] = {"cpu": resources.cpu, "memory": resources.memory}
    limits: dict[str, Any] = {"memory": resources.memory}
    if resources.gpu:
        requests["nvidia.com/gpu"] = resources.gpu
        limits["nvidia.com/gpu"] = resources.gpu
    return {"requests": requests, "limits": limits}


def _pod_spec(
    values: Values, containers: list[dict[str, Any]], model: str | None = None, **more: Any
) -> dict[str, Any]:
    node_selector = dict(values.node_selector)
    tolerations = list(values.tolerations)
    if model is not None and model in values.models:
        node_selector.update(values.models[model].get("nodeSelector", {}))
        tolerations += list(values.models[model].get("tolerations", ()))
    spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "fsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": containers,
        **more,
    }
    if node_selector:
        spec["nodeSelector"] = node_selector
    if tolerations:
        spec["tolerations"] = tolerations
    return spec


def _http_probe(path: str, port: str, **timing: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": port}, **timing}


def balancer_addresses(intent: Intent) -> list[str]:
    """``HOST:PORT`` of each balancer pod's management listener (stable DNS names)."""
    pods, headless = f"{intent.name}-balancer", f"{intent.name}-balancer-pods"
    suffix = f".{intent.namespace}.svc" if intent.namespace else ""
    return [
        f"{pods}-{i}.{headless}{suffix}:{MANAGEMENT_PORT}" for i in range(intent.balancer.replicas)
    ]


def keda_addresses(intent: Intent) -> list[str]:
    """``HOST:PORT`` of each balancer pod's KEDA scaler."""
    return [a.rsplit(":", 1)[0] + f":{KEDA_PORT}" for a in balancer_addresses(intent)]


# ------------------------------------------------------------------ objects
def weight_cache(intent: Intent, values: Values) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "accessModes": [intent.cache.access_mode],
        "resources": {"requests": {"storage": intent.cache.size}},
    }
    if intent.cache.storage_class:
        spec["storageClassName"] = intent.cache.storage_class
    labels = _labels(intent, values, "weight-cache")
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _meta(intent, values, f"{intent.name}-weights", labels),
        "spec": spec,
    }


def balancer_objects(intent: Intent, values: Values) -> list[dict[str, Any]]:
    name = f"{intent.name}-balancer"
    labels = _labels(intent, values, "balancer")
    selector = _selector(intent, "balancer")
    settings: dict[str, Any] = {
        "inference_addr": f"0.0.0.0:{INFERENCE_PORT}",
        "management_addr": f"0.0.0.0:{MANAGEMENT_PORT}",
        "state_file": "/var/lib/corral/desired-state.json",
        "scaled_model": [m.name for m in intent.models],
        "forwarded_allow_ips": ["*"],  # behind a cluster Service, peers are proxies
        "log_format": "json",
    }
    ports = [
        {"name": "inference", "containerPort": INFERENCE_PORT},
        {"name": "management", "containerPort": MANAGEMENT_PORT},
    ]
    if intent.scaling.trigger == "external":
        settings["keda_addr"] = f"0.0.0.0:{KEDA_PORT}"
        ports.append({"name": "keda", "containerPort": KEDA_PORT})
    container = {
        "name": "balancer",
        "image": values.image,
        "imagePullPolicy": values.image_pull_policy,
        "args": ["balancer"],
        "env": [*env(BALANCER, settings), *secret_env(BALANCER, f"{intent.name}-secrets")],
        "ports": ports,
        "readinessProbe": _http_probe("/health", "management", periodSeconds=5),
        "livenessProbe": _http_probe("/health", "management", periodSeconds=10, failureThreshold=6),
        "resources": _resources(intent.balancer.resources),
        "securityContext": _SECURITY,
        "volumeMounts": [{"name": "state", "mountPath": "/var/lib/corral"}],
    }
    pod = _pod_spec(
        values,
        [container],
        terminationGracePeriodSeconds=30,
        volumes=[{"name": "state", "emptyDir": {}}],
    )
    meta = _meta(intent, values, name, labels)
    statefulset = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": meta,
        "spec": {
            "serviceName": f"{name}-pods",
            "replicas": intent.balancer.replicas,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": selector},
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    }
    service_ports = [
        {"name": p["name"], "port": p["containerPort"], "targetPort": p["name"]} for p in ports
    ]
    headless = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(intent, values, f"{name}-pods", labels),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": selector,
            "ports": service_ports,
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(intent, values, intent.name, labels),
        "spec": {"type": values.service_type, "selector": selector, "ports": service_ports},
    }
    budget = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(intent, values, name, labels),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector}},
    }
    return [statefulset, headless, service, budget]


def _fetch_step(
    intent: Intent, values: Values, model: Model
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The init container that caches the model, and the volumes it needs."""
    target = f"{CACHE_DIR}/models/{model.name}.gguf"
    mounts: list[dict[str, Any]] = [{"name": "weights", "mountPath": CACHE_DIR}]
    volumes: list[dict[str, Any]] = [
        {"name": "weights", "persistentVolumeClaim": {"claimName": f"{intent.name}-weights"}}
    ]
    source = model.source
    if source.startswith("pvc://"):
        claim, _, path = source[len("pvc://") :].partition("/")
        source = f"{SOURCE_DIR}/{path}"
        mounts.append({"name": "source", "mountPath": SOURCE_DIR, "readOnly": True})
        volumes.append(
            {"name": "source", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        )
    args = ["k8s", "fetch", source, target]
    if model.sha256:
        args += ["--sha256", model.sha256]
    container = {
        "name": "fetch-model",
        "image": values.image,
        "imagePullPolicy": values.image_pull_policy,
        "args": args,
        "env": [{"name": "HOME", "value": "/tmp"}],
        "resources": {
            "requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"memory": "512Mi"},
        },
        "securityContext": _SECURITY,
        "volumeMounts": [*mounts, {"name": "tmp", "mountPath": "/tmp"}],
    }
    return container, volumes


def model_objects(intent: Intent, values: Values, model: Model) -> list[dict[str, Any]]:
    name = f"{intent.name}-{model.name}"
    labels = _labels(intent, values, "model", model=model.name)
    selector = _selector(intent, "model", model=model.name)
    fetch, volumes = _fetch_step(intent, values, model)
    settings: dict[str, Any] = {
        "model": f"{CACHE_DIR}/models/{model.name}.gguf",
        "model_alias": model.name,
        "slots": model.slots,
        "ctx_size": model.ctx_size,
        "llamacpp_host": "0.0.0.0",
        "llamacpp_port": LLAMACPP_PORT,
        "external_llamacpp_addr": f"$(POD_IP):{LLAMACPP_PORT}",
        "management_addr": balancer_addresses(intent),
        "probe_addr": f"0.0.0.0:{PROBE_PORT}",
        "name": "$(POD_NAME)",
        "log_format": "json",
    }
    if re.fullmatch(r"[0-9]+", model.resources.cpu):
        settings["threads"] = int(model.resources.cpu)
    pod_env = [
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "HOME", "value": "/tmp"},
    ]
    args = ["agent", *(["--", *model.args] if model.args else [])]
    drain = ["corral", "k8s", "drain", f"127.0.0.1:{PROBE_PORT}", "--timeout", str(DRAIN_TIMEOUT)]
    agent = {
        "name": "agent",
        "image": values.image,
        "imagePullPolicy": values.image_pull_policy,
        "args": args,
        "env": [
            *pod_env,
            *env(AGENT, settings),
            *secret_env(AGENT, f"{intent.name}-secrets"),
        ],
        "ports": [
            {"name": "llamacpp", "containerPort": LLAMACPP_PORT},
            {"name": "probes", "containerPort": PROBE_PORT},
        ],
        "readinessProbe": _http_probe("/readyz", "probes", periodSeconds=2),
        "livenessProbe": _http_probe("/livez", "probes", periodSeconds=10, failureThreshold=3),
        "lifecycle": {"preStop": {"exec": {"command": drain}}},
        "resources": _resources(model.resources),
        "securityContext": _SECURITY,
        "volumeMounts": [
            {"name": "weights", "mountPath": CACHE_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    pod = _pod_spec(
        values,
        [agent],
        model=model.name,
        initContainers=[fetch],
        terminationGracePeriodSeconds=DRAIN_TIMEOUT + 30,
        volumes=[*volumes, {"name": "tmp", "emptyDir": {}}],
    )
    spec: dict[str, Any] = {
        "selector": {"matchLabels": selector},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0}},
        "template": {"metadata": {"labels": labels}, "spec": pod},
    }
    scaled = model.replicas.min < model.replicas.max
    if not scaled:  # fixed size; with a ScaledObject the HPA owns the count
        spec["replicas"] = model.replicas.min
    objects: list[dict[str, Any]] = [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": _meta(intent, values, name, labels),
            "spec": spec,
        }
    ]
    if scaled:
        objects.append(scaled_object(intent, values, model, name, labels))
    return objects


def scaled_object(
    intent: Intent, values: Values, model: Model, target: str, labels: dict[str, str]
) -> dict[str, Any]:
    """KEDA's ScaledObject for one model's Deployment."""
    if intent.scaling.trigger == "external":
        triggers = [
            {
                "type": "external-push",
                "metadata": {
                    "scalerAddress": address,
                    "model": model.name,
                    "slotsPerReplica": str(model.slots),
                },
            }
            for address in keda_addresses(intent)
        ]
    else:
        triggers = [
            {
                "type": "prometheus",
                "metadata": {
                    "serverAddress": intent.scaling.prometheus_address,
                    "query": f'max(corral_model_demand{{model="{model.name}"}})',
                    "threshold": str(model.slots),
                    "activationThreshold": "0",
                },
            }
        ]
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": _meta(intent, values, target, labels),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
            "minReplicaCount": model.replicas.min,
            "maxReplicaCount": model.replicas.max,
            "pollingInterval": intent.scaling.polling_interval,
            "cooldownPeriod": intent.scaling.cooldown_period,
            "triggers": triggers,
        },
    }


def render(intent: Intent, values: Values | None = None) -> list[dict[str, Any]]:
    """Every object for ``intent``, in the order ``kubectl apply`` wants them."""
    values = values or Values()
    objects = [weight_cache(intent, values), *balancer_objects(intent, values)]
    for model in intent.models:
        objects += model_objects(intent, values, model)
    return objects


def file_name(obj: Mapping[str, Any]) -> str:
    """``<kind>-<name>.yaml`` in lower case, for ``-o DIR``."""
    return f"{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"


def dump(objects: Iterable[Mapping[str, Any]]) -> str:
    """The objects as one YAML stream (``---`` between documents)."""
    import yaml

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True  # a label map used twice is written twice, not as &id001

    return yaml.dump_all(list(objects), Dumper=Dumper, sort_keys=False, default_flow_style=False)


__all__ = [
    "INFERENCE_PORT",
    "KEDA_PORT",
    "LLAMACPP_PORT",
    "MANAGEMENT_PORT",
    "PROBE_PORT",
    "balancer_addresses",
    "dump",
    "env",
    "file_name",
    "render",
    "secret_env",
]
