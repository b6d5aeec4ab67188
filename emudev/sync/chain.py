"""dma_fence_chain: the timeline points of a syncobj (dma-fence-chain.c).

Each point is a chain node wrapping the fence submitted for it and linking to the
previous head. A node signals once its own fence and every older node have. A
point added in order shares the previous node's context; an out-of-order point
starts a new context with seqno max(prev, point) — which is why QUERY can report
less after an unordered point. A node drops its link to older nodes once it has
signalled, so a long-running timeline keeps only its unsignalled tail.
"""

from __future__ import annotations

from emudev.sync.fence import DmaFence, new_context, when_all


class FenceChain(DmaFence):
    __slots__ = ("fence", "prev", "prev_seqno")

    def __init__(self, prev: DmaFence | None, fence: DmaFence, point: int) -> None:
        prev_chain = prev if isinstance(prev, FenceChain) else None
        if prev_chain is not None and point > prev_chain.seqno:
            context, prev_seqno, seqno = prev_chain.context, prev_chain.seqno, point
        else:
            context, prev_seqno = new_context(), 0
            seqno = max(prev_chain.seqno, point) if prev_chain is not None else point
        super().__init__(context, seqno, "dma_fence_chain", "unbound")
        self.fence = fence
        self.prev: DmaFence | None = prev
        self.prev_seqno = prev_seqno
        self._arm()

    def _arm(self) -> None:
        """Signal when the wrapped fence and the previous node both have."""

        def all_done() -> None:
            self.prev = None  # garbage-collect the signalled past
            self.signal(self.fence.error)

        when_all([f for f in (self.fence, self.prev) if f is not None], all_done)

    def set_deadline(self, deadline_ns: int) -> None:
        """dma_fence_chain_set_deadline(): the hint goes to the fences the chain waits for."""
        for fence in self.contained():
            fence.set_deadline(deadline_ns)

    def contained(self) -> list[DmaFence]:
        """What dma_fence_unwrap sees: the fences of every node the walk visits."""
        return [node.fence if isinstance(node, FenceChain) else node for node in self.walk()]

    def walk(self) -> list[DmaFence]:
        """dma_fence_chain_for_each from this node: the node, then what each
        dma_fence_chain_walk() step returns (a trailing non-chain fence included)."""
        nodes: list[DmaFence] = [self]
        node: DmaFence | None = self
        while isinstance(node, FenceChain) and (node := node._step()) is not None:
            nodes.append(node)
        return nodes

    def _step(self) -> DmaFence | None:
        """dma_fence_chain_walk(): unlink the older nodes whose own fence has signalled
        (the chain's garbage collection) and return the first one still waiting."""
        while (prev := self.prev) is not None:
            if isinstance(prev, FenceChain):
                if not prev.fence.signaled:
                    break
                self.prev = prev.prev
            else:
                if not prev.signaled:
                    break
                self.prev = None
        return self.prev


def find_seqno(head: DmaFence, point: int) -> tuple[bool, DmaFence | None]:
    """dma_fence_chain_find_seqno(): (found, fence). Point 0 is the head itself; a point
    past the head, or any point of a fence that is not a chain, is not found (EINVAL);
    a point already signalled and collected is found as None (the caller uses a stub)."""
    if point == 0:
        return True, head
    if not isinstance(head, FenceChain) or head.seqno < point:
        return False, None
    for node in head.walk():
        if node.context != head.context or not isinstance(node, FenceChain) or node.prev_seqno < point:
            return True, node
    return True, None


def last_signaled_point(head: DmaFence) -> int:
    """SYNCOBJ_QUERY's answer: walk the head's context back to its oldest linked node."""
    if not isinstance(head, FenceChain):
        return 0
    last = head
    for node in head.walk():
        if node.context != head.context or not isinstance(node, FenceChain):
            break
        last = node
    return last.seqno if last.signaled else last.prev_seqno
