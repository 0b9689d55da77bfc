"""``corral k8s render``: intents to manifests that pass Kubernetes' and KEDA's
schemas, and derive every setting from the configuration schema."""

from __future__ import annotations

import argparse
from typing import Any

import pytest
import yaml
from support.k8s_validate import validate

from corral.config import AGENT, BALANCER
from corral.k8s.intent import parse_intent, parse_values
from corral.k8s.render import dump, render

ONE = {
    "models": [
        {
            "name": "gemma-270m",
            "source": "pvc://models/gemma-3-270m-q4_k_m.gguf",
            "replicas": {"min": 0, "max": 8},
            "slots": 4,
            "ctx_size": 8192,
            "resources": {"cpu": "4", "memory": "8Gi"},
        }
    ],
    "balancer": {"replicas": 2},
}
THREE = {
    "name": "fleet",
    "namespace": "llm",
    "models": [
        {"name": "small", "source": "bundled"},
        {"name": "medium", "source": "pkg:some-model", "replicas": {"min": 1, "max": 3}},
        {
            "name": "large",
            "source": "https://example.com/large.gguf",
            "sha256": "ab" * 32,
            "replicas": {"min": 2, "max": 2},
        },
    ],
}
GPU = {
    "models": [
        {
            "name": "big",
            "source": "pvc://weights/big.gguf",
            "replicas": {"min": 1, "max": 4},
            "resources": {"cpu": "8", "memory": "32Gi", "gpu": 1},
            "args": ["--n-gpu-layers", "999"],
        }
    ],
    "scaling": {"trigger": "prometheus"},
    "values": {
        "image": "registry.example/corral:1",
        "nodeSelector": {"pool": "cpu"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "models": {"big": {"nodeSelector": {"gpu": "h100"}}},
        "labels": {"team": "ml"},
    },
}
ZERO = {"models": [{"name": "m", "source": "bundled", "replicas": {"min": 0, "max": 1}}]}


def rendered(data: dict[str, Any]) -> list[dict[str, Any]]:
    intent = parse_intent(data)
    return render(intent, parse_values(data.get("values"), intent))


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container["env"]}


@pytest.mark.parametrize("data", [ONE, THREE, GPU, ZERO], ids=["one", "three", "gpu", "zero"])
def test_every_rendered_object_passes_its_schema(data):
    objects = rendered(data)
    for obj in objects:
        validate(obj)
    # and survives the trip through YAML unchanged
    assert list(yaml.safe_load_all(dump(objects))) == objects


