"""The ticker: a cheap paced streaming backend that poses as llama-server, and a load
generator for it. The relay part of the overhead section (:mod:`comparison.relay`)
measures what a proxy costs per token with them.

- :mod:`~comparison.ticker.framing`: the bytes of a stream (OpenAI
  ``chat.completion.chunk`` events as server-sent events, each in its own HTTP chunk)
  and a counter of token events; pure;
- :mod:`~comparison.ticker.backend`: the paced server: one loop-wide timer writes the
  next token to every open stream at each tick;
- :mod:`~comparison.ticker.drive`: the driving client: keeps streams open against a
  URL and counts the token events that arrive;
- ``python -m comparison.ticker`` (:mod:`~comparison.ticker.__main__`): either of the
  two as a program.
"""
