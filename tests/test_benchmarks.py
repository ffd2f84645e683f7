"""The shared timing helpers of ``benchmarks/``: a timed call starts on idle cores."""
import threading
import time

from benchmarks.common import interleaved, settle


def _spin(seconds: float) -> threading.Thread:
    """A thread that burns CPU for ``seconds``, as a runtime's workers do after a call returns."""
    def burn():
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            sum(range(1000))

    thread = threading.Thread(target=burn, daemon=True)
    thread.start()
    return thread


def test_settle_waits_for_spinning_threads_to_stop():
    thread = _spin(0.15)
    waited = settle()
    assert not thread.is_alive(), f"settle returned after {waited:.3f} s with a thread still spinning"
    assert waited >= 0.1


def test_settle_returns_at_once_when_idle_and_gives_up_at_its_limit():
    assert settle() < 0.25  # one quiet 5 ms slice suffices; the limit is 0.5 s
    thread = _spin(2.0)
    waited = settle(limit_s=0.2)
    assert 0.2 <= waited < 1.0 and thread.is_alive()
    thread.join()


def test_interleaved_settles_before_every_timed_call():
    spinning = []

    def leaves_a_spinner():
        spinning.append(_spin(0.1))

    def checks():
        assert not any(t.is_alive() for t in spinning), "timed while the previous contender's thread spun"

    timings = interleaved({"a": leaves_a_spinner, "b": checks}, repeats=2, warmup=0)
    assert len(timings["a"]["runs"]) == len(timings["b"]["runs"]) == 2
