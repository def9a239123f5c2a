"""The embedding side's small rules: how many workers and threads, the poll interval, and how errors of the index
service come back to the client (serving.runtime, serving.following). The protocol itself runs against a real
split server in test_split.py and test_reload_swap.py."""

from __future__ import annotations

import asyncio
from http import HTTPStatus

import pytest
from bentoml.exceptions import BentoMLException

from serving import runtime
from serving.contract.bundle import BundleError
from serving.errors import Conflict, NotFoundError, Unavailable
from serving.following import ask, follow_interval, message


@pytest.fixture
def cpus(monkeypatch):
    def set_machine(cpu: int, gpu: int = 0) -> None:
        monkeypatch.setattr(runtime, "cpu_count", lambda: cpu)
        monkeypatch.setattr(runtime, "gpu_count", lambda: gpu)

    return set_machine


@pytest.mark.parametrize(("cpu", "gpu", "workers", "threads"), [
    (1, 0, 1, 0),  # one worker: ONNX Runtime takes every core (0)
    (2, 0, 1, 0),
    (16, 0, 8, 2),  # one worker per two CPUs, the CPUs shared out between them
    (16, 2, 2, 0),  # one worker per GPU
])
def test_default_workers_and_threads_follow_the_machine(cpus, cpu, gpu, workers, threads):
    cpus(cpu, gpu)
    assert runtime.embed_workers({}) == workers
    assert runtime.ort_threads({}) == threads


def test_explicit_workers_and_threads_win(cpus):
    cpus(8)
    assert runtime.embed_workers({"BYOL_EMBED_WORKERS": "3"}) == 3
    assert runtime.ort_threads({"BYOL_EMBED_WORKERS": "3"}) == 2  # 8 CPUs shared by 3 workers
    assert runtime.ort_threads({"BYOL_EMBED_WORKERS": "3", "BYOL_ORT_THREADS": "5"}) == 5


@pytest.mark.parametrize(("name", "value"), [("BYOL_EMBED_WORKERS", "two"), ("BYOL_EMBED_WORKERS", "0"),
                                             ("BYOL_ORT_THREADS", "-1"), ("BYOL_ORT_THREADS", "1.5")])
def test_malformed_sizes_are_refused_naming_the_variable(cpus, name, value):
    cpus(4)
    with pytest.raises(BundleError, match=name):
        runtime.ort_threads({name: value}) if name == "BYOL_ORT_THREADS" else runtime.embed_workers({name: value})


def test_follow_interval_is_bounded():
    assert follow_interval({}) == 0.5
    assert follow_interval({"BYOL_FOLLOW_S": "2"}) == 2.0
    for bad in ("0", "0.01", "3600", "soon"):
        with pytest.raises(ValueError, match="BYOL_FOLLOW_S"):
            follow_interval({"BYOL_FOLLOW_S": bad})


def raising(exc: BaseException):
    async def call():
        raise exc

    return call()


def test_index_service_errors_come_back_with_their_status_and_message():
    body = '[{"error": "no index for version v1; run \'byol index build --model v1\'"}]'
    with pytest.raises(Conflict) as err:
        asyncio.run(ask(raising(BentoMLException(body, error_code=HTTPStatus.CONFLICT))))
    assert err.value.message == "no index for version v1; run 'byol index build --model v1'"
    with pytest.raises(NotFoundError, match="no item 7"):
        asyncio.run(ask(raising(BentoMLException('[{"error": "no item 7"}]', error_code=HTTPStatus.NOT_FOUND))))


@pytest.mark.parametrize("exc", [ConnectionRefusedError(111, "refused"), TimeoutError(),
                                 BentoMLException("boom", error_code=HTTPStatus.INTERNAL_SERVER_ERROR)])
def test_an_index_service_that_fails_or_is_gone_is_a_503_never_a_500(exc):
    with pytest.raises(Unavailable):
        asyncio.run(ask(raising(exc)))


def test_message_reads_bentoml_error_bodies_and_plain_text():
    assert message(BentoMLException('[{"error": "bad k"}]')) == "bad k"
    assert message(BentoMLException('{"error": "Authorization error"}')) == "Authorization error"
    assert message(BentoMLException("plain words")) == "plain words"
