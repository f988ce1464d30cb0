"""A Fetch env that fails once on purpose, for the worker-failure tests.

It lives in its own small module so that spawned workers can import it (without pytest or
torch). The failure happens at the given step of the env's life, once per marker file: a
restarted worker finds the marker and runs normally.
"""

import os
import signal
import time
from pathlib import Path

from pixelrl.config import EnvConfig
from pixelrl.envs import FetchObservation


class FailingFetch(FetchObservation):
    """fault: "raise" (an exception in step), "hang" (never answers), "exit" (dies);
    "exit, then reset raises" (dies, and the first reset of its replacement raises);
    "hang on get_state" (the first get_state after at_step steps never answers)."""

    def __init__(self, cfg: EnvConfig, fault: str, at_step: int, marker: str):
        super().__init__(cfg)
        self.fault, self.at_step, self.marker = fault, at_step, Path(marker)
        self.steps = 0

    def step(self, action):
        self.steps += 1
        failing = self.steps == self.at_step and self.fault != "hang on get_state"
        if failing and self._first_to_fail(self.marker):
            if self.fault == "raise":
                raise FloatingPointError("simulated MuJoCo instability: NaN in qacc")
            if self.fault == "hang":
                time.sleep(3600)
            if self.fault.startswith("exit"):
                os.kill(os.getpid(), signal.SIGKILL)
        return super().step(action)

    def reset(self, **kwargs):
        replacement = self.fault == "exit, then reset raises" and self.marker.exists()
        if replacement and self._first_to_fail(self.marker.with_suffix(".reset")):
            raise RuntimeError("simulated failure in the restarted env's reset")
        return super().reset(**kwargs)

    def get_sim_state(self):
        saving = self.fault == "hang on get_state" and self.steps >= self.at_step
        if saving and self._first_to_fail(self.marker):
            time.sleep(3600)
        return super().get_sim_state()

    @staticmethod
    def _first_to_fail(marker: Path) -> bool:
        """Creates the marker atomically: of envs failing at the same step, one wins."""
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return False
        return True
