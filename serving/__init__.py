"""The HTTP service and what it needs at run time: ONNX Runtime + Pillow + BentoML + the index. Never torch.

service        the public embedding service (thin endpoints)   index_service  the one index owner it depends on
following      a worker's side of the version protocol          served         the index service's state and writes
runtime        a worker's encoder + micro-batcher               holdings       one version's index + classifiers
batching       the micro-batcher                                decode_memory  a worker's decode-memory budget
upload_guard, edge_routes, access, http_helpers, multipart, limits, deadline, errors: the HTTP edge
web, items     GET routes: /info, /ui, thumbnails               metrics, openapi: /metrics, the API page
release        which version is served (release.json)           store          bundles in the BentoML model store
paths          where state lives under $BYOL_HOME
contract/      the torch-free contract training shares: image decoding, bundle format + runner, data readers, splits
"""
