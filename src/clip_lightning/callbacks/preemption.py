"""Save ``last.ckpt`` when the job is told to stop: SIGTERM (preemption, ``kill``) or Ctrl-C
(SIGINT). The task then exits with 128 + the signal: 143 or 130."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.utils.data.dataloader import _BaseDataLoaderIter

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_SIGNAL_NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "Ctrl-C (SIGINT)"}
# the frame of torch's DataLoader iterator fetching a batch (its own or its workers' data)
_FETCH_CODE = _BaseDataLoaderIter.__next__.__code__
RECHECK_S = 0.5


class PreemptionCheckpoint(L.Callback):
    """On SIGTERM or Ctrl-C, stop training and write ``<dirpath>/last.ckpt``.

    Lightning's signal connector turns SIGTERM (what SLURM, Kubernetes and ``kill`` send before
    a hard kill) into a :class:`SIGTERMException` raised after the current batch, but outside
    SLURM's auto-requeue nothing is saved, so up to an epoch of work is lost; Ctrl-C raises
    ``KeyboardInterrupt`` wherever the code is (possibly halfway through an optimizer step)
    and saves nothing either. During training this callback handles both signals alike:

    * the stop waits for the next batch boundary, so the saved state is consistent; but while
      the loop waits for data (a stalled loader, a shard that never yields) it stops at once:
      no optimizer step is in progress there, and the loader may never return. A signal that
      arrives elsewhere looks again every :data:`RECHECK_S` seconds (SIGALRM), in case the
      loop went on into a fetch that never ends;
    * the full training state (mid-epoch position included) is saved to ``last.ckpt``, and
      ``ckpt_path=last`` resumes from it;
    * the exception carries the exit status 128 + the signal (143 for SIGTERM, 130 for
      Ctrl-C), which the task wrapper exits with, so the job does not look finished.

    A second Ctrl-C stops at once without saving (``last.ckpt`` stays the last good one).
    Other exceptions (a NaN loss, a bug) save nothing, so ``last.ckpt`` stays the last good
    checkpoint.
    """

    def __init__(self, dirpath: str, filename: str = "last.ckpt"):
        self.path = Path(dirpath) / filename
        self.received: signal.Signals | None = None
        self._trainer: L.Trainer | None = None
        self._lightning_sigterm: Any = None
        self._armed = False
        self._alarm_handler: Any = None  # SIGALRM's handler before ours

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning has just installed its SIGTERM handler; its teardown restores every
        # handler it found, ours included
        self.received, self._trainer = None, trainer
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may set signal handlers
        self._lightning_sigterm = signal.getsignal(signal.SIGTERM)
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.received is not None:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, save nothing
        self.received = signal.Signals(signum)
        if signum == signal.SIGTERM and callable(self._lightning_sigterm):
            self._lightning_sigterm(signum, frame)  # Lightning's flag, its DDP and SLURM handling
        elif self._trainer is not None:
            # the flag Lightning's loops check after each batch (its own SIGTERM handler sets it)
            self._trainer._signal_connector.received_sigterm = True
        if _waiting_for_data(frame):
            raise SIGTERMException
        if not self._armed:  # look again until the stop happens
            self._armed, self._alarm_handler = True, signal.signal(signal.SIGALRM, self._on_alarm)
            signal.setitimer(signal.ITIMER_REAL, RECHECK_S, RECHECK_S)

    def _on_alarm(self, signum: int, frame: FrameType | None) -> None:
        if _waiting_for_data(frame):
            raise SIGTERMException

    def _disarm(self) -> None:
        if self._armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._alarm_handler)
            self._armed = False

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._disarm()  # a signal during the last batch: training ended on its own

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._disarm()
        if not isinstance(exception, SIGTERMException) or trainer.sanity_checking:
            return
        received = self.received or signal.SIGTERM
        exception.code = 128 + received  # the exit status: the signal, as a shell reports it
        trainer.save_checkpoint(self.path)
        if trainer.is_global_zero:
            log.warning(
                "%s at step %d: saved %s; resume with ckpt_path=last",
                _SIGNAL_NAMES[received],
                trainer.global_step,
                self.path,
            )


def _waiting_for_data(frame: FrameType | None) -> bool:
    """Whether the interrupted code is inside a DataLoader's ``__next__``."""
    while frame is not None:
        if frame.f_code is _FETCH_CODE:
            return True
        frame = frame.f_back
    return False
