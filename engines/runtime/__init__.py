"""Runtimes that execute a model: one Session protocol, two implementations."""

from engines.runtime.base import DeviceKind, RuntimeName, Session, open_session, runtime_report

__all__ = ["DeviceKind", "RuntimeName", "Session", "open_session", "runtime_report"]
