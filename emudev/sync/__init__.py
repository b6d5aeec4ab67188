"""Synchronisation: dma_fence and chains, syncobj, sync_file, sw_sync, reservation objects."""
