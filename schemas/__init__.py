"""Shared types of vidx: configuration, Arrow schemas of the Parquet outputs, SQL models of the index.

Depends on nothing else of vidx; everything else depends on it.
"""
