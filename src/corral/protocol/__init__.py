"""The versioned agent <-> balancer protocol. See :mod:`corral.protocol.messages`."""

from corral.protocol.messages import (
    PROTOCOL_VERSION,
    AgentMessage,
    BalancerMessage,
    Deregister,
    Error,
    Heartbeat,
    IssueInfo,
    ProtocolError,
    Refresh,
    Register,
    Registered,
    ServerStatus,
    Status,
    decode_agent_message,
    decode_balancer_message,
    encode,
)

__all__ = [
    "PROTOCOL_VERSION",
    "AgentMessage",
    "BalancerMessage",
    "Deregister",
    "Error",
    "Heartbeat",
    "IssueInfo",
    "ProtocolError",
    "Refresh",
    "Register",
    "Registered",
    "ServerStatus",
    "Status",
    "decode_agent_message",
    "decode_balancer_message",
    "encode",
]
