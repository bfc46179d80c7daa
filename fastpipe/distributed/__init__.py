"""More than one machine: run a job's Nodes on a Ray cluster.

``RaySession`` is a ``Session`` like ``LocalSession``; each ``Node`` of a
job becomes one Ray actor hosting a native fastpipe workspace, and queues
between nodes are carried in batches through Ray's object store (see
``docs/distributed.md``)::

    from fastpipe.distributed import RaySession
    with RaySession() as s:          # the running Ray cluster, or a local one
        s.run(task_group)

Needs Ray: ``pip install fastpipe[ray]``.  ``import fastpipe`` never
imports this package.
"""

try:
    import ray as _ray  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised by tests/test_distributed.py
    from ..errors import FastpipeError as _FastpipeError

    class RayNotInstalledError(_FastpipeError, ImportError):
        """fastpipe.distributed needs Ray."""

    raise RayNotInstalledError(
        "fastpipe.distributed needs Ray, which is not installed: "
        "pip install fastpipe[ray]  (or: pip install 'ray>=2.9')") from e

from ._node import PeerLostError
from .session import (NodeFailedError, NodeLostError, RayCompiledJob, RayRecordIterator,
                      RayRunHandle, RaySession)

__all__ = ["RaySession", "RayRunHandle", "RayRecordIterator", "RayCompiledJob",
           "NodeFailedError", "NodeLostError", "PeerLostError"]
