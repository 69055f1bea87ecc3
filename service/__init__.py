"""gNB-side scheduling microservice.

Data flow of one slot (see ``service.pipeline.decide``)::

    SlotState -> serialize -> policy -> PAG check -> repair -> Decision

Pure kernels live in ``types``, ``phy``, ``pag``, ``policies``, ``history``, ``kpi`` and ``sim``
(numpy in, numpy out, no I/O). Transports, state stores and metrics live at the edge
(``api``, ``state``, ``metrics``).
"""

from importlib.metadata import PackageNotFoundError, version

try:  # the one version is the package metadata's (pyproject.toml)
    __version__ = version("gnbsched")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
