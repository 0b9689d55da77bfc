"""KEDA's external scaler protocol, served by the balancer (``--keda-addr``); see
:mod:`corral.balancer.keda.scaler`. Needs the ``k8s`` extra (grpcio, protobuf)."""

from corral.balancer.keda.scaler import ExternalScaler, ScalerServer, metric_name

__all__ = ["ExternalScaler", "ScalerServer", "metric_name"]
