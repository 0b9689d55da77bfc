"""KEDA's external scaler, served by the balancer over gRPC (``--keda-addr``).

KEDA asks, per ScaledObject, with the trigger's metadata (``model``, and optionally
``slotsPerReplica``):

- ``IsActive`` / ``StreamIsActive``: whether the model has any demand (buffered plus
  in-flight requests; :mod:`corral.core.demand`). The stream answers at once and
  again on every change of the fleet or the buffer, so KEDA wakes a model scaled to
  zero the moment its first request is buffered, without polling delay.
- ``GetMetricSpec``: the target per replica: ``slotsPerReplica`` (from the intent),
  else the slots of a ready server of that model, else 1.
- ``GetMetrics``: the demand now. The HPA wants ``ceil(demand / target)`` replicas.

``StreamMetricSpec`` is left unimplemented: KEDA then keeps asking ``GetMetricSpec``.
The protocol's messages are generated from KEDA's ``externalscaler.proto`` (see
this package's README.md); needs the ``k8s`` extra (grpcio, protobuf).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc import aio

from corral.addr import Addr
from corral.balancer.dispatcher import Dispatcher
from corral.balancer.keda import externalscaler_pb2 as pb
from corral.core.demand import Demand, model_demand

log = logging.getLogger("corral.balancer")

SERVICE = "externalscaler.ExternalScaler"
STREAM_REFRESH = 5.0
"""Seconds between answers on a quiet ``StreamIsActive`` (keeps the stream alive)."""


def metric_name(model: str) -> str:
    return f"corral-demand-{model}"


class ExternalScaler:
    """The scaler's answers, from the dispatcher's fleet and buffer."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher

    def demand(self, model: str) -> Demand:
        scheduler = self.dispatcher.scheduler
        return model_demand(scheduler.fleet, scheduler.buffer, model)

    def target(self, ref: Any) -> int:
        text = ref.scalerMetadata.get("slotsPerReplica", "")
        if text.isdigit() and int(text) > 0:
            return int(text)
        for backend in self.dispatcher.fleet:
            if backend.model == _model(ref) and backend.slots_total:
                return backend.slots_total
        return 1

    async def is_active(self, ref: Any, context: aio.ServicerContext) -> Any:
        model = await _model_or_abort(ref, context)
        return pb.IsActiveResponse(result=self.demand(model).total > 0)

    async def stream_is_active(self, ref: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
        model = await _model_or_abort(ref, context)
        last: bool | None = None
        quiet = False
        while True:
            active = self.demand(model).total > 0
            if active != last or quiet:
                last = active
                yield pb.IsActiveResponse(result=active)
            try:
                async with asyncio.timeout(STREAM_REFRESH):  # not wait_for (3.11)
                    await self.dispatcher.wait_changed()
                quiet = False
            except TimeoutError:
                quiet = True  # answer again: a quiet stream is still alive

    async def get_metric_spec(self, ref: Any, context: aio.ServicerContext) -> Any:
        model = await _model_or_abort(ref, context)
        target = self.target(ref)
        spec = pb.MetricSpec(
            metricName=metric_name(model), targetSize=target, targetSizeFloat=float(target)
        )
        return pb.GetMetricSpecResponse(metricSpecs=[spec])

    async def get_metrics(self, request: Any, context: aio.ServicerContext) -> Any:
        model = await _model_or_abort(request.scaledObjectRef, context)
        total = self.demand(model).total
        value = pb.MetricValue(
            metricName=metric_name(model), metricValue=total, metricValueFloat=float(total)
        )
        return pb.GetMetricsResponse(metricValues=[value])

    def handler(self) -> grpc.GenericRpcHandler:
        ref = pb.ScaledObjectRef.FromString
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "IsActive": grpc.unary_unary_rpc_method_handler(
                    self.is_active, ref, pb.IsActiveResponse.SerializeToString
                ),
                "StreamIsActive": grpc.unary_stream_rpc_method_handler(
                    self.stream_is_active, ref, pb.IsActiveResponse.SerializeToString
                ),
                "GetMetricSpec": grpc.unary_unary_rpc_method_handler(
                    self.get_metric_spec, ref, pb.GetMetricSpecResponse.SerializeToString
                ),
                "GetMetrics": grpc.unary_unary_rpc_method_handler(
                    self.get_metrics,
                    pb.GetMetricsRequest.FromString,
                    pb.GetMetricsResponse.SerializeToString,
                ),
            },
        )


def _model(ref: Any) -> str:
    return str(ref.scalerMetadata.get("model", "")).strip()


async def _model_or_abort(ref: Any, context: aio.ServicerContext) -> str:
    model = _model(ref)
    if not model:
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            "Corral: the trigger's metadata must name a model (model: <name>)",
        )
    return model


class ScalerServer:
    """The gRPC listener. ``await start()`` (returns the bound port), ``await stop()``."""

    def __init__(self, dispatcher: Dispatcher, addr: Addr) -> None:
        self.scaler = ExternalScaler(dispatcher)
        self.addr = addr
        self._server: aio.Server | None = None
        self.port = 0

    async def start(self) -> int:
        server = aio.server()
        server.add_generic_rpc_handlers((self.scaler.handler(),))
        host = f"[{self.addr.host}]" if ":" in self.addr.host else self.addr.host
        self.port = server.add_insecure_port(f"{host}:{self.addr.port}")
        if not self.port:
            raise OSError(f"cannot listen on {self.addr} for KEDA's scaler")
        await server.start()
        self._server = server
        log.info("KEDA external scaler on %s:%d (gRPC)", self.addr.host, self.port)
        return self.port

    async def stop(self, grace: float = 1.0) -> None:
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None


__all__ = ["ExternalScaler", "ScalerServer", "metric_name"]
