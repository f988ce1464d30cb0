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
    "raise, then constructor raises" (the first replacement cannot even be built);
    "hang on get_state" (the first get_state after at_step steps never answers);
    "reset after the episode raises" (the reset that follows the at_step-th step, the last of
    an episode, raises); "hang always" (every instance hangs at its at_step-th step);
    "freeze mid-answer" (the worker sends half of its at_step-th step's answer, then stops)."""

    def __init__(self, cfg: EnvConfig, fault: str, at_step: int, marker: str):
        self.fault, self.at_step, self.marker = fault, at_step, Path(marker)
        replacement = fault == "raise, then constructor raises" and self.marker.exists()
        if replacement and self._first_to_fail(self.marker.with_suffix(".init")):
            raise OSError("simulated failure while building the replacement env")
        super().__init__(cfg)
        self.steps = 0
        if fault == "freeze mid-answer":
            self._freeze_the_answer_of_step(at_step)

    def _freeze_the_answer_of_step(self, at_step: int) -> None:
        """In the worker process: its at_step-th step answer stops half-way (once)."""
        from pixelrl import worker

        send = worker.send_message

        def send_half_then_stop(sock, message):
            if self.steps == at_step and self._first_to_fail(self.marker):
                payload = worker.pickle.dumps(message)
                sock.sendall(worker._HEADER.pack(len(payload)) + payload[: len(payload) // 2])
                time.sleep(3600)
            send(sock, message)

        worker.send_message = send_half_then_stop

    def step(self, action):
        self.steps += 1
        if self.fault == "hang always" and self.steps == self.at_step:
            time.sleep(3600)
        passive = ("hang on get_state", "reset after the episode raises", "freeze mid-answer")
        failing = self.steps == self.at_step and self.fault not in passive
        if failing and self._first_to_fail(self.marker):
            if self.fault == "hang":
                time.sleep(3600)
            if self.fault.startswith("exit"):
                os.kill(os.getpid(), signal.SIGKILL)
            if self.fault.startswith("raise"):
                raise FloatingPointError("simulated MuJoCo instability: NaN in qacc")
        return super().step(action)

    def reset(self, **kwargs):
        replacement = self.fault == "exit, then reset raises" and self.marker.exists()
        if replacement and self._first_to_fail(self.marker.with_suffix(".reset")):
            raise RuntimeError("simulated failure in the restarted env's reset")
        after_episode = self.fault == "reset after the episode raises" and self.steps
        if after_episode and self.steps >= self.at_step and self._first_to_fail(self.marker):
            raise RuntimeError("simulated failure in the reset after an episode")
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
