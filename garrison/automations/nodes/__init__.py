"""Node state (Happen): events, patterns and views (:mod:`.events`), the caller half that reads and sets a
node's state from outside the worker (:mod:`.state`), and the system the engine runs (:mod:`.system`)."""

from garrison.automations.nodes.events import Delivery, NodeEvent, NodeSnapshot, View, Views
from garrison.automations.nodes.state import NodeState
from garrison.automations.nodes.system import Node, NodeContext, Nodes

__all__ = ["Delivery", "Node", "NodeContext", "NodeEvent", "NodeSnapshot", "NodeState", "Nodes", "View", "Views"]
