"""What the driver tells a person as a rollout runs; the CLI renders it (lines, a live view), the demo too."""

from __future__ import annotations

from typing import Protocol

from klpfleet.controller.gate import WaveCounts


class Progress(Protocol):
    def wave(self, index: int, total: int, domain: str | None, hosts: int) -> None: ...
    def counts(self, index: int, counts: WaveCounts) -> None: ...
    def note(self, text: str) -> None: ...


class Silent:
    """No one is watching (a test, a background driver that logs elsewhere)."""

    def wave(self, index: int, total: int, domain: str | None, hosts: int) -> None:
        pass

    def counts(self, index: int, counts: WaveCounts) -> None:
        pass

    def note(self, text: str) -> None:
        pass
