"""llama.cpp's Prometheus metrics combined over servers, per metric."""

from corral.balancer.llamacpp_metrics import combine, parse


def server(tokens: int, processing: int, per_decode: float, n_max: int) -> str:
    return f"""# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total {tokens}
# HELP llamacpp:n_tokens_max Largest observed sequence length (prompt + generation)
# TYPE llamacpp:n_tokens_max counter
llamacpp:n_tokens_max {n_max}
# HELP llamacpp:requests_processing Number of requests processing
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing {processing}
# HELP llamacpp:n_busy_slots_per_decode Average number of busy slots per llama_decode() call
# TYPE llamacpp:n_busy_slots_per_decode gauge
llamacpp:n_busy_slots_per_decode {per_decode}
"""


def test_counters_and_gauges_sum_averages_average_maxima_max():
    families = parse(server(10, 1, 1.0, 30))
    parse(server(5, 2, 2.0, 70), families)
    text = combine(families)
    assert "llamacpp:prompt_tokens_total 15\n" in text
    assert "llamacpp:requests_processing 3\n" in text
    assert "llamacpp:n_busy_slots_per_decode 1.5\n" in text
    assert "llamacpp:n_tokens_max 70\n" in text
    assert "# TYPE llamacpp:prompt_tokens_total counter\n" in text
    assert text.index("prompt_tokens_total") < text.index("n_tokens_max")  # order kept


def test_one_server_comes_out_as_it_went_in():
    text = server(10, 1, 0.5, 30)
    assert combine(parse(text)) == text


def test_labels_timestamps_and_junk():
    families = parse('x{a="1 2"} 3 1700000000\nx{a="1 2"} 4\nnot a sample\ny 2\n')
    assert families["x"].samples == {'x{a="1 2"}': [3.0, 4.0]}
    assert combine(families) == 'x{a="1 2"} 7\ny 2\n'
