"""When to sync: a fixed interval, or a 5-field cron expression ("0 */6 * * *")."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))   # minute hour day month weekday (0, 7 = Sunday)


def _field(text: str, lo: int, hi: int) -> frozenset[int]:
    out: set[int] = set()
    for part in text.split(","):
        body, _, step_s = part.partition("/")
        step = int(step_s) if step_s else 1
        if step < 1:
            raise ValueError(f"step must be >= 1 in {part!r}")
        if body == "*":
            a, b = lo, hi
        elif "-" in body:
            a_s, b_s = body.split("-", 1)
            a, b = int(a_s), int(b_s)
        else:
            a = int(body)
            b = hi if step_s else a
        if not (lo <= a <= hi and lo <= b <= hi and a <= b):
            raise ValueError(f"{part!r} is outside {lo}-{hi}")
        out.update(range(a, b + 1, step))
    if (lo, hi) == (0, 7):
        out = {0 if d == 7 else d for d in out}
    return frozenset(out)


@dataclass(frozen=True)
class Cron:
    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    any_day: bool
    any_weekday: bool

    @classmethod
    def parse(cls, text: str) -> "Cron":
        fields = text.split()
        if len(fields) != 5:
            raise ValueError("expected 5 fields: minute hour day-of-month month day-of-week")
        try:
            sets = [_field(f, lo, hi) for f, (lo, hi) in zip(fields, _RANGES)]
        except ValueError as e:
            raise ValueError(str(e)) from None
        return cls(text, *sets, any_day=fields[2] == "*", any_weekday=fields[4] == "*")

    def _day_ok(self, t: dt.datetime) -> bool:
        dom = t.day in self.days
        dow = (t.isoweekday() % 7) in self.weekdays
        # cron's rule: when both are restricted, either may match.
        if self.any_day or self.any_weekday:
            return dom and dow
        return dom or dow

    def next_after(self, t: dt.datetime) -> dt.datetime:
        t = t.replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
        end = t + dt.timedelta(days=366 * 5)
        while t < end:
            if t.month not in self.months:
                t = (t.replace(day=1, hour=0, minute=0) + dt.timedelta(days=32)).replace(day=1)
            elif not self._day_ok(t):
                t = t.replace(hour=0, minute=0) + dt.timedelta(days=1)
            elif t.hour not in self.hours:
                t = t.replace(minute=0) + dt.timedelta(hours=1)
            elif t.minute not in self.minutes:
                t += dt.timedelta(minutes=1)
            else:
                return t
        raise ValueError(f"cron {self.text!r} never fires")


def seconds_until_next(cron: Cron | None, interval: float | None, now: dt.datetime | None = None) -> float:
    """Until the schedule's next run (local time), else one interval."""
    if cron is not None:
        now = now or dt.datetime.now().astimezone()
        return max(0.0, (cron.next_after(now) - now).total_seconds())
    assert interval is not None
    return interval
