"""Fault injection and delivery auditing: break the link on purpose, then prove what arrived.

    proxy = rtkit.chaos.proxy(server)          # clients connect to proxy.url
    proxy.drop_all(); proxy.blackhole(3); proxy.refuse(2)
    proxy.set_latency(50, jitter_ms=20); proxy.set_bandwidth(20_000); proxy.block_websockets()
    audit = rtkit.chaos.DeliveryAudit()        # audit.publish(...), audit.watch(...), report()
"""

from rtkit.chaos.audit import DeliveryAudit
from rtkit.chaos.handle import FaultProxy, proxy
from rtkit.core.faults import FaultPlan

__all__ = ["DeliveryAudit", "FaultPlan", "FaultProxy", "proxy"]
