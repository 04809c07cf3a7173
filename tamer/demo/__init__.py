"""``tamer demo``: the whole method on the built-in dataset, on a CPU, with no download (see :mod:`.run`)."""

from tamer.demo.run import QUICK, DemoPlan, run_demo

__all__ = ["DemoPlan", "QUICK", "run_demo"]
