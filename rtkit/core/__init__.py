"""The sans-I/O core: frames, states, tokens, timing, channels and broker/client logic, and
for public feeds: Server-Sent Events, records, sequences and liveness.

Nothing here opens a socket, sleeps or reads a clock: callers pass ``now`` and get frames
and events back. The asyncio drivers in :mod:`rtkit.aio` are thin layers over it.
"""
