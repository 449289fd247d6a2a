"""``torchrun`` for sweep trials (``python -m dlhw.tracking.torchrun`` takes its arguments): stopped, it ends as
killed by the signal once its workers stopped, where torchrun exits 1, which ``wandb agent`` counts as a failure."""

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.run import main

from dlhw.core.events import end_by_signal

if __name__ == "__main__":
    try:
        main()
    except SignalException as exc:
        end_by_signal(exc.sigval)
