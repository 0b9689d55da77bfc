"""The minimal intent: what the people who deploy models write, checked field by field.

Theory of operation
-------------------
An intent file (YAML) says which models to serve and how much of each; everything
else has a default. :func:`parse_intent` turns the loaded YAML (plain dicts and lists)
into a frozen :class:`Intent`, or raises one :class:`IntentError` whose message names
the field (``models[1].replicas.max: must be at least replicas.min (2)``). Nothing
here touches Kubernetes or the disk: :mod:`corral.k8s.render` turns an ``Intent`` into
manifests.

Every field, its default and its meaning is in :data:`FIELDS`, which ``corral k8s
render --help`` and docs/kubernetes.md show.

Example::

    models:
      - name: gemma-270m
        source: pvc://models/gemma-3-270m-q4_k_m.gguf
        replicas: {min: 0, max: 8}
        slots: 4
        ctx_size: 8192
        resources: {cpu: "4", memory: 8Gi}
    balancer: {replicas: 2}
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from corral.config import AGENT

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|Pi|M|G|T|P)?$")
SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
SOURCE_SCHEMES = ("pvc://", "pkg:", "https://", "http://", "bundled", "file://")


class IntentError(ValueError):
    """An intent that cannot be rendered; the message names the field and why."""


# ------------------------------------------------------------------ the intent
@dataclass(frozen=True)
class Replicas:
    min: int = 1
    max: int = 1


@dataclass(frozen=True)
class Resources:
    """Requests (and limits for memory and GPUs) of one container."""

    cpu: str = "1"
    memory: str = "2Gi"
    gpu: int = 0


@dataclass(frozen=True)
class Model:
    name: str
    source: str
    replicas: Replicas = Replicas()
    slots: int = AGENT.default("slots")
    ctx_size: int = AGENT.default("ctx_size")
    resources: Resources = Resources()
    sha256: str | None = None
    args: tuple[str, ...] = ()


@dataclass(frozen=True)
class Balancer:
    replicas: int = 2
    resources: Resources = Resources(cpu="500m", memory="512Mi")


@dataclass(frozen=True)
class Cache:
    size: str = "50Gi"
    storage_class: str | None = None
    access_mode: str = "ReadWriteMany"


@dataclass(frozen=True)
class Scaling:
    trigger: str = "external"
    polling_interval: int = 15
    cooldown_period: int = 300
    prometheus_address: str = "http://prometheus.monitoring.svc:9090"


@dataclass(frozen=True)
class Intent:
    models: tuple[Model, ...]
    name: str = "corral"
    namespace: str | None = None
    balancer: Balancer = Balancer()
    cache: Cache = Cache()
    scaling: Scaling = Scaling()


FIELDS: tuple[tuple[str, str, str], ...] = (
    ("name", "corral", "prefix of every object's name, and the app.kubernetes.io/instance label"),
    ("namespace", "(none: kubectl's)", "namespace of every object"),
    ("models[]", "(required, at least one)", "the models to serve, one workload each"),
    ("models[].name", "(required)", "DNS label; the name clients send as `model`"),
    (
        "models[].source",
        "(required)",
        "pvc://CLAIM/PATH (a file on a PersistentVolumeClaim), pkg:PACKAGE (a Python "
        "package in the image), https://URL, or bundled",
    ),
    ("models[].sha256", "(none)", "the file's SHA-256; checked once, when it is cached"),
    ("models[].replicas.min", "1", "fewest replicas; 0 scales to zero when idle"),
    ("models[].replicas.max", "replicas.min", "most replicas"),
    ("models[].slots", str(AGENT.default("slots")), "requests one replica serves at once"),
    ("models[].ctx_size", str(AGENT.default("ctx_size")), "context tokens per slot"),
    ("models[].resources.cpu", "1", "CPU request of the server container"),
    ("models[].resources.memory", "2Gi", "memory request and limit of the server container"),
    ("models[].resources.gpu", "0", "nvidia.com/gpu request and limit"),
    ("models[].args", "[]", "more llama-server arguments"),
    ("balancer.replicas", "2", "balancer pods (each knows every agent)"),
    ("balancer.resources", "cpu 500m, memory 512Mi", "the balancer container's requests"),
    ("cache.size", "50Gi", "size of the shared weight cache volume"),
    ("cache.storage_class", "(the cluster's default)", "storage class of the cache volume"),
    ("cache.access_mode", "ReadWriteMany", "ReadWriteMany (shared) or ReadWriteOnce"),
    ("scaling.trigger", "external", "external (the balancer's KEDA scaler) or prometheus"),
    ("scaling.polling_interval", "15", "seconds between KEDA's polls"),
    ("scaling.cooldown_period", "300", "idle seconds before KEDA scales a model to zero"),
    (
        "scaling.prometheus_address",
        "http://prometheus.monitoring.svc:9090",
        "for trigger prometheus",
    ),
)
"""Every intent field: ``(path, default, meaning)``."""


# ------------------------------------------------------------------ checking
def _fail(where: str, why: str) -> IntentError:
    return IntentError(f"{where}: {why}")


def _mapping(value: Any, where: str, known: tuple[str, ...]) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _fail(where, f"expected a mapping, got {_kind(value)}")
    unknown = [key for key in value if key not in known]
    if unknown:
        raise _fail(
            f"{where}.{unknown[0]}" if where else str(unknown[0]),
            f"unknown field (known: {', '.join(known)})",
        )
    return value


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "text", bool: "true/false"}.get(
        type(value), type(value).__name__
    )


def _int(value: Any, where: str, low: int, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(where, f"expected a whole number, got {value!r}")
    if value < low:
        raise _fail(where, f"must be at least {low}, got {value}")
    return value


def _text(value: Any, where: str, default: str | None = None) -> str | None:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise _fail(where, f"expected text, got {_kind(value)}")
    return str(value)


def _quantity(value: Any, where: str, default: str) -> str:
    text = _text(value, where, default)
    assert text is not None
    if not QUANTITY.match(text):
        raise _fail(where, f"{text!r} is not a Kubernetes quantity (like 500m, 4, 8Gi)")
    return text


def _label(value: Any, where: str) -> str:
    text = _text(value, where)
    if not text:
        raise _fail(where, "required")
    if not DNS_LABEL.match(text) or len(text) > 40:
        raise _fail(
            where,
            f"{text!r} must be lower-case letters, digits and '-', start and end with a "
            "letter or digit, at most 40 characters (it becomes part of object names)",
        )
    return text


def _resources(value: Any, where: str, default: Resources) -> Resources:
    data = _mapping(value, where, ("cpu", "memory", "gpu"))
    return Resources(
        cpu=_quantity(data.get("cpu"), f"{where}.cpu", default.cpu),
        memory=_quantity(data.get("memory"), f"{where}.memory", default.memory),
        gpu=_int(data.get("gpu"), f"{where}.gpu", 0, default.gpu),
    )


def _source(value: Any, where: str) -> str:
    text = _text(value, where)
    if not text:
        raise _fail(where, "required (pvc://CLAIM/PATH, pkg:PACKAGE, https://URL or bundled)")
    if not text.startswith(SOURCE_SCHEMES):
        raise _fail(
            where, f"{text!r}: expected pvc://CLAIM/PATH, pkg:PACKAGE, https://URL or bundled"
        )
    if text.startswith("pvc://"):
        claim, _, path = text[len("pvc://") :].partition("/")
        if not DNS_LABEL.match(claim) or not path or path.endswith("/"):
            raise _fail(where, f"{text!r}: expected pvc://CLAIM/PATH/TO/FILE.gguf")
    return text


def _model(value: Any, where: str) -> Model:
    known = ("name", "source", "replicas", "slots", "ctx_size", "resources", "sha256", "args")
    data = _mapping(value, where, known)
    name = _label(data.get("name"), f"{where}.name")
    replicas = _mapping(data.get("replicas"), f"{where}.replicas", ("min", "max"))
    low = _int(replicas.get("min"), f"{where}.replicas.min", 0, 1)
    high = _int(replicas.get("max"), f"{where}.replicas.max", 1, max(low, 1))
    if high < low:
        raise _fail(f"{where}.replicas.max", f"must be at least replicas.min ({low}), got {high}")
    sha = _text(data.get("sha256"), f"{where}.sha256")
    if sha is not None and not SHA256.match(sha):
        raise _fail(f"{where}.sha256", "expected 64 hexadecimal digits")
    args = data.get("args") or []
    if not isinstance(args, list) or not all(isinstance(a, str | int | float) for a in args):
        raise _fail(f"{where}.args", "expected a list of llama-server arguments")
    return Model(
        name=name,
        source=_source(data.get("source"), f"{where}.source"),
        replicas=Replicas(low, high),
        slots=_int(data.get("slots"), f"{where}.slots", 1, Model.slots),
        ctx_size=_int(data.get("ctx_size"), f"{where}.ctx_size", 1, Model.ctx_size),
        resources=_resources(data.get("resources"), f"{where}.resources", Resources()),
        sha256=sha.lower() if sha else None,
        args=tuple(str(a) for a in args),
    )


def parse_intent(data: Any) -> Intent:
    """An :class:`Intent` from a loaded YAML document.

    Raises:
        IntentError: A field is missing, unknown or wrong; the message names it.
    """
    top = _mapping(
        data, "", ("name", "namespace", "models", "balancer", "cache", "scaling", "values")
    )
    models = top.get("models")
    if not isinstance(models, list) or not models:
        raise _fail("models", "required: a list of at least one model")
    parsed = tuple(_model(m, f"models[{i}]") for i, m in enumerate(models))
    seen: set[str] = set()
    for i, model in enumerate(parsed):
        if model.name in seen:
            raise _fail(f"models[{i}].name", f"{model.name!r} is used twice")
        seen.add(model.name)
    balancer = _mapping(top.get("balancer"), "balancer", ("replicas", "resources"))
    cache = _mapping(top.get("cache"), "cache", ("size", "storage_class", "access_mode"))
    access = _text(cache.get("access_mode"), "cache.access_mode", Cache.access_mode)
    if access not in ("ReadWriteMany", "ReadWriteOnce"):
        raise _fail("cache.access_mode", f"{access!r}: expected ReadWriteMany or ReadWriteOnce")
    scaling = _mapping(
        top.get("scaling"),
        "scaling",
        ("trigger", "polling_interval", "cooldown_period", "prometheus_address"),
    )
    trigger = _text(scaling.get("trigger"), "scaling.trigger", Scaling.trigger)
    if trigger not in ("external", "prometheus"):
        raise _fail("scaling.trigger", f"{trigger!r}: expected external or prometheus")
    namespace = _text(top.get("namespace"), "namespace")
    return Intent(
        models=parsed,
        name=_label(top.get("name") or Intent.name, "name"),
        namespace=_label(namespace, "namespace") if namespace is not None else None,
        balancer=Balancer(
            replicas=_int(balancer.get("replicas"), "balancer.replicas", 1, Balancer.replicas),
            resources=_resources(
                balancer.get("resources"), "balancer.resources", Balancer().resources
            ),
        ),
        cache=Cache(
            size=_quantity(cache.get("size"), "cache.size", Cache.size),
            storage_class=_text(cache.get("storage_class"), "cache.storage_class"),
            access_mode=str(access),
        ),
        scaling=Scaling(
            trigger=str(trigger),
            polling_interval=_int(
                scaling.get("polling_interval"), "scaling.polling_interval", 1, 15
            ),
            cooldown_period=_int(scaling.get("cooldown_period"), "scaling.cooldown_period", 0, 300),
            prometheus_address=str(
                _text(scaling.get("prometheus_address"), "scaling.prometheus_address")
                or Scaling.prometheus_address
            ),
        ),
    )


# ------------------------------------------------------------------ values
@dataclass(frozen=True)
class Values:
    """What the intent does not cover, as a chart's ``values.yaml`` would: applied to
    every pod (``models.<name>`` entries to that model's pods only)."""

    image: str = "corral:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    service_type: str = "ClusterIP"
    models: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


VALUE_KEYS = (
    "image",
    "imagePullPolicy",
    "nodeSelector",
    "tolerations",
    "labels",
    "annotations",
    "serviceType",
    "models",
)


def _str_map(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str | int | float) for k, v in value.items()
    ):
        raise _fail(where, "expected a mapping of names to text")
    return {k: str(v) for k, v in value.items()}


