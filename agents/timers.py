"""Timers: pick up a newly promoted champion or a changed rule set, checkpoint online models."""

from __future__ import annotations

import asyncio

from engine.worker_runtime import Runtime


def register(rt: Runtime) -> None:
    # Model and rule refreshes read files (~50 ms) and then swap one attribute, which the
    # pipeline reads once per batch: they run beside the scoring thread, not under its lock
    # (holding it stalled every transactions batch for ~50 ms each second: the p99).
    @rt.app.timer(2.0)
    async def refresh_models() -> None:
        await asyncio.to_thread(rt.service.refresh_models, rt.settings.models_dir)

    @rt.app.timer(1.0)
    async def refresh_rules() -> None:
        await asyncio.to_thread(rt.service.refresh_rules)

    @rt.app.timer(30.0)
    async def checkpoint_online_model() -> None:
        await asyncio.to_thread(rt.locked, rt.service.checkpoint)
