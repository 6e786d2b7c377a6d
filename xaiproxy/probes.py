"""Key probes: a 401/403 seen by a client's request is checked by the gateway itself.

A client's request alone never puts a shared key to sleep (SPEC 5): it moves on and
asks for a probe, a cheap authenticated `GET /v1/models` with the key. Only a probe
answered 401/403 puts the key to sleep ("auth_failed", shown in /x-conf); probes then
repeat every `key_probe_interval` (half-open) until one is answered, which wakes it.
"""

from __future__ import annotations

import asyncio

import aiohttp

from . import providers

PROBE_PATH = "/v1/models"


class Prober:
    def __init__(self, gw, router) -> None:
        self.gw = gw
        self.router = router
        self.tasks: dict[int, asyncio.Task] = {}  # one probe loop per key at most
        gw.on_shutdown(self.stop)

    def schedule(self, key, protocol: providers.Protocol) -> None:
        if key.id not in self.tasks:
            self.tasks[key.id] = asyncio.create_task(self._run(key, protocol))

    async def stop(self) -> None:
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, key, protocol: providers.Protocol) -> None:
        settings = self.gw.settings
        try:
            while True:
                verdict = await self.probe(key, protocol)
                if self.gw.metrics is not None:
                    self.gw.metrics.key_probed(key, verdict)
                if self.gw.state.keys.get(key.id) is not key or not key.status:
                    return  # deleted or disabled meanwhile: nothing left to decide
                if verdict is False:
                    self.router.sleep(key, settings.key_sleep_auth, "auth_failed")
                elif verdict is True:
                    if key.sleep_reason == "auth_failed":
                        self.router.wake(key)
                    return
                elif key.sleep_reason != "auth_failed":
                    return  # inconclusive and the key is awake: leave it so
                await asyncio.sleep(settings.key_probe_interval)
        finally:
            self.tasks.pop(key.id, None)

    async def probe(self, key, protocol: providers.Protocol) -> bool | None:
        """True: the key is accepted; False: refused (401/403); None: no clear answer."""
        settings = self.gw.settings
        headers = providers.auth_headers(
            protocol, key.secret, key.config, None, settings.anthropic_version
        )
        try:
            self.router.guard(key)
            url = self.router.url(key, PROBE_PATH)
            async with asyncio.timeout(min(settings.upstream_headers_timeout, 30.0)):
                async with self.router.session(key).get(
                    url, headers=headers, allow_redirects=False
                ) as resp:
                    status = resp.status
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
            return None
        if status in (401, 403):
            return False
        return None if status == 429 or status >= 500 else True
