"""Analysis tests run tiny models: one intra-op thread each (tests/threads.py)."""

from tests.threads import one_thread  # noqa: F401  (autouse: one intra-op thread)

