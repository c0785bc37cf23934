"""The KServe v2 (Open Inference Protocol) REST server over a weightdb database.

``app`` holds the routes, ``protocol`` the tensor codec, ``binary_data`` the framing of the
binary tensor data extension, ``statistics`` the counters of the statistics extension,
``batching`` the request queue and dynamic batcher, ``scheduler`` the order in which a round's
models run so shared pages are read once, ``metrics`` the Prometheus exposition, ``limits``
body size, body deadline and bearer token checks, and ``connections`` the per-connection guards
(head deadline and size, connection cap). The ``weightdb serve`` command is
``weightdb.cli.serve``.
"""
