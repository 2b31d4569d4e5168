"""kopf handlers: `kopf run -m canarist.handlers` (or `python -m canarist.handlers`)."""

# Registration order is the order kopf runs startup handlers in: leadership's waits for the lease
# before anything else starts (a standby never gets past it).
from . import metrics  # noqa: F401 - /metrics first: a standby serves it too (canarist_leader 0)
from . import leadership  # noqa: F401 - registers the startup handler that waits for the lease
from . import canaryrelease  # noqa: F401 - registers the handlers