def test_validation_can_fail():
    (deployment,) = by_kind(rendered(ZERO), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(Exception, match="imagePullPolcy"):
        validate(deployment)
    (scaled,) = by_kind(rendered(ZERO), "ScaledObject")
    scaled["spec"]["minReplicas"] = 0
    with pytest.raises(Exception, match="minReplicas"):
        validate(scaled)


def test_one_model_gives_balancer_model_cache_and_scaler():
    objects = rendered(ONE)
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == sorted(
        ["PersistentVolumeClaim", "StatefulSet", "Service", "Service", "PodDisruptionBudget",
         "Deployment", "ScaledObject"]
    )  # fmt: skip
    (balancer,) = by_kind(objects, "StatefulSet")
    assert balancer["spec"]["replicas"] == 2
    (scaled,) = by_kind(objects, "ScaledObject")
    assert scaled["spec"]["minReplicaCount"] == 0 and scaled["spec"]["maxReplicaCount"] == 8
    triggers = scaled["spec"]["triggers"]
    assert [t["metadata"]["scalerAddress"] for t in triggers] == [
        "corral-balancer-0.corral-balancer-pods:9095",
        "corral-balancer-1.corral-balancer-pods:9095",
    ]
    assert {t["type"] for t in triggers} == {"external-push"}
    assert triggers[0]["metadata"]["slotsPerReplica"] == "4"


def test_every_env_name_is_a_setting_and_every_value_parses():
    """Manifests and the CLI cannot disagree: each variable is a declared setting's,
    and its value passes that setting's parser."""
    known = {s.env: s for s in (*BALANCER, *AGENT)}
    for data in (ONE, THREE, GPU):
        for obj in rendered(data):
            if obj["kind"] not in ("Deployment", "StatefulSet"):
                continue
            for container in obj["spec"]["template"]["spec"]["containers"]:
                for name, value in env_of(container).items():
                    if not name.startswith("CORRAL_"):
                        continue
                    assert name in known, name
                    if value is not None and "$(" not in value:
                        known[name].parse_text(value)


def test_agent_runs_the_model_from_the_cache_with_probes_and_drain():
    (deployment,) = by_kind(rendered(ONE), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (agent,) = pod["containers"]
    env = env_of(agent)
    assert env["CORRAL_MODEL"] == "/cache/models/gemma-270m.gguf"
    assert env["CORRAL_MODEL_ALIAS"] == "gemma-270m"
    assert env["CORRAL_SLOTS"] == "4" and env["CORRAL_CTX_SIZE"] == "8192"
    assert env["CORRAL_THREADS"] == "4"
    assert env["CORRAL_PROBE_ADDR"] == "0.0.0.0:8070"
    assert env["CORRAL_MANAGEMENT_ADDR"] == (
        "corral-balancer-0.corral-balancer-pods:8060,corral-balancer-1.corral-balancer-pods:8060"
    )
    assert agent["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "probes"}
    assert agent["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "probes"}
    assert agent["lifecycle"]["preStop"]["exec"]["command"][:3] == ["corral", "k8s", "drain"]
    assert pod["terminationGracePeriodSeconds"] > 120
    (fetch,) = pod["initContainers"]
    assert fetch["args"] == [
        "k8s", "fetch", "/source/gemma-3-270m-q4_k_m.gguf", "/cache/models/gemma-270m.gguf"
    ]  # fmt: skip
    assert "replicas" not in deployment["spec"]  # KEDA's HPA owns the count


def test_no_privileged_container_and_requests_everywhere():
    for data in (ONE, THREE, GPU, ZERO):
        for obj in rendered(data):
            if obj["kind"] not in ("Deployment", "StatefulSet"):
                continue
            pod = obj["spec"]["template"]["spec"]
            for c in pod["containers"] + pod.get("initContainers", []):
                assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
                sc = c["securityContext"]
                assert sc["allowPrivilegeEscalation"] is False and not sc.get("privileged")
                assert sc["capabilities"] == {"drop": ["ALL"]}


def test_gpu_values_and_prometheus_trigger():
    objects = rendered(GPU)
    (deployment,) = by_kind(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    resources = pod["containers"][0]["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == 1 == resources["limits"]["nvidia.com/gpu"]
    assert pod["nodeSelector"] == {"pool": "cpu", "gpu": "h100"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert pod["containers"][0]["image"] == "registry.example/corral:1"
    assert pod["containers"][0]["args"] == ["agent", "--", "--n-gpu-layers", "999"]
    assert deployment["metadata"]["labels"]["team"] == "ml"
    (scaled,) = by_kind(objects, "ScaledObject")
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert trigger["metadata"]["query"] == 'max(corral_model_demand{model="big"})'
    (balancer,) = by_kind(objects, "StatefulSet")
    assert "CORRAL_KEDA_ADDR" not in env_of(balancer["spec"]["template"]["spec"]["containers"][0])


def test_three_models_fixed_sizes_and_namespace():
    objects = rendered(THREE)
    assert {o["metadata"]["namespace"] for o in objects} == {"llm"}
    deployments = {o["metadata"]["name"]: o for o in by_kind(objects, "Deployment")}
    assert set(deployments) == {"fleet-small", "fleet-medium", "fleet-large"}
    assert deployments["fleet-small"]["spec"]["replicas"] == 1  # default min = max = 1
    assert deployments["fleet-large"]["spec"]["replicas"] == 2
    assert [o["metadata"]["name"] for o in by_kind(objects, "ScaledObject")] == ["fleet-medium"]
    fetch = deployments["fleet-large"]["spec"]["template"]["spec"]["initContainers"][0]
    assert fetch["args"][-2:] == ["--sha256", "ab" * 32]
    (balancer,) = by_kind(objects, "StatefulSet")
    env = env_of(balancer["spec"]["template"]["spec"]["containers"][0])
    assert env["CORRAL_SCALED_MODEL"] == "small,medium,large"
    agent_env = env_of(deployments["fleet-small"]["spec"]["template"]["spec"]["containers"][0])
    assert agent_env["CORRAL_MANAGEMENT_ADDR"].startswith(
        "fleet-balancer-0.fleet-balancer-pods.llm.svc:"
    )


def test_a_value_the_cli_would_refuse_is_refused_at_render_time():
    from corral.k8s.render import env

    with pytest.raises(argparse.ArgumentTypeError):
        env(AGENT, {"probe_addr": "nowhere"})
    with pytest.raises(KeyError):
        env(AGENT, {"no_such_setting": 1})
