"""dma_fence_array and dma_fence_unwrap_merge: one fence standing for several (sync_file merge)."""

from __future__ import annotations

from emudev.sync.fence import DmaFence, new_context, signaled_stub, when_all


class FenceArray(DmaFence):
    """Signals once every member has; its error is the first member error."""

    __slots__ = ("members",)

    def __init__(self, members: list[DmaFence]) -> None:
        super().__init__(new_context(), 1, "dma_fence_array", "unbound")
        self.members = members
        when_all(members, lambda: self.signal(next((m.error for m in members if m.error), 0)))

    def contained(self) -> list[DmaFence]:
        return [f for m in self.members for f in m.contained()]

    def set_deadline(self, deadline_ns: int) -> None:
        """dma_fence_array_set_deadline(): every member gets the hint."""
        for member in self.members:
            member.set_deadline(deadline_ns)


def unwrap(fence: DmaFence) -> list[DmaFence]:
    """dma_fence_unwrap_for_each: the plain fences inside arrays and chains."""
    inner = fence.contained()
    if inner == [fence]:
        return [fence]
    return [f for i in inner for f in unwrap(i)]


def merge(fences: list[DmaFence]) -> DmaFence:
    """dma_fence_unwrap_merge(): the pending plain fences, one per context (the later one);
    a stub stamped with the latest signal time when none is pending."""
    pending: dict[int, DmaFence] = {}
    latest = 0
    for fence in (f for outer in fences for f in unwrap(outer)):
        if fence.signaled:
            latest = max(latest, fence.timestamp_ns)
        elif fence.context not in pending or fence.seqno > pending[fence.context].seqno:
            pending[fence.context] = fence
    if not pending:
        stub = signaled_stub()
        stub.timestamp_ns = latest or stub.timestamp_ns
        return stub
    members = sorted(pending.values(), key=lambda f: f.context)
    return members[0] if len(members) == 1 else FenceArray(members)
