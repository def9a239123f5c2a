"""The request deadline (``serving.deadline``) in front of a stand-in app: a slow request still gets BentoML's 504,
and a finished request is not kept alive by its timer until the deadline (BentoML 1.4.39's middleware kept every
request's context, OpenTelemetry span included, for the whole ``traffic.timeout``)."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import json
import weakref

from serving.deadline import DeadlineMiddleware, install

REQUEST_STATE: contextvars.ContextVar = contextvars.ContextVar("request_state")


class State:
    """Stands for what outer middleware (OpenTelemetry) puts in a request's context."""


def run(app, timeout: float, refs: list | None = None) -> list[dict]:
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    async def request():  # its own task and context, as the server gives each request
        state = State()
        if refs is not None:
            refs.append(weakref.ref(state))
        REQUEST_STATE.set(state)
        await DeadlineMiddleware(app, timeout)({"type": "http", "path": "/embed"}, receive, send)

    async def main():
        await asyncio.create_task(request())
        for _ in range(3):  # let the cancelled helper tasks finish, as the server's loop would
            await asyncio.sleep(0)
        gc.collect()
        return [r() for r in refs or []]  # while the loop still runs, long before the deadline

    alive = asyncio.run(main())
    if refs is not None:
        refs[:] = alive
    return sent


async def answer(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def test_a_request_without_an_answer_by_the_deadline_gets_504():
    async def stuck(scope, receive, send):
        await asyncio.Event().wait()

    sent = run(stuck, timeout=0.01)
    assert sent[0]["status"] == 504
    assert json.loads(sent[1]["body"]) == {"error": "Not able to process the request in 0.01 seconds"}


def test_an_answered_request_passes_through():
    sent = run(answer, timeout=60)
    assert sent[0]["status"] == 200 and sent[1]["body"] == b"ok"


def test_a_finished_request_is_not_kept_alive_until_the_deadline():
    refs: list = []
    run(answer, timeout=120, refs=refs)
    assert refs == [None], "the request's context is still referenced (by a timer armed for 120 s)"


def test_install_replaces_bentomls_timeout_middleware():
    from bentoml._internal.server.http import traffic

    assert install() and traffic.TimeoutMiddleware is DeadlineMiddleware
