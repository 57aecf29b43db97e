"""``python -m rosebench.serve``: the engine behind an OpenAI-compatible HTTP API (as vLLM serves it).

A leaf beside the runner: it uses the engine and the scheduler exactly as the runner does, and nothing
below it imports it.
"""
