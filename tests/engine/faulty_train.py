"""``seglab`` with a fault injected, for the fault-tolerance tests:

    python faulty_train.py kill-worker STEP train ARGS...   rank 1 of torchrun's first attempt SIGKILLs
                                                            itself in step STEP (before its optimiser step)
    python faulty_train.py kill-in-save STEP train ARGS...  the process SIGKILLs itself halfway through
                                                            writing the checkpoint of step STEP
"""
import io
import os
import signal
import sys

import torch

from seglab import cli
from seglab.engine import distributed
from seglab.engine.train import Trainer


def kill_worker(step: int) -> None:
    real_step = Trainer.train_step

    def train_step(self, micro_batches):
        result = real_step(self, micro_batches)
        if distributed.rank() == 1 and not distributed.restarted() and self.step + 1 == step:
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    Trainer.train_step = train_step


def kill_in_save(step: int) -> None:
    real_save = torch.save

    def save(state, f, *args, **kwargs):
        if isinstance(state, dict) and state.get("step") == step:
            buffer = io.BytesIO()
            real_save(state, buffer)
            f.write(buffer.getvalue()[: buffer.tell() // 2])
            f.flush()
            os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(state, f, *args, **kwargs)

    torch.save = save


if __name__ == "__main__":
    kind, step = sys.argv[1], int(sys.argv[2])
    {"kill-worker": kill_worker, "kill-in-save": kill_in_save}[kind](step)
    cli.main(sys.argv[3:])
