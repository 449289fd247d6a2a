"""``torchrun`` for sweep trials: ``python -m dlhw.tracking.torchrun`` takes torchrun's arguments.

A stopped torchrun raises ``SignalException`` and exits 1 once its workers stopped, which
``wandb agent`` counts as a failed run. This one ends as killed by the signal instead, after
torchrun stopped its workers (each writes its checkpoint and ends by the same signal).
"""

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.run import main

from dlhw.core.session import end_by_signal

if __name__ == "__main__":
    try:
        main()
    except SignalException as exc:
        end_by_signal(exc.sigval)
