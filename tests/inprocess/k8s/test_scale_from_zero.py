"""Scale from zero on the balancer's signal: KEDA's external scaler protocol over real
gRPC, a request buffered at zero replicas, a replica started when the scaler says so,
the request answered."""

from __future__ import annotations

import asyncio

import grpc
from grpc import aio
from support.harness import ANY, eventually, mgmt, url

from corral.balancer.keda import externalscaler_pb2 as pb

MODEL = "gemma-270m"


def stub(channel: aio.Channel, method: str, request: type, response: type, stream=False):
    kind = channel.unary_stream if stream else channel.unary_unary
    return kind(
        f"/externalscaler.ExternalScaler/{method}",
        request_serializer=request.SerializeToString,
        response_deserializer=response.FromString,
    )


def ref(model: str = MODEL, **meta: str) -> pb.ScaledObjectRef:
    return pb.ScaledObjectRef(
        name=f"corral-{model}", namespace="llm", scalerMetadata={"model": model, **meta}
    )


async def test_a_request_at_zero_replicas_wakes_the_model_and_is_answered(harness):
    balancer = await harness.balancer(keda_addr=ANY, scaled_models=(MODEL, "other"))
    async with aio.insecure_channel(f"127.0.0.1:{balancer.keda_port}") as channel:
        is_active = stub(channel, "IsActive", pb.ScaledObjectRef, pb.IsActiveResponse)
        stream = stub(
            channel, "StreamIsActive", pb.ScaledObjectRef, pb.IsActiveResponse, stream=True
        )
        spec = stub(channel, "GetMetricSpec", pb.ScaledObjectRef, pb.GetMetricSpecResponse)
        metrics = stub(channel, "GetMetrics", pb.GetMetricsRequest, pb.GetMetricsResponse)

        # zero replicas, no demand: inactive, and the target is the slots per replica
        assert (await is_active(ref())).result is False
        answer = await spec(ref(slotsPerReplica="4"))
        assert [(s.metricName, s.targetSize) for s in answer.metricSpecs] == [
            (f"corral-demand-{MODEL}", 4)
        ]
        call = stream(ref())
        updates = call.__aiter__()
        assert (await anext(updates)).result is False  # answered at once

        # a request arrives: it waits in the buffer (not 404, not 503)
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
        request = asyncio.create_task(
            harness.http.post(url(balancer, "/v1/chat/completions"), json=body)
        )
        # KEDA is told at once, on the stream
        assert (await asyncio.wait_for(anext(updates), 5)).result is True
        assert (await is_active(ref())).result is True
        got = await metrics(pb.GetMetricsRequest(scaledObjectRef=ref(), metricName="x"))
        assert [(v.metricName, v.metricValue) for v in got.metricValues] == [
            (f"corral-demand-{MODEL}", 1)
        ]
        assert not request.done()
        # the other model has no demand
        assert (await is_active(ref("other"))).result is False

        # "KEDA" scales the model up: a replica (a simulated server and its agent)
        _, port = await harness.sim(model=MODEL, slots=4, tokens_per_second=500.0)
        await harness.agent(port, balancer, name="replica-0")
        response = await asyncio.wait_for(request, 10)
        assert response.status == 200
        assert (await response.json())["choices"][0]["message"]["content"]

        # demand ends: inactive again, on the stream too
        assert (await asyncio.wait_for(anext(updates), 5)).result is False
        assert (await is_active(ref())).result is False
        call.cancel()

        # the same numbers for a Prometheus trigger
        scrape = await (await harness.http.get(mgmt(balancer, "/metrics"))).text()
        assert f'corral_model_demand{{model="{MODEL}"}} 0.0' in scrape
        # and the cold start, from the buffered request to the first ready slot
        assert f'corral_cold_start_seconds_count{{model="{MODEL}"}} 1.0' in scrape


async def test_a_trigger_without_a_model_is_refused(harness):
    balancer = await harness.balancer(keda_addr=ANY)
    async with aio.insecure_channel(f"127.0.0.1:{balancer.keda_port}") as channel:
        is_active = stub(channel, "IsActive", pb.ScaledObjectRef, pb.IsActiveResponse)
        try:
            await is_active(pb.ScaledObjectRef(name="x"))
        except aio.AioRpcError as exc:
            assert exc.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert "must name a model" in (exc.details() or "")
        else:
            raise AssertionError("IsActive without a model answered")


async def test_a_scaled_model_waits_instead_of_going_to_another_model(harness):
    """The kind of fault --scaled-model fixes: with one model registered, a request for
    another one that is scaled to zero must not go to the wrong model."""
    balancer = await harness.balancer(scaled_models=(MODEL,))
    _, port = await harness.sim(model="other", name="other", slots=1)
    await harness.agent(port, balancer, name="other-0")
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 2}
    request = asyncio.create_task(harness.http.post(url(balancer, "/completion"), json=body))
    await eventually(lambda: len(balancer.buffer) == 1, what="the request buffered")
    _, port = await harness.sim(model=MODEL, slots=1)
    await harness.agent(port, balancer, name="gemma-0")
    response = await asyncio.wait_for(request, 10)
    assert response.status == 200
    assert response.headers.get("X-Sim-Server") != "other"
