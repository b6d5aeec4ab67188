"""GEM: buffer objects, their handles, fake mmap offsets, PRIME and dma-buf."""
