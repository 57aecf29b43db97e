"""What the runner benchmarks besides the engine in its own process: a server over HTTP (``target=serve``,
rosebench's own, started and stopped by the runner; ``target=http``, any OpenAI-compatible server).

``settings``: the ``target`` config nodes (no torch); ``client``: the streaming client that turns a
workload into timed ``RequestRecord``s; ``launch``: starting and stopping ``python -m rosebench.serve``.
Nothing here imports ``rosebench.serve``: client and server talk only HTTP.
"""
