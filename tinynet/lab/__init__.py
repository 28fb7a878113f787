"""The learning lab: tools that answer a learner's questions with running code.

* :mod:`tinynet.lab.explain`: one backward pass explained, module by module, with its numbers.
* :mod:`tinynet.lab.bugs`: a catalogue of realistic backward-pass bugs, and what catches each.
* :mod:`tinynet.lab.flow`: gradient flow during training (norms, update ratios, dead ReLUs).
"""

from . import bugs, explain, flow
from .explain import explain_backward
from .flow import FlowMonitor

__all__ = ["bugs", "explain", "explain_backward", "flow", "FlowMonitor"]
