"""asyncio drivers: thin layers of I/O and timers over :mod:`rtkit.core`."""
