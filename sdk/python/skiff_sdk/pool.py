"""Pools: how many sandboxes the daemon keeps booted and ready."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional
from urllib.parse import quote

from .client import Client


@dataclass
class Pool:
    name: str
    size: int
    ttl_secs: int
    ready: int = 0
    booting: int = 0
    taken: int = 0
    sleeping: int = 0

    @staticmethod
    def _from(d: Dict[str, Any]) -> "Pool":
        return Pool(d["name"], d["size"], d["ttl_secs"], d.get("ready", 0),
                    d.get("booting", 0), d.get("taken", 0), d.get("sleeping", 0))

    @classmethod
    def create(cls, name: str, size: int = 1, *, image: Optional[str] = None,
               cpus: Optional[int] = None, memory_mib: Optional[int] = None,
               net: Optional[str] = None, ttl_secs: Optional[int] = None,
               pausable: bool = False, awake: Optional[int] = None,
               sleep_after_secs: Optional[int] = None,
               client: Optional[Client] = None) -> "Pool":
        """A pool of `size` ready sandboxes; `pausable` ones can be paused
        and resumed (`Sandbox.pause()`), but cannot boot an `image`. With
        `awake`, only that many ready sandboxes run and the rest sleep
        (paused); taking one wakes it. With `sleep_after_secs`, a taken
        sandbox nobody used for that long sleeps until its next use."""
        client = client or Client()
        body = {"name": name, "size": size, "image": image, "cpus": cpus,
                "memory_mib": memory_mib, "net": net, "ttl_secs": ttl_secs,
                "pausable": pausable or None, "awake": awake,
                "sleep_after_secs": sleep_after_secs}
        d = client.request("POST", "/v1/pools", {k: v for k, v in body.items() if v is not None})
        return cls._from(d)

    @classmethod
    def list(cls, client: Optional[Client] = None) -> List["Pool"]:
        return [cls._from(d) for d in (client or Client()).request("GET", "/v1/pools")]

    @classmethod
    def get(cls, name: str, client: Optional[Client] = None) -> Optional["Pool"]:
        return next((p for p in cls.list(client) if p.name == name), None)

    @staticmethod
    def resize(name: str, size: int, client: Optional[Client] = None) -> None:
        (client or Client()).request("POST", f"/v1/pools/{quote(name, safe='')}/resize", {"size": size})

    @staticmethod
    def remove(name: str, client: Optional[Client] = None) -> None:
        (client or Client()).request("DELETE", f"/v1/pools/{quote(name, safe='')}")
