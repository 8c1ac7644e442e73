"""Waiting for a condition instead of sleeping a fixed time: the one helper, in an
async and a blocking form. Each returns whether the condition came true in time
(the caller asserts it, so a failure names what never happened)."""
from __future__ import annotations

import asyncio
import time
from typing import Callable


async def eventually(pred: Callable[[], object], timeout: float = 5.0,
                     interval: float = 0.02) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        await asyncio.sleep(interval)
    return bool(pred())


def wait_until(pred: Callable[[], object], timeout: float = 5.0, interval: float = 0.02) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(interval)
    return bool(pred())
