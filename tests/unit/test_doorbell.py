"""The doorbell engines wait on: a ring wakes every waiter, a write nobody rang for is found by polling."""

from __future__ import annotations

import threading

from emudev.engine.semaphore import Doorbell

NEVER_S = 3600.0  # a poll interval no test outlives: only a ring can wake the waiter


def _waiters(bell: Doorbell, flag: list[bool], count: int) -> list[threading.Thread]:
    threads = [threading.Thread(target=bell.wait, args=(lambda: flag[0],), daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads


def _all_end(threads: list[threading.Thread]) -> bool:
    for thread in threads:
        thread.join(10)
    return not any(thread.is_alive() for thread in threads)


def test_a_write_under_the_bell_wakes_every_waiter() -> None:
    bell, flag = Doorbell(NEVER_S, NEVER_S), [False]
    threads = _waiters(bell, flag, 3)
    with bell.writing():
        flag[0] = True
    assert _all_end(threads)


def test_a_ring_makes_waiters_look_again() -> None:
    bell, flag = Doorbell(NEVER_S, NEVER_S), [False]
    threads = _waiters(bell, flag, 2)
    flag[0] = True  # written elsewhere, then announced (BO_FINI, DMA_BUF_IOCTL_SYNC END)
    bell.ring()
    assert _all_end(threads)


def test_a_silent_write_is_found_by_the_poll() -> None:
    bell, flag = Doorbell(0.001, 0.01), [False]
    threads = _waiters(bell, flag, 1)
    flag[0] = True  # a CPU store through a mapping: nobody rings
    assert _all_end(threads)


def test_holds_is_the_condition_now() -> None:
    bell = Doorbell()
    assert bell.holds(lambda: True) and not bell.holds(lambda: False)
