"""ipywidgets that make rtkit's concepts visible in JupyterLab, Notebook 7 and VS Code.

Every widget redraws at a bounded rate (never per message), stops when closed or when its
cell is re-run, and depends only on rtkit's public client, proxy and audit objects.
"""

from rtkit.widgets.base import LiveWidget, RedrawGate
from rtkit.widgets.cluster import ClusterView
from rtkit.widgets.connection import ConnectionPanel
from rtkit.widgets.dashboard import Dashboard, dashboard
from rtkit.widgets.faults import FaultPanel
from rtkit.widgets.messages import MessageLog
from rtkit.widgets.plot import LivePlot
from rtkit.widgets.presence import PresenceList
from rtkit.widgets.producer import Producer
from rtkit.widgets.publisher import Publisher
from rtkit.widgets.report import DeliveryReport
from rtkit.widgets.token import TokenHistory, TokenInspector

__all__ = [
    "ClusterView",
    "ConnectionPanel",
    "Dashboard",
    "DeliveryReport",
    "FaultPanel",
    "LivePlot",
    "LiveWidget",
    "MessageLog",
    "PresenceList",
    "Producer",
    "Publisher",
    "RedrawGate",
    "TokenHistory",
    "TokenInspector",
    "dashboard",
]
