"""HTTP errors of the service, as BentoML exceptions that answer with the right status.

BentoML 1.4.39 quirks these classes are written for (shared/ENVIRONMENT.md): ``error_code`` must be an
``http.HTTPStatus`` member (a plain int makes BentoML's own handler fail and the request hang); 401/403 bodies are
replaced by ``{"error": "Authorization error"}``; other 4xx bodies are ``[{"error": "<message>"}]``; 5xx bodies lose
the message, so every failure a caller can act on is a 4xx.
"""

from __future__ import annotations

import logging
import re
from http import HTTPStatus

from bentoml.exceptions import BentoMLException, InvalidArgument

log = logging.getLogger(__name__)
# an absolute path: "/" + at least two segments, not inside a URI ("sha256:…", "folder:root/…", "http://…")
SERVER_PATH = re.compile(r"(?<![\w:/.~-])/(?:[\w.@+~-]+/)+[\w.@+~-]*")


def public(message: str) -> str:
    """``message`` fit for an HTTP answer: server paths replaced by ``<server path>``. The whole message goes to the
    log (BentoML's log lines carry the request's trace id), so an operator still finds which file it was."""
    scrubbed = SERVER_PATH.sub("<server path>", message)
    if scrubbed != message:
        log.warning("answered without its server paths: %s", message)
    return scrubbed


class BadRequest(InvalidArgument):
    """400: the upload or a parameter is wrong (not an image, bad ``k``, unknown method...)."""


class Unauthorized(BentoMLException):
    """401: an admin endpoint was called without the bearer token, or with a wrong one."""

    error_code = HTTPStatus.UNAUTHORIZED


class Forbidden(BentoMLException):
    """403: admin endpoints are disabled because the server has no admin token configured."""

    error_code = HTTPStatus.FORBIDDEN


class NotFoundError(BentoMLException):
    """404: a model version asked for by ``/admin/reload`` is not in the model store, or an item id is not in the
    served index (unknown, removed, or of another version's index), or its image can no longer be read."""

    error_code = HTTPStatus.NOT_FOUND


class Conflict(BentoMLException):
    """409: the request is valid but the loaded version lacks what it needs (no index, no probe)."""

    error_code = HTTPStatus.CONFLICT


class TooLarge(BentoMLException):
    """413: more images in one request than the server accepts."""

    error_code = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class Unavailable(BentoMLException):
    """503: the server cannot do it now (its storage failed: a full or failing disk); retry later. The edge adds
    ``Retry-After``. Nothing of the failed write was kept."""

    error_code = HTTPStatus.SERVICE_UNAVAILABLE
