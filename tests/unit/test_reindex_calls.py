"""The call tracker a model swap relies on (server.calls): calls counted per services generation,
and the write gate held for the switch."""

from __future__ import annotations

import asyncio

from server.calls import CallTracker


def test_old_generation_drains_while_new_calls_run() -> None:
    async def main() -> None:
        t = CallTracker()
        old_call = await t.enter(write=False)
        old = t.next_generation()
        new_call = await t.enter(write=False)
        assert (old_call, new_call) == (0, 1)
        drained = asyncio.ensure_future(t.drained(old))
        await asyncio.sleep(0.01)
        assert not drained.done()  # a call of the old generation is still in flight
        t.exit(old_call, write=False)
        await asyncio.wait_for(drained, 1)
        assert t.in_flight(new_call) == 1  # the new generation's call is not waited for

    asyncio.run(main())


def test_the_gate_waits_for_writes_in_flight_and_holds_new_ones() -> None:
    async def main() -> None:
        t = CallTracker()
        running = await t.enter(write=True)
        pausing = asyncio.ensure_future(t.pause_writes(5, hold=5))
        await asyncio.sleep(0.01)
        assert not pausing.done()
        held = asyncio.ensure_future(t.enter(write=True))
        read = await asyncio.wait_for(t.enter(write=False), 1)  # reads are never held
        await asyncio.sleep(0.01)
        assert not held.done()
        t.exit(running, write=True)
        assert await asyncio.wait_for(pausing, 1) is True
        assert not held.done()
        t.resume_writes()
        gen = await asyncio.wait_for(held, 1)
        t.exit(gen, write=True)
        t.exit(read, write=False)

    asyncio.run(main())


def test_a_long_ingest_stream_makes_the_switch_give_up_without_holding_writes() -> None:
    async def main() -> None:
        t = CallTracker()
        stream = await t.enter(write=True, stream=True)
        assert await t.pause_writes(0.05, hold=1) is False
        # Writes were never held while it waited.
        other = await asyncio.wait_for(t.enter(write=True), 0.5)
        t.exit(other, write=True)
        # A unary write that outlasts the hold: the gate opens again.
        t.exit(stream, write=True, stream=True)
        slow = await t.enter(write=True)
        assert await t.pause_writes(1, hold=0.05) is False
        late = await asyncio.wait_for(t.enter(write=True), 0.5)
        t.exit(late, write=True)
        t.exit(slow, write=True)

    asyncio.run(main())
