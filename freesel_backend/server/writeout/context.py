"""One write-out step's context: its services, its budget of Label Studio requests, the
project's write lock it holds, and the exceptions that end a step early."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ...labelstudio.client import LabelStudioClient
from ..services import Services
from ..settings import Settings
from ..store import Store
from .plan import head_size_of

# The project's write lock outlives the longest single request by this much; it is renewed before
# every request, so a killed worker's lock frees itself soon.
LOCK_MARGIN_S = 15


class OutOfRequests(Exception):
    """This step used its requests: the rest is for the next step."""


class Superseded(OutOfRequests):
    """A newer ranking replaced the target this step writes: the next step plans towards it
    from what Label Studio holds by then, instead of finishing a queue that is already stale."""


@dataclass
class Step:
    """One write-out job's context: the services, its request budget and its progress."""

    services: Services
    project_id: int
    budget: int
    lock: Any
    generation: str = ""
    started_requests: int = 0
    writes: int = 0
    switching: bool = False  # writing a full import up to its queue switch: a newer ranking waits

    def __post_init__(self) -> None:
        self.started_requests = self.client.requests_sent

    @property
    def client(self) -> LabelStudioClient:
        return self.services.client

    @property
    def store(self) -> Store:
        return self.services.store

    @property
    def settings(self) -> Settings:
        return self.services.settings

    def head_size(self, target: Mapping[str, Any]) -> int:
        """The head the target was ranked with (this worker's setting for a target that does not say)."""
        return head_size_of(target, self.settings.head_size)

    @property
    def requests(self) -> int:
        return self.client.requests_sent - self.started_requests

    def spend(self) -> None:
        """Before a request: stop when the budget is used or, once this step wrote something, when
        a newer ranking replaced its target (not while a full import heads for its queue switch);
        else renew the write lock."""
        if self.requests >= self.budget:
            raise OutOfRequests()
        if self.writes and not self.switching and self.store.target_generation(self.project_id) != self.generation:
            raise Superseded()
        self.lock.reacquire()


def write_lock(services: Services, project_id: int) -> Any:
    """The project's Label Studio write lock: held by a write-out step, or by a cleanup batch."""
    longest = max(services.client.timeout, services.settings.label_studio_write_timeout_s) + LOCK_MARGIN_S
    return services.store.lock(project_id, "writeout", timeout=longest)
