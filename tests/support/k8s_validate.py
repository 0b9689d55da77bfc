"""Validating rendered manifests without a cluster: Kubernetes' own schemas in strict
mode (kubernetes-validate) and KEDA's ScaledObject CRD schema kept in the repo."""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

KUBERNETES_VERSION = "1.30.0"
"""The oldest Kubernetes version whose schemas the manifests must pass (policy/v1 and
autoscaling/v2 are GA long before it)."""


@cache
def scaledobject_schema() -> dict[str, Any]:
    text = resources.files("corral.k8s").joinpath("schemas/keda.sh_scaledobjects.yaml")
    crd = yaml.safe_load(text.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def _strict(schema: Any) -> Any:
    """The CRD schema with unknown fields refused, as the API server prunes them."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if (
            out.get("type") == "object"
            and "properties" in out
            and "additionalProperties" not in out
        ) and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def validate(obj: dict[str, Any]) -> None:
    """Raise if ``obj`` is not a valid object of its kind (strict: no unknown fields)."""
    if obj["apiVersion"] == "keda.sh/v1alpha1":
        schema = _strict(scaledobject_schema())
        meta = {k: v for k, v in obj.items() if k != "metadata"}
        jsonschema.validate(meta, schema)
        return
    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
