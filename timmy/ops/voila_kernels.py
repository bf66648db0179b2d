"""Voilà's kernel manager for the dashboards: `ClosedPageKernels` culls the kernel of a page
that was closed; this module runs inside Voilà.
"""

from __future__ import annotations

import time

from jupyter_core.utils import ensure_async
from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager


class ClosedPageKernels(AsyncMappingKernelManager):
    """`AsyncMappingKernelManager` whose culler counts time without a page, not silence.

    jupyter_server culls a kernel only when nothing happened on it for
    ``cull_idle_timeout`` seconds, and "happened" is any message the kernel sends. A
    dashboard's kernel sends widget updates for every swarm event whether a page is
    watching or not, so it is never idle. This culls on what matters instead: no page
    connected for ``cull_idle_timeout`` seconds (counted from the first cull pass that saw
    it alone) and not executing. Pre-heated kernels waiting in Voilà's pool are spared by
    Voilà's own wrapper of this class; a kernel not seen in the last passes (it was in the
    pool) starts its count afresh, so a page just served from the pool is not culled
    before its browser connects. `timmy.ops.launcher` passes it as
    ``--VoilaConfiguration.multi_kernel_manager_class``. Why and what it saves:
    docs/operating.md.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._alone_since: dict[str, tuple[float, float]] = {}   # id: (since, last seen)

    async def cull_kernels(self) -> None:
        for gone in set(self._alone_since) - set(self._kernels):   # shut down otherwise
            del self._alone_since[gone]
        await super().cull_kernels()

    async def cull_kernel_if_idle(self, kernel_id: str) -> None:
        kernel = self._kernels.get(kernel_id)
        if kernel is None:
            self._alone_since.pop(kernel_id, None)
            return
        state = getattr(kernel, "execution_state", None)
        if state == "dead":
            self._alone_since.pop(kernel_id, None)
            await super().cull_kernel_if_idle(kernel_id)
            return
        if self._kernel_connections.get(kernel_id, 0) or state == "busy":
            self._alone_since.pop(kernel_id, None)
            return
        now = time.monotonic()
        since, seen = self._alone_since.get(kernel_id, (now, now))
        if now - seen > 2 * self.cull_interval:   # not watched lately: it was in the pool
            since = now
        self._alone_since[kernel_id] = (since, now)
        if now - since < self.cull_idle_timeout:
            return
        self._alone_since.pop(kernel_id, None)
        self.log.info("Culling kernel %s: no page connected for %.0f s", kernel_id, now - since)
        await ensure_async(self.shutdown_kernel(kernel_id))
