"""What the OpenAPI page at ``/`` (Swagger UI, from ``GET /docs.json``) says about this service.

BentoML 1.4.39 builds the document's ``info`` from the service's *name* (the title: ``byol_embed``) and, outside a
built Bento, a generic README ("This is a Machine Learning Service created with BentoML", headed ``byol_embed:dev``);
the ``description=`` given to ``@bentoml.service`` only becomes a built Bento's README. So the service is made of
:class:`DescribedService` (``@bentoml.service(service_class=...)``, BentoML's own extension point), which keeps
BentoML's document — paths, schemas, infra endpoints — and replaces its ``info``: our title, what the service does,
the GET routes the document cannot list (they are not BentoML API routes), a link to ``/ui``, and the package version.
The description starts with the title as a heading: BentoML's Swagger page hides ``info.title``.
"""

from __future__ import annotations

from importlib import metadata

import attr
import bentoml

TITLE = "byol-embed: image embeddings and visual search"
DESCRIPTION = "# " + TITLE + """

Self-supervised (BYOL) image embeddings served by ONNX Runtime, with nearest-neighbour search over a FAISS index.

**[Open the visual search page → /ui](./ui)**: drop an image, see its neighbours, click one for more like it.

| GET route | what |
|---|---|
| [`/ui`](./ui) | visual search page (`/ui?id=N`: item N's neighbours) |
| `/items/{id}/thumbnail` | PNG of an indexed item (ids only; 404 unknown or removed) |
| [`/info`](./info) | the served encoder version, its index and classifiers |
| [`/metrics`](./metrics) | Prometheus metrics (`byol_*` and BentoML's) |

Uploads are multipart files (`image`, `images`). Every answer names the encoder `version` that produced it, and
ids belong to that version's index. Admin endpoints (`/index/add`, `/index/remove`, `/admin/reload`) need
`Authorization: Bearer $BYOL_ADMIN_TOKEN`. Errors are JSON naming the problem: 400 bad input, 404 unknown id or
version, 409 the served version lacks an index or probe, 413 over a limit, 503 busy (retry after `Retry-After`).
"""


def package_version() -> str:
    """The installed byol-embed's version ("dev" in a Bento or a checkout that was not pip-installed)."""
    try:
        return metadata.version("byol-embed")
    except metadata.PackageNotFoundError:
        return "dev"


class DescribedService(bentoml.Service):
    """BentoML's service with our ``info`` in its OpenAPI document."""

    @property
    def openapi_spec(self):
        spec = super().openapi_spec
        info = attr.evolve(spec.info, title=TITLE, description=DESCRIPTION, version=package_version(), contact=None)
        return attr.evolve(spec, info=info)
