"""Host processes by identity (pid + start time), so a recycled pid is never mistaken for ours."""

import asyncio
import os
import signal
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ProcessRef:
    pid: int
    start_ticks: int  # field 22 of /proc/PID/stat: stable for the process's life

    @staticmethod
    def of(pid: int) -> "ProcessRef | None":
        ticks = _start_ticks(pid)
        return ProcessRef(pid, ticks) if ticks is not None else None

    def alive(self) -> bool:
        return _start_ticks(self.pid) == self.start_ticks and not _is_zombie(self.pid)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the process if it is still this one (pidfd: no race with pid reuse)."""
        fd = self._pidfd()
        if fd is None:
            return
        try:
            signal.pidfd_send_signal(fd, sig)
        except ProcessLookupError:
            pass
        finally:
            os.close(fd)

    async def wait(self) -> None:
        """Return when the process has exited. A child of ours stays a zombie until its
        parent reaps it (its `Popen`, which keeps the exit status)."""
        fd = self._pidfd()
        if fd is None:
            return
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            if not done.done():
                done.set_result(None)

        loop.add_reader(fd, readable)
        try:
            await done
        finally:
            loop.remove_reader(fd)
            os.close(fd)

    def _pidfd(self) -> int | None:
        try:
            fd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            return None
        if _start_ticks(self.pid) != self.start_ticks:  # the pid was reused before we opened it
            os.close(fd)
            return None
        return fd


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm may contain spaces and parentheses: split after the last ')'
    return text[text.rindex(")") + 2 :].split()


def _start_ticks(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def _is_zombie(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is None or fields[0] in ("Z", "X")
