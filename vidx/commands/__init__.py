"""One module per command group of the `vidx` CLI."""
