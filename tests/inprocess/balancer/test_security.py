"""Security on real sockets: TLS on both listeners and for agents (wss://, verified),
tokens on every management route and on registration, CORS on the inference
listener, and secrets kept out of logs and printed configurations."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import aiohttp
import pytest
from support.harness import Harness, eventually, mgmt, url
from support.tls import Certs, make_certs

from corral.balancer import Balancer, BalancerConfig
from corral.balancer.cors import CorsError
from corral.cli import main

CHAT = "/v1/chat/completions"
BODY = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
PUBLIC = {"/health", "/", "/dashboard"}
"""Management routes anyone may read: liveness and the (data-less) dashboard page."""


@pytest.fixture(name="certs")
def certs_fixture(tmp_path: Path) -> Certs:
    return make_certs(tmp_path)


def https(balancer: Balancer, path: str, *, management: bool = False) -> str:
    port = balancer.management_port if management else balancer.inference_port
    return f"https://127.0.0.1:{port}{path}"


async def test_both_listeners_speak_tls_and_agents_verify_it(harness: Harness, certs: Certs):
    balancer = await harness.balancer(tls_cert=certs.cert, tls_key=certs.key)
    _, port = await harness.sim(name="s")
    await harness.agent(port, balancer, name="s", tls_ca=certs.ca)  # wss://, verified
    trusting = ssl.create_default_context(cafile=certs.ca)
    async with harness.http.post(https(balancer, CHAT), json=BODY, ssl=trusting) as r:
        assert r.status == 200
        assert (await r.json())["choices"]
    info = https(balancer, "/api/v1/info", management=True)
    async with harness.http.get(info, ssl=trusting) as r:
        assert (await r.json())["inference_url"] == f"https://127.0.0.1:{balancer.inference_port}"
    # plain HTTP gets no answer from a TLS listener
    with pytest.raises(aiohttp.ClientError):
        async with harness.http.get(url(balancer, "/health")) as r:
            await r.read()
    # a client that does not trust the CA refuses the certificate
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        async with harness.http.get(https(balancer, "/health")) as r:
            await r.read()


async def test_an_agent_refuses_a_balancer_it_cannot_verify(harness: Harness, certs: Certs):
    balancer = await harness.balancer(tls_cert=certs.cert, tls_key=certs.key)
    _, port = await harness.sim(name="s")
    agent = await harness.agent(port, balancer, name="s", tls=True, wait_ready=False)
    link = f"https://127.0.0.1:{balancer.management_port}/api/v1/agent-socket"
    reason = await eventually(lambda: agent.links.get(link), what="a failed link")
    assert "certificate verify failed" in reason
    assert len(balancer.fleet) == 0
    # nor does one that speaks plain ws:// register with a TLS balancer
    plain = await harness.agent(port, balancer, name="plain", wait_ready=False)
    plain_link = f"http://127.0.0.1:{balancer.management_port}/api/v1/agent-socket"
    await eventually(lambda: plain.links.get(plain_link), what="a failed plain link")
    assert len(balancer.fleet) == 0


async def test_an_agent_sent_to_the_inference_listener_is_told_where_to_go(harness: Harness):
    """It said only "handshake failed: 404 Invalid response status"."""
    from corral.addr import Addr

    balancer = await harness.balancer()
    _, port = await harness.sim(name="s")
    wrong = (Addr("127.0.0.1", balancer.inference_port),)
    agent = await harness.agent(port, balancer, name="s", wait_ready=False, management_addrs=wrong)
    link = f"http://127.0.0.1:{balancer.inference_port}/api/v1/agent-socket"
    reason = await eventually(lambda: agent.links.get(link), what="a failed link")
    assert reason.startswith("handshake failed: 404")
    assert "is it the balancer's management address (--management-addr" in reason


def test_unusable_tls_files_are_clear_errors(tmp_path: Path, certs: Certs, capsys):
    from corral.tls import TLSError

    missing = tmp_path / "missing.pem"
    with pytest.raises(TLSError, match=f"no such certificate file: {missing}"):
        Balancer(BalancerConfig(tls_cert=missing))  # the name, not None (ssl's error has none)
    with pytest.raises(TLSError, match=f"no such key file: {missing}"):
        Balancer(BalancerConfig(tls_cert=certs.cert, tls_key=missing))
    with pytest.raises(TLSError, match="cannot use certificate"):
        Balancer(BalancerConfig(tls_cert=certs.ca, tls_key=certs.key))  # key does not match
    junk = tmp_path / "junk.pem"
    junk.write_text("junk")
    with pytest.raises(TLSError, match=f"certificate {junk} with its key in the same file"):
        Balancer(BalancerConfig(tls_cert=junk))
    with pytest.raises(SystemExit, match="--tls-key needs --tls-cert"):
        main(["balancer", "--tls-key", str(certs.key)])


async def test_every_management_route_needs_the_token(harness: Harness):
    balancer = await harness.balancer(management_token="admin")
    app = balancer.management_app()
    routes = {
        (route.method, info["path"])
        for route in app.router.routes()
        if "path" in (info := route.resource.get_info()) and route.method != "HEAD"  # type: ignore[union-attr]
    }
    guarded = {(method, path) for method, path in routes if path not in PUBLIC}
    guarded.discard(("GET", "/api/v1/agent-socket"))  # the agent token's (below)
    assert ("PUT", "/api/v1/desired-state") in guarded
    wrong = [{}, {"Authorization": "Bearer nope"}, {"Authorization": "Bearer admin2"},
             {"Authorization": "Basic admin"}, {"Authorization": "Bearer \u00e9"}]  # fmt: skip
    for method, path in sorted(guarded):
        for headers in wrong:
            body = b'{"model": "m.gguf"}'
            async with harness.http.request(
                method, mgmt(balancer, path), headers=headers, data=body
            ) as r:
                assert r.status == 401, (method, path, headers)
    assert balancer.rollout.status()["generation"] == 0  # nothing changed
    ok = {"Authorization": "Bearer admin"}
    async with harness.http.get(mgmt(balancer, "/api/v1/agents"), headers=ok) as r:
        assert r.status == 200


async def test_no_registration_without_the_agent_token(harness: Harness):
    balancer = await harness.balancer(agent_token="sesame")
    socket = mgmt(balancer, "/api/v1/agent-socket")
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Bearer \u00e9"}):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await harness.http.ws_connect(socket, headers=headers)
        assert refused.value.status == 401
    assert len(balancer.fleet) == 0


async def test_the_inference_listener_never_allows_credentials_for_every_origin(
    harness: Harness,
):
    balancer = await harness.balancer()  # the default: any origin, no credentials
    preflight = {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
    async with harness.http.options(url(balancer, CHAT), headers=preflight) as r:
        assert r.headers["Access-Control-Allow-Origin"] == "*"
        assert r.headers["Access-Control-Allow-Credentials"] == "false"
    with pytest.raises(CorsError):
        await harness.balancer(cors_credentials=True)  # with '*': refused
    listed = await harness.balancer(cors_origins="http://app.test", cors_credentials=True)
    async with harness.http.options(url(listed, CHAT), headers=preflight) as r:
        assert "Access-Control-Allow-Origin" not in r.headers
    good = {**preflight, "Origin": "http://app.test"}
    async with harness.http.options(url(listed, CHAT), headers=good) as r:
        assert r.headers["Access-Control-Allow-Origin"] == "http://app.test"
        assert r.headers["Access-Control-Allow-Credentials"] == "true"


SECRETS = ("agent-SECRET-1", "mgmt-SECRET-2", "api-SECRET-3", "backend-SECRET-4")


async def test_secrets_never_reach_the_logs(harness: Harness, caplog):
    caplog.set_level(logging.DEBUG)
    agent_token, management_token, api_key, backend_key = SECRETS
    balancer = await harness.balancer(
        agent_token=agent_token, management_token=management_token, api_keys=(api_key,)
    )
    _, port = await harness.sim(name="s", api_key=backend_key)
    await harness.agent(
        port, balancer, name="s", agent_token=agent_token, llamacpp_api_key=backend_key
    )
    # wrong secrets, near misses of the right ones, and right ones
    await harness.agent(port, balancer, name="w", agent_token=agent_token + "x", wait_ready=False)
    for key in (api_key, api_key + "x"):
        headers = {"Authorization": f"Bearer {key}"}
        async with harness.http.post(url(balancer, CHAT), json=BODY, headers=headers) as r:
            await r.read()
    for token in (management_token, management_token + "x"):
        headers = {"Authorization": f"Bearer {token}"}
        async with harness.http.get(mgmt(balancer, "/api/v1/agents"), headers=headers) as r:
            assert backend_key not in await r.text()  # the fleet's JSON never has keys
    logging.getLogger("test").info("config %r balancer %r", balancer.config, balancer)
    await eventually(lambda: "refused" in caplog.text, what="the refused agent logged")
    for secret in SECRETS:
        assert secret not in caplog.text


def test_secrets_never_reach_printed_configurations(capsys, monkeypatch):
    agent_token, management_token, api_key, backend_key = SECRETS
    monkeypatch.setenv("CORRAL_API_KEY", api_key)
    argv = ["--agent-token", agent_token, "--management-token", management_token]
    assert main(["balancer", *argv, "--print-config"]) == 0
    assert main(["agent", "--agent-token", agent_token, "--llamacpp-api-key", backend_key,
                 "--print-config"]) == 0  # fmt: skip
    out = capsys.readouterr()
    for secret in SECRETS:
        assert secret not in out.out + out.err
    assert "agent_token" in out.out  # named (set), not shown


def test_the_forwarded_proto_says_https_over_tls():
    from corral.balancer.forwarded import forwarded_lines

    lines = forwarded_lines({}, "10.0.0.1", b"api.test", False, "https")
    assert b"X-Forwarded-Proto: https\r\n" in lines
    assert b"proto=https" in lines
