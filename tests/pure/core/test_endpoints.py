from corral.core.endpoints import Kind, classify


def test_generation_and_embeddings_take_slots():
    for path in (
        "/completion",
        "/v1/chat/completions",
        "/v1/responses",
        "/v1/messages",
        "/infill",
        "/embedding",
        "/v1/embeddings",
        "/reranking",
    ):
        assert classify("POST", path) is Kind.INFERENCE, path


def test_light_fleet_and_blocked_routes():
    assert classify("POST", "/tokenize") is Kind.LIGHT
    assert classify("POST", "/apply-template") is Kind.LIGHT
    assert classify("GET", "/v1/models") is Kind.FLEET
    assert classify("GET", "/slots") is Kind.FLEET
    assert classify("GET", "/metrics") is Kind.FLEET
    assert classify("POST", "/slots/0") is Kind.SLOT_ACTION
    assert classify("GET", "/slots/0") is None
    assert classify("POST", "/props") is Kind.BLOCKED
    assert classify("GET", "/nope") is None
    assert classify("GET", "/completion") is None


def test_routes_belong_to_an_api_family():
    from corral.core.endpoints import api_of

    assert api_of("/v1/chat/completions") == "openai"
    assert api_of("/v1/embeddings") == "openai"
    assert api_of("/completion") == "llamacpp"  # llama-server's own
    assert api_of("/chat/completions") == "llamacpp"  # llama-server's alias
    assert api_of("/tokenize") == "llamacpp"
    assert api_of("/api/chat") == "ollama"
    assert classify("POST", "/api/chat") is Kind.INFERENCE
    assert classify("POST", "/api/generate") is Kind.INFERENCE
    assert classify("GET", "/api/tags") is Kind.LIGHT
