"""One policy for an upstream's answer before its first byte (SPEC 5).

An answer is passed on, or the request moves on to the next key: after a 5xx simply,
after a 429 resting the key (Retry-After, else `key_sleep_429`), after a 401/403
asking for a probe of the key (only a failed probe rests it, probes.py).
"""

from __future__ import annotations

PASS, MOVE_ON, SLEEP, PROBE = "pass", "move_on", "sleep", "probe"
MAX_RETRY_AFTER = 3600.0  # an upstream's Retry-After rests a key at most this long


def classify(status: int) -> str:
    if status == 429:
        return SLEEP
    if status in (401, 403):
        return PROBE
    return MOVE_ON if status >= 500 else PASS


def sleep_seconds(retry_after: str | None, default: float) -> float:
    """The upstream's Retry-After in seconds (clamped), else `default`."""
    try:
        seconds = min(max(float(retry_after or ""), 0.0), MAX_RETRY_AFTER)
    except ValueError:
        seconds = 0.0
    return seconds or default


class Policy:
    """Applies the decision to the key: rests it or has it probed."""

    def __init__(self, router, prober, settings) -> None:
        self.router, self.prober, self.settings = router, prober, settings

    def apply(self, action: str, key, protocol, retry_after: str | None) -> None:
        if action == SLEEP:
            seconds = sleep_seconds(retry_after, self.settings.key_sleep_429)
            self.router.sleep(key, seconds, "rate_limited")
        elif action == PROBE:
            self.prober.schedule(key, protocol)  # the key sleeps only if the probe fails
