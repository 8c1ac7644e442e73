"""The status page's last hour (edgecache/recent.py): counts land in their minute."""
from edgecache.recent import MINUTES, Recent


def test_counts_land_in_the_minute_they_happened_across_boundaries():
    now = [60 * 1000 + 59.5]
    recent = Recent(clock=lambda: now[0])
    recent.hit()
    recent.served("local", 10)
    now[0] += 0.5                      # exactly the next minute's first instant
    recent.hit()
    recent.miss()
    now[0] += 59.999                   # still that minute
    recent.served("local", 5)
    now[0] += 120                      # two minutes later, one quiet minute between
    recent.hit()
    minutes = recent.minutes()
    assert len(minutes) == MINUTES
    assert [(m.at, m.hits, m.misses, m.served) for m in minutes[-4:]] == [
        (1000, 1, 0, {"local": 10}), (1001, 1, 1, {"local": 5}), (1002, 0, 0, {}), (1003, 1, 0, {})]


def test_a_clock_set_back_counts_in_the_earlier_minute():
    now = [60 * 500 + 30.0]
    recent = Recent(clock=lambda: now[0])
    recent.hit()
    now[0] -= 60                       # an NTP step back by a minute
    recent.hit()
    recent.hit()
    assert [(m.at, m.hits) for m in recent._minutes] == [(500, 1), (499, 2)]
