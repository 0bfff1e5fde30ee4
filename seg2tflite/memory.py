"""How much memory this machine has free, and the refusal of a job that cannot fit in it.

A size whose lower-bound estimate already exceeds the memory available is refused before any
work, with the largest size that fits, instead of growing until the kernel kills the process.
The estimates are lower bounds (what must be held at once), so nothing that fits is refused.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from seg2tflite.errors import UserError, setting


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def available_bytes() -> int | None:
    """Memory this process may still use: the kernel's MemAvailable, lowered to what is left
    under a cgroup (container) limit; None when neither can be read."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    limit, used = _read_int("/sys/fs/cgroup/memory.max"), _read_int("/sys/fs/cgroup/memory.current")
    if limit is not None and used is not None:
        found.append(max(0, limit - used))
    if not found:
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            return None
    return min(found)


def gigabytes(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.0f} MB"


def largest_fitting(
    need: Callable[[int, int], float], size: tuple[int, int], budget: float, divisor: int = 1
) -> tuple[int, int] | None:
    """The largest (H, W) with ``size``'s aspect ratio, multiples of ``divisor``, whose ``need``
    is within ``budget``; None when not even the smallest does."""

    def at(scale: float) -> tuple[int, int]:
        return tuple(max(divisor, int(s * scale) // divisor * divisor) for s in size)

    low, high = 0.0, 1.0
    for _ in range(24):  # ``need`` grows with the size: bisect the scale
        mid = (low + high) / 2
        if need(*at(mid)) <= budget:
            low = mid
        else:
            high = mid
        if at(low) == at(high):
            break
    best = at(low)
    return best if low > 0 and need(*best) <= budget else None


def check_fits(
    need: Callable[[int, int], float],
    size: tuple[int, int],
    what: str,
    where: str | None = None,
    divisor: int = 1,
    budget: float | None = None,
) -> None:
    """Refuse ``size`` when ``need(h, w)`` (bytes, a lower bound) exceeds the memory available.

    ``what`` says the job ("converting segformer_b0"), ``where`` starts the message (default
    the input size); the message names the largest size of the same aspect that fits."""
    budget = available_bytes() if budget is None else budget
    if budget is None:
        return
    h, w = (int(s) for s in size)
    required = need(h, w)
    if required <= budget:
        return
    best = largest_fitting(need, (h, w), budget, divisor)
    fits = f"the largest size of that shape that fits is about {best[0]}x{best[1]}" if best else "no size of that shape fits"
    raise UserError(
        f"{where or setting('input_size', f'{h} {w}', f'input_size=({h}, {w})')}: {what} at {h}x{w} needs at least {gigabytes(required)} of memory, "
        f"more than the {gigabytes(budget)} available; {fits}"
    )
