"""`tinygpt serve`: an OpenAI-compatible HTTP server for a trained run, with a playground.

engine.py (the queue, and one batched decoding step for every request), protocol.py (the
wire format), app.py (routes and guards), playground.html (one self-contained page). Needs
the `serve` extra: `pip install -e '.[serve]'`.
"""
