"""Per-client rate limits of the customer endpoints: 429 with `Retry-After` past the limit.

A customer clicking "complete" a few times, or a mail scanner following a link, stays well inside
it; a script guessing session tokens or download links does not. Counted per client address in
this process (moving window, `limits`): behind a load balancer, let uvicorn trust its
`X-Forwarded-For` (`FORWARDED_ALLOW_IPS`) so that the address is the customer's.
"""

from __future__ import annotations

import math
import time

from fastapi import HTTPException, Request
from limits import RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter


class ClientRateLimit:
    """`per_minute` requests per client over all customer endpoints together
    (HEALER_PUBLIC_RATE_LIMIT_PER_MINUTE)."""

    def __init__(self, per_minute: int) -> None:
        self.limit = RateLimitItemPerMinute(per_minute)
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    def __call__(self, request: Request) -> None:
        """A FastAPI dependency: raises 429 once this client is over the limit."""
        client = request.client.host if request.client else "unknown"
        if self._limiter.hit(self.limit, client):
            return
        reset_at = self._limiter.get_window_stats(self.limit, client).reset_time
        retry_after = max(1, math.ceil(reset_at - time.time()))
        raise HTTPException(429, "too many requests: try again shortly",
                            headers={"Retry-After": str(retry_after)})
