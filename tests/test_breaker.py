from edgecache.upstream.breaker import Breaker


class Clock:
    t = 0.0

    def __call__(self):
        return self.t


def test_opens_after_consecutive_failures_and_probes_after_backoff():
    c = Clock()
    b = Breaker(3, 5, 60, clock=c)
    b.failure(); b.failure()
    assert b.allow() and b.state == "closed"
    b.failure()
    assert b.state == "open" and not b.allow()
    c.t = 5.0
    assert b.allow() and b.state == "half_open"   # the probe
    assert not b.allow()                          # others wait for it
    b.failure()
    assert b.state == "open" and b.retry_in() == 10.0   # back-off doubled
    c.t = 15.0
    assert b.allow()
    b.success()
    assert b.state == "closed" and b.allow()


def test_a_success_resets_the_count():
    b = Breaker(2, 5, 60, clock=Clock())
    b.failure(); b.success(); b.failure()
    assert b.state == "closed"


def test_a_lost_probe_does_not_wedge_it():
    c = Clock()
    b = Breaker(1, 5, 60, clock=c)
    b.failure()
    c.t = 5.0
    assert b.allow()          # probe goes out and never reports (cancelled)
    c.t = 10.1
    assert b.allow()


def test_backoff_is_capped():
    c = Clock()
    b = Breaker(1, 5, 12, clock=c)
    b.failure()
    for _ in range(5):
        c.t = b.open_until
        assert b.allow()
        b.failure()
    assert b.retry_in() == 12
