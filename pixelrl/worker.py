"""The env worker process: one env, served over a socket, that never outlives its learner.

`pixelrl.vector_env` starts each worker as a fresh interpreter (`python -c BOOT FD PID PATHS`):
it imports neither torch nor the learner's main module, only what its env needs. In order, it

1. asks the kernel to kill it when the learner dies (Linux: `prctl(PR_SET_PDEATHSIG,
   SIGKILL)`; elsewhere a thread that watches the parent's pid) and exits at once if the
   learner is already gone. From its first line on, a worker does not outlive a learner killed
   with SIGKILL, whether it is idle, importing, rendering or stepping;
2. ignores SIGINT and SIGTERM (it starts with both blocked, so none gets through first): a
   Ctrl-C or a scheduler's SIGTERM reaches the whole process group, and the learner alone
   decides when workers stop;
3. receives the env factory, builds the env, and serves requests until told to close or until
   its socket closes.

Messages in both directions are length-prefixed pickled tuples (`send_message`). The worker
reads its requests with `receive_message`; the learner takes in whatever bytes have arrived
(`MessageBuffer`) while it waits on every worker at once with one deadline, so a worker that
freezes half-way through an answer counts as hung, like one that never answers, and never
holds up the others.

This module imports only the standard library at the top: it runs before anything else in a
worker.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import struct
import sys
import threading
import time
import traceback

STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
_HEADER = struct.Struct("!Q")  # payload length in bytes
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_PARENT_POLL_S = 0.5  # where there is no PR_SET_PDEATHSIG

# What the learner runs in a fresh interpreter: argv = [FD, PARENT_PID, *sys.path].
BOOT = (
    "import sys; sys.path[:0] = sys.argv[3:]; from pixelrl.worker import main; "
    "main(int(sys.argv[1]), int(sys.argv[2]))"
)


# ---------------------------------------------------------------------------- messages
def send_message(sock: socket.socket, message: tuple) -> None:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(_HEADER.pack(len(payload)) + payload)


class MessageBuffer:
    """The bytes of a stream received so far, cut into messages as they complete."""

    def __init__(self):
        self.data = bytearray()

    def feed(self, chunk: bytes) -> None:
        self.data += chunk

    def pop(self) -> tuple | None:
        """The next complete message, or None while it is still arriving."""
        if len(self.data) < _HEADER.size:
            return None
        (size,) = _HEADER.unpack_from(self.data)
        end = _HEADER.size + size
        if len(self.data) < end:
            return None
        message = pickle.loads(self.data[_HEADER.size : end])
        del self.data[:end]
        return message

    def progress(self) -> str:
        """How much of the message under way has arrived ("" when none has)."""
        if not self.data:
            return ""
        if len(self.data) < _HEADER.size:
            return f"{len(self.data)} bytes of its header"
        (size,) = _HEADER.unpack_from(self.data)
        return f"{len(self.data) - _HEADER.size} of {size} bytes"


def receive_message(sock: socket.socket) -> tuple:
    """The next whole message, waiting as long as it takes (the worker's side: it has nothing
    else to do). EOFError when the other end has closed."""
    (size,) = _HEADER.unpack(_receive_exactly(sock, _HEADER.size))
    return pickle.loads(_receive_exactly(sock, size))


def _receive_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(min(size - len(data), 1 << 20))
        if not chunk:
            raise EOFError("the other end closed the socket")
        data += chunk
    return bytes(data)


def describe(err: BaseException) -> str:
    """The exception and the line it came from, for a warning in the learner."""
    last = traceback.extract_tb(err.__traceback__)[-1:] if err.__traceback__ else []
    where = f" (at {last[0].filename}:{last[0].lineno})" if last else ""
    return f"{type(err).__name__}: {err}{where}"


# ---------------------------------------------------------------------------- requests
class ResetAfterEpisodeFailed(Exception):
    """An episode ended and the env's reset raised: the step itself is real and is kept."""

    def __init__(self, step_answer: tuple, reason: str):
        super().__init__(reason)
        self.step_answer, self.reason = step_answer, reason


def run_command(env, command: str, data):
    """One request to an env; the same code serves worker processes and in-process envs.

    "step" resets in the same step an episode ends (same-step autoreset) and answers
    (obs to act on next, reward, terminated, truncated, is_success, final obs or None).
    """
    if command == "step":
        obs, reward, terminated, truncated, info = env.step(data)
        answer = (obs, float(reward), bool(terminated), bool(truncated))
        answer += (bool(info.get("is_success", False)),)
        if not (terminated or truncated):
            return (*answer, None)
        try:
            first_obs, _ = env.reset()
        except Exception as err:
            raise ResetAfterEpisodeFailed((None, *answer[1:], obs), describe(err)) from err
        return (first_obs, *answer[1:], obs)
    if command == "reset":
        return env.reset(seed=data)[0]
    if command == "get_state":
        return env.get_sim_state()
    if command == "set_state":
        env.reset()
        return env.set_sim_state(data)
    if command == "spaces":
        return env.observation_space, env.action_space
    raise ValueError(f"unknown worker command {command!r}")


def answer_to(env, command: str, data) -> tuple[str, object]:
    """(status, payload): ("ok", answer), ("reset_failed", (step answer, reason)) or
    ("error", what was raised)."""
    try:
        return "ok", run_command(env, command, data)
    except ResetAfterEpisodeFailed as failed:
        return "reset_failed", (failed.step_answer, failed.reason)
    except Exception as err:
        return "error", describe(err)


# ---------------------------------------------------------------------------- the process
def die_with_parent(parent_pid: int) -> None:
    """Be killed when the learner `parent_pid` dies; exit now if it already has."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    else:

        def watch():
            while os.getppid() == parent_pid:
                time.sleep(_PARENT_POLL_S)
            os._exit(0)

        threading.Thread(target=watch, daemon=True).start()
    if os.getppid() != parent_pid:  # the learner died before the request above took effect
        os._exit(0)


def main(fd: int, parent_pid: int) -> None:
    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    sock = socket.socket(fileno=fd)
    env = None
    try:
        try:
            _, env_fn = receive_message(sock)  # unpickling the factory imports the env
            env = env_fn()
        except Exception as err:
            send_message(sock, ("error", describe(err)))
            return
        while True:
            command, data = receive_message(sock)
            if command == "close":
                send_message(sock, ("ok", None))
                return
            send_message(sock, answer_to(env, command, data))
    except (EOFError, OSError):  # the learner is gone, or closed our socket
        return
    finally:
        if env is not None:
            env.close()
