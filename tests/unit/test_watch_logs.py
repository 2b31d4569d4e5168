"""The operator's log at scale: the cache-feeding watch handlers' successes stay out of it."""

from __future__ import annotations

import logging

from canarist.handlers.watches import QuietWatchEvents, quiet_event_logs


def record(message: str, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord("kopf.objects", level, __file__, 1, message, None, None)


def test_a_watch_handlers_success_is_not_logged_and_everything_else_is():
    quiet = QuietWatchEvents()
    assert not quiet.filter(record("Handler 'cache-deployments' succeeded."))
    assert not quiet.filter(record("Handler 'cache-configmaps' succeeded."))
    assert quiet.filter(record("Handler 'cache-deployments' failed with an exception. Will ignore.", logging.ERROR))
    assert quiet.filter(record("Handler 'delete_release' succeeded."))  # the finalizer's: one per release, kept
    assert quiet.filter(record("Handler 'cache-deployments' succeeded.", logging.WARNING))


def test_installed_once_on_kopfs_object_logger(caplog):
    quiet_event_logs()
    quiet_event_logs()
    logger = logging.getLogger("kopf.objects")
    assert sum(isinstance(f, QuietWatchEvents) for f in logger.filters) == 1
    with caplog.at_level(logging.INFO, logger="kopf.objects"):
        logger.info("Handler 'cache-httproutes' succeeded.")
        logger.info("Handler 'delete_release' succeeded.")
    assert [r.getMessage() for r in caplog.records] == ["Handler 'delete_release' succeeded."]
