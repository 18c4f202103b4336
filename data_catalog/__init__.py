"""C2GR workbench data catalog: task cards, streams, loaders, preparers and the synthetic generator."""
