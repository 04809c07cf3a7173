"""Run `tamer train vqgan` and SIGKILL the process right after the step given in TAMER_TEST_KILL_AT.

Used by the resume test: nothing is flushed or cleaned up, as when a machine dies mid-run.
"""

import os
import signal
import sys

from tamer.cli import main
from tamer.train.trainer import Trainer

kill_at = int(os.environ["TAMER_TEST_KILL_AT"])
after_step = Trainer._after_step


def after_step_then_die(self, *args, **kwargs):
    after_step(self, *args, **kwargs)
    if self.step == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)


Trainer._after_step = after_step_then_die
sys.exit(main(sys.argv[1:]))
