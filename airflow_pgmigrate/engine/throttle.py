"""Rate limits shared by parallel workers: bytes/s, rows/s and queries/s (the DTS throttling settings)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class TokenBucket:
    """A thread-safe token bucket: ``take(n)`` blocks until ``n`` tokens at ``rate`` per second are available.

    The burst is a fraction of a second's worth, so the average over any few seconds stays within a few percent.
    """

    def __init__(self, rate: float, burst_seconds: float = 0.2) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(rate)
        self.capacity = max(1.0, self.rate * burst_seconds)
        self._tokens = 0.0
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
        self._last = now

    def wait_for(self, amount: float) -> float:
        """Seconds ``take(amount)`` would sleep now (nothing is consumed)."""
        with self._lock:
            self._refill()
            return max(0.0, (amount - self._tokens) / self.rate)

    def take(self, amount: float, sleep: Callable[[float], None] = time.sleep) -> None:
        """Consume ``amount`` tokens, sleeping as long as needed (amounts above the burst are paid off in debt)."""
        with self._lock:
            self._refill()
            self._tokens -= amount
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            sleep(wait)


class Throttle:
    """The caps of one step; each unset cap costs nothing."""

    def __init__(self, *, mb_per_second: float | None = None, rows_per_second: float | None = None,
                 queries_per_second: float | None = None) -> None:
        self.bytes = TokenBucket(mb_per_second * 1024 * 1024) if mb_per_second else None
        self.rows = TokenBucket(rows_per_second) if rows_per_second else None
        self.queries = TokenBucket(queries_per_second, burst_seconds=1.0 / queries_per_second) \
            if queries_per_second else None

    @property
    def counts_rows(self) -> bool:
        return self.rows is not None

    def on_bytes(self, amount: int) -> None:
        if self.bytes is not None:
            self.bytes.take(amount)

    def on_rows(self, amount: int) -> None:
        if self.rows is not None and amount:
            self.rows.take(amount)

    @property
    def rows_per_second(self) -> float | None:
        return self.rows.rate if self.rows is not None else None

    @property
    def bytes_per_second(self) -> float | None:
        return self.bytes.rate if self.bytes is not None else None

    def pay(self, rows: int, nbytes: int, deadline: float | None = None,
            sleep: Callable[[float], None] = time.sleep) -> bool:
        """Pay for a write of ``rows`` rows and ``nbytes`` bytes, sleeping until both caps allow it.

        With a ``deadline`` (``time.monotonic()`` seconds), nothing is paid and False is returned at once when the
        caps would allow the write only after it: a caller with a time window never sleeps past its end. One payer
        at a time (the incremental sync's reading thread): the two waits overlap, so the sleep is the longer one.
        ``sleep`` does the waiting (the sync's keeps its replication connection alive meanwhile).
        """
        owed: list[tuple[TokenBucket, int]] = []
        for bucket, amount in ((self.rows, rows), (self.bytes, nbytes)):
            if bucket is not None and amount > 0:
                owed.append((bucket, amount))
        if deadline is not None and owed:
            if time.monotonic() + max(bucket.wait_for(amount) for bucket, amount in owed) > deadline:
                return False
        for bucket, amount in owed:
            bucket.take(amount, sleep)
        return True

    def before_query(self) -> None:
        if self.queries is not None:
            self.queries.take(1)


class BinaryRowCounter:
    """Counts rows in a stream of COPY BINARY data without decoding values (only when rows/s are capped)."""

    _SIGNATURE_LEN = 11 + 4 + 4  # signature, flags, header extension length (extension assumed empty)

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._header_done = False
        self._need: int | None = None  # bytes still to skip inside the current tuple
        self._fields_left = 0
        self.finished = False

    def feed(self, data: bytes | bytearray | memoryview) -> int:
        """Consume a block; return the number of complete rows it finished."""
        self._buffer += data
        rows = 0
        pos = 0
        buf = self._buffer
        if not self._header_done:
            if len(buf) < self._SIGNATURE_LEN:
                return 0
            ext = int.from_bytes(buf[15:19], "big")
            if len(buf) < self._SIGNATURE_LEN + ext:
                return 0
            pos = self._SIGNATURE_LEN + ext
            self._header_done = True
        while True:
            if self._fields_left == 0:
                if len(buf) - pos < 2:
                    break
                count = int.from_bytes(buf[pos:pos + 2], "big", signed=True)
                pos += 2
                if count == -1:
                    self.finished = True
                    break
                self._fields_left = count
                if count == 0:
                    rows += 1
                    continue
            if len(buf) - pos < 4:
                break
            length = int.from_bytes(buf[pos:pos + 4], "big", signed=True)
            if length > 0 and len(buf) - pos - 4 < length:
                break
            pos += 4 + max(length, 0)
            self._fields_left -= 1
            if self._fields_left == 0:
                rows += 1
        del buf[:pos]
        return rows


def count_text_rows(data: bytes | bytearray | memoryview) -> int:
    """Rows finished in a block of COPY TEXT data (one per newline: newlines inside values are escaped)."""
    return bytes(data).count(b"\n")


__all__ = ["BinaryRowCounter", "Throttle", "TokenBucket", "count_text_rows"]
