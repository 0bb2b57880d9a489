"""service/batching.py: the forward passes of requests that reach the batcher in the same turn
of the event loop run as one pass, each request gets exactly its own rows (or the error), and
nothing waits when there is nothing to wait for."""

from __future__ import annotations

from pathlib import Path

import gevent
import numpy as np
import pytest

from service.batching import MAX_BATCH_IMAGES, MAX_REQUEST_IMAGES, MIN_BATCH, Batcher, groups
from tests.support.mnist import synthetic_digit
from training.bundle import Prediction
from training.store import ModelStore

EMBEDDED_STORE = Path(__file__).resolve().parents[2] / "model_store"


class CountingModel:
    """A model whose probabilities encode each image's first pixel, counting its passes."""

    def __init__(self, fail: bool = False):
        self.passes: list[int] = []
        self.fail = fail

    def predict(self, pixels: np.ndarray) -> Prediction:
        self.passes.append(len(pixels))
        if self.fail:
            raise RuntimeError("the forward pass broke")
        first = pixels[:, 0, 0].astype(np.float32)
        return Prediction(
            probabilities=np.stack([first, first + 1], axis=1),
            ood_score=first.astype(np.float64),
            not_a_digit=first > 100,
            ood_available=True,
            calibrated=False,
        )


def images(*firsts: int) -> np.ndarray:
    pixels = np.zeros((len(firsts), 28, 28), np.float32)
    pixels[:, 0, 0] = firsts
    return pixels


def batcher(others_ready: bool = True) -> Batcher:
    return Batcher(gevent.get_hub(), others_ready=lambda: others_ready)


def same_turn(batch: Batcher, calls: list[tuple]) -> list:
    """Each (model, pixels) from its own greenlet, all started in one turn; their results
    (a Prediction, or the exception raised)."""

    def one(model, pixels):
        try:
            return batch.predict(model, pixels)
        except Exception as exc:
            return exc

    jobs = [gevent.spawn(one, model, pixels) for model, pixels in calls]
    gevent.joinall(jobs, timeout=10)
    return [job.value for job in jobs]


def test_requests_of_one_turn_share_a_pass_and_get_their_own_rows():
    model, batch = CountingModel(), batcher()
    calls = [(model, images(10 * n, 10 * n + 1)) for n in range(4)]  # 8 images
    results = same_turn(batch, calls)
    assert model.passes == [8]
    for (_, pixels), result in zip(calls, results, strict=True):
        assert result.probabilities[:, 0].tolist() == pixels[:, 0, 0].tolist()
        assert result.ood_score.tolist() == pixels[:, 0, 0].tolist()
    assert (batch.passes, batch.images) == (1, 8)


def test_groups_under_min_batch_run_request_by_request():
    model, batch = CountingModel(), batcher()
    results = same_turn(batch, [(model, images(n)) for n in range(MIN_BATCH - 1)])
    assert model.passes == [1] * (MIN_BATCH - 1)
    assert [r.probabilities[0, 0] for r in results] == list(range(MIN_BATCH - 1))


def test_a_pass_holds_at_most_max_batch_images_in_arrival_order():
    sizes = [MAX_REQUEST_IMAGES - 1] * 20
    requests = [(np.zeros((size, 28, 28)), None) for size in sizes]
    grouped = groups(requests)
    assert [request for group in grouped for request in group] == requests  # order kept
    assert all(sum(len(p) for p, _ in group) <= MAX_BATCH_IMAGES for group in grouped)
    assert sum(len(p) for p, _ in grouped[0]) > MAX_BATCH_IMAGES - MAX_REQUEST_IMAGES


def test_a_request_alone_or_large_runs_at_once_without_yielding():
    model = CountingModel()
    alone = batcher(others_ready=False)
    assert alone.predict(model, images(5)).probabilities[0, 0] == 5  # no greenlet switch
    assert not alone.flush_queued
    large = batcher(others_ready=True)
    large.predict(model, images(*range(MAX_REQUEST_IMAGES)))
    assert not large.flush_queued
    assert model.passes == [1, MAX_REQUEST_IMAGES]


def test_each_model_gets_its_own_pass():
    first, second, batch = CountingModel(), CountingModel(), batcher()
    calls = [(first, images(1, 2)), (second, images(3, 4)), (first, images(5, 6))]
    calls += [(second, images(7, 8))]
    results = same_turn(batch, calls)
    assert first.passes == [4] and second.passes == [4]
    assert [r.probabilities[:, 0].tolist() for r in results] == [[1, 2], [3, 4], [5, 6], [7, 8]]


def test_an_error_in_a_shared_pass_reaches_every_request_of_it_and_no_other():
    broken, healthy, batch = CountingModel(fail=True), CountingModel(), batcher()
    calls = [(broken, images(1, 2)), (healthy, images(3, 4)), (broken, images(5, 6))]
    calls += [(healthy, images(7, 8))]
    results = same_turn(batch, calls)
    assert isinstance(results[0], RuntimeError) and isinstance(results[2], RuntimeError)
    assert results[1].probabilities[:, 0].tolist() == [3, 4]
    assert results[3].probabilities[:, 0].tolist() == [7, 8]


@pytest.mark.parametrize("version", [1, 2])  # 2: calibrated, with the not-a-digit detector
def test_batched_rows_match_each_images_own_pass(version):
    bundle = ModelStore(EMBEDDED_STORE).load("mnist", version)
    digits = [synthetic_digit(label).astype(np.float32)[None] for label in range(8)]
    batch = batcher()
    results = same_turn(batch, [(bundle, pixels) for pixels in digits])
    assert (batch.passes, batch.images) == (1, 8)
    for pixels, batched in zip(digits, results, strict=True):
        alone = bundle.predict(pixels)
        np.testing.assert_allclose(batched.probabilities, alone.probabilities, atol=1e-6)
        np.testing.assert_allclose(batched.ood_score, alone.ood_score, rtol=1e-5, atol=1e-6)
        assert batched.not_a_digit.tolist() == alone.not_a_digit.tolist()
        assert batched.ood_available == alone.ood_available
