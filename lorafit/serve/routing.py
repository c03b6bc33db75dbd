"""A/B routes: a model name that sends each request to one of several adapters, by weight.

    --route chat=support-v1:90,support-v2:10

makes `chat` a model clients can ask for. Each request picks a target with probability weight / sum:
from the route's own seeded RNG (reproducible for a given seed and request order), or, when the
request has a `user` field, from a hash of (route, user), so one user always gets the same target
while the weights stay the same (sticky). The pick is returned in the response (`lorafit_adapter`)
and logged. `POST /v1/routes/{name} {"weights": {...}}` re-weights at runtime.
"""

from __future__ import annotations

import hashlib
import random
import threading
from dataclasses import dataclass, field


class RouteError(ValueError):
    """A malformed --route spec or weights (the message names what is wrong)."""


def parse_route(spec: str) -> tuple[str, dict[str, float]]:
    """`NAME=A:90,B:10` -> ("NAME", {"A": 90.0, "B": 10.0})."""
    name, eq, targets = spec.partition("=")
    if not eq or not name.strip() or not targets.strip():
        raise RouteError(f"--route {spec!r}: expected NAME=ADAPTER:WEIGHT,ADAPTER:WEIGHT")
    weights: dict[str, float] = {}
    for part in targets.split(","):
        target, colon, weight = part.strip().rpartition(":")
        if not colon or not target:
            raise RouteError(f"--route {spec!r}: {part.strip()!r} is not ADAPTER:WEIGHT")
        try:
            weights[target] = float(weight)
        except ValueError:
            raise RouteError(f"--route {spec!r}: weight {weight!r} of {target!r} is not a number") from None
    check_weights(weights)
    return name.strip(), weights


def check_weights(weights: dict[str, float]) -> None:
    if not weights:
        raise RouteError("weights: at least one target")
    for target, w in weights.items():
        if not isinstance(w, int | float) or w != w or w < 0 or w == float("inf"):
            raise RouteError(f"weights: {target!r} has weight {w!r}; weights are finite numbers >= 0")
    if sum(weights.values()) <= 0:
        raise RouteError("weights: at least one weight must be > 0")


@dataclass
class Route:
    name: str
    weights: dict[str, float]
    seed: int = 0
    _rng: random.Random = field(init=False, repr=False)
    _lock: threading.Lock = field(init=False, repr=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        check_weights(self.weights)
        self._rng = random.Random(self.seed)

    def pick(self, user: str | None = None) -> str:
        """One target by weight: sticky per `user` (hash), else from the route's seeded RNG."""
        with self._lock:
            weights = dict(self.weights)
            if user is None:
                u = self._rng.random()
            else:
                digest = hashlib.sha256(f"{self.name}\0{user}".encode()).digest()
                u = int.from_bytes(digest[:8], "big") / 2**64
        total = sum(weights.values())
        acc = 0.0
        for target, w in weights.items():
            acc += w / total
            if u < acc and w > 0:
                return target
        return [t for t, w in weights.items() if w > 0][-1]

    def reweight(self, weights: dict[str, float]) -> None:
        check_weights(weights)
        with self._lock:
            self.weights = dict(weights)