def _tolerations(value: Any, where: str) -> tuple[Mapping[str, Any], ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(t, Mapping) for t in value):
        raise _fail(where, "expected a list of tolerations (mappings)")
    return tuple(value)


def parse_values(data: Any, intent: Intent | None = None) -> Values:
    """:class:`Values` from a loaded YAML document (``None``: all defaults).

    Raises:
        IntentError: A key is unknown or has the wrong shape; the message names it.
    """
    top = _mapping(data, "values", VALUE_KEYS)
    per_model = _mapping(
        top.get("models"),
        "values.models",
        tuple(m.name for m in intent.models) if intent else tuple(top.get("models") or ()),
    )
    models: dict[str, dict[str, Any]] = {}
    for name, entry in per_model.items():
        where = f"values.models.{name}"
        data_ = _mapping(entry, where, ("nodeSelector", "tolerations"))
        models[name] = {
            "nodeSelector": _str_map(data_.get("nodeSelector"), f"{where}.nodeSelector"),
            "tolerations": _tolerations(data_.get("tolerations"), f"{where}.tolerations"),
        }
    policy = _text(top.get("imagePullPolicy"), "values.imagePullPolicy", Values.image_pull_policy)
    if policy not in ("Always", "IfNotPresent", "Never"):
        raise _fail("values.imagePullPolicy", f"{policy!r}: expected Always, IfNotPresent or Never")
    service = _text(top.get("serviceType"), "values.serviceType", Values.service_type)
    if service not in ("ClusterIP", "NodePort", "LoadBalancer"):
        raise _fail(
            "values.serviceType", f"{service!r}: expected ClusterIP, NodePort or LoadBalancer"
        )
    return Values(
        image=str(_text(top.get("image"), "values.image", Values.image)),
        image_pull_policy=str(policy),
        node_selector=_str_map(top.get("nodeSelector"), "values.nodeSelector"),
        tolerations=_tolerations(top.get("tolerations"), "values.tolerations"),
        labels=_str_map(top.get("labels"), "values.labels"),
        annotations=_str_map(top.get("annotations"), "values.annotations"),
        service_type=str(service),
        models=models,
    )


__all__ = [
    "FIELDS",
    "Balancer",
    "Cache",
    "Intent",
    "IntentError",
    "Model",
    "Replicas",
    "Resources",
    "Scaling",
    "Values",
    "parse_intent",
    "parse_values",
]
