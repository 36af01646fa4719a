"""vidx: batch, offline video indexing with search on top.

The application layer: the `vidx` command line and the query side (search, people). Layers below
it: jobs -> indexer -> engines -> schemas.
"""

__version__ = "0.1.0"
