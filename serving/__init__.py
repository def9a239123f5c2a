"""The HTTP service and what it needs at run time: ONNX Runtime + Pillow + BentoML + the index. Never torch.

service     the BentoML service (thin endpoints)          runtime   one version's encoder + index + classifiers
batching    the micro-batcher per loaded version           upload_guard, http_helpers, errors: the HTTP edge
release     which version is served (release.json)        store     bundles in the BentoML model store
paths       where state lives under $BYOL_HOME
contract/   the torch-free contract training shares: image decoding, bundle format + runner, data readers, splits
"""
