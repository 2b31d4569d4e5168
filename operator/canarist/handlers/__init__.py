"""kopf handlers: `kopf run -m canarist.handlers` (or `python -m canarist.handlers`)."""

from . import canaryrelease  # noqa: F401 - registers the handlers
