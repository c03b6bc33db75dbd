"""Which adapter names a server offers, and which host slots running requests still pin.

    registry = AdapterRegistry({"sql": 1}, max_adapters=64)
    internal, slot = registry.pin("sql")          # a request accepted on "sql" (404 if unknown)
    registry.unpin(internal)                      # True: the slot may be freed now (its name was removed)
    internal = registry.reserve("e2e")            # a load begins (400 if taken, or at --max-adapters)
    registry.installed("e2e", internal, slot)     # ... and ends; or registry.abandon("e2e")
    internal, free_now = registry.remove("sql")   # unload: new requests get 404 at once

A public name maps to an internal one, the host's name for the slot: the same as the public name,
or `name#k` when the name is reloaded while its old slot is still pinned by running requests (so an
accepted request always decodes with the adapter it was accepted with). Thread-safe: the HTTP thread
and the engine thread both call it.
"""

from __future__ import annotations

import threading

from lorafit.serve.protocol import APIError

DEFAULT_MAX_ADAPTERS = 64


class AdapterRegistry:
    def __init__(self, loaded: dict[str, int], *, max_adapters: int = DEFAULT_MAX_ADAPTERS):
        """`loaded`: adapters already in the host, name -> slot (served under their own names)."""
        self.max_adapters = max_adapters
        self._lock = threading.Lock()
        self._names = {name: name for name in loaded}  # public -> internal
        self._slots = dict(loaded)  # internal -> slot, for every slot in use (pinned ones too)
        self._refs: dict[str, int] = {}
        self._retiring: set[str] = set()
        self._loading: dict[str, str] = {}  # public -> internal, loads in progress
        self._generation = 0

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._names)

    def has(self, name: str) -> bool:
        with self._lock:
            return name in self._names

    def slots_in_use(self) -> int:
        """Slots holding weights: offered adapters and removed ones still pinned by running requests."""
        with self._lock:
            return len(self._slots)

    def pin(self, name: str) -> tuple[str, int]:
        """The internal name and slot a request on `name` runs on, referenced until `unpin`."""
        with self._lock:
            if name not in self._names:
                raise APIError(404, f"the model {name!r} does not exist", param="model", code="model_not_found")
            internal = self._names[name]
            self._refs[internal] = self._refs.get(internal, 0) + 1
            return internal, self._slots[internal]

    def unpin(self, internal: str) -> bool:
        """Drop one reference; True when the slot is now unused and its name was removed (free it)."""
        with self._lock:
            self._refs[internal] -= 1
            return self._refs[internal] == 0 and internal in self._retiring

    def reserve(self, name: str) -> str:
        """Start loading `name`: the internal name to install it under. 400 if the name is offered or
        being loaded, or if --max-adapters are offered already."""
        with self._lock:
            if name in self._names or name in self._loading:
                raise APIError(400, f"adapter {name!r} is already loaded; unload it first", param="lora_name",
                               code="adapter_exists")
            if len(self._names) + len(self._loading) >= self.max_adapters:
                raise APIError(400, f"the server holds its maximum of {self.max_adapters} adapters "
                                    "(--max-adapters); unload one first", param="lora_name",
                               code="max_adapters_reached")
            internal = name
            taken = set(self._slots) | set(self._loading.values())
            while internal in taken:
                self._generation += 1
                internal = f"{name}#{self._generation}"
            self._loading[name] = internal
            return internal

    def installed(self, name: str, internal: str, slot: int) -> None:
        with self._lock:
            self._loading.pop(name, None)
            self._slots[internal] = slot
            self._names[name] = internal

    def abandon(self, name: str) -> None:
        """A load that failed: the name is free again."""
        with self._lock:
            self._loading.pop(name, None)

    def remove(self, name: str) -> tuple[str, bool]:
        """Stop offering `name` (404 if it is not offered): its internal name, and whether its slot can
        be freed now (no running request pins it); else the last `unpin` says so."""
        with self._lock:
            if name not in self._names:
                raise APIError(404, f"adapter {name!r} is not loaded", param="lora_name", code="model_not_found")
            internal = self._names.pop(name)
            self._retiring.add(internal)
            return internal, not self._refs.get(internal)

    def release(self, internal: str) -> bool:
        """Forget a removed slot once nothing pins it; True if the caller should free it in the host."""
        with self._lock:
            if self._refs.get(internal) or internal not in self._retiring:
                return False
            self._retiring.discard(internal)
            self._refs.pop(internal, None)
            self._slots.pop(internal, None)
            return True
