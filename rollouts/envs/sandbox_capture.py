"""Process capture for the sandbox: spawn, feed stdin, read capped output, kill at the deadline (docs/sandbox.md)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Awaitable, Callable

if TYPE_CHECKING:
    from rollouts.envs.sandbox import SandboxLimits

READ_CHUNK = 1 << 16


async def capture(argv: list[str], spawn: dict, stdin: bytes, limits: SandboxLimits, kill: Callable[[int], None],
                  child_only_fd: int | None = None, prepare: Callable[..., Awaitable[None]] | None = None):
    """Spawn ``argv``, feed stdin, read stdout and stderr incrementally up to the cap, and kill at the deadline
    or on overflow. Returns (process, why the host killed it or None, stdout, stderr, wall seconds).

    The output pipes are ours, not asyncio's: asyncio's ``Process.wait()`` also waits for its pipes to reach
    EOF, which never comes for a stream we stopped reading at the cap. ``child_only_fd`` is closed here once
    the child holds it. ``prepare(process)`` is awaited before stdin is fed; if it raises, stdin is closed
    unfed and its error raised once the process has ended."""
    loop = asyncio.get_running_loop()
    start = time.monotonic()
    try:
        (out_r, out_w), (err_r, err_w) = os.pipe(), os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.PIPE, stdout=out_w,
                                                        stderr=err_w, start_new_session=True, **spawn)
        except BaseException:
            os.close(out_r), os.close(err_r)
            raise
        finally:
            os.close(out_w), os.close(err_w)
    finally:
        if child_only_fd is not None:
            os.close(child_only_fd)
    streams = []
    for fd in (out_r, err_r):
        reader = asyncio.StreamReader(limit=READ_CHUNK)
        pipe = open(fd, "rb", buffering=0)  # noqa: SIM115 -- the transport owns and closes it
        transport, _ = await loop.connect_read_pipe(lambda r=reader: asyncio.StreamReaderProtocol(r), pipe)
        streams.append((reader, transport))
    feeder = asyncio.create_task(_feed(proc.stdin, stdin, prepare and prepare(proc)))
    out, err = bytearray(), bytearray()
    pumps = {asyncio.create_task(_pump(reader, buf, limits.max_output_bytes))
             for (reader, _), buf in zip(streams, (out, err))}
    reason, pending = None, pumps
    while pending:
        remaining = start + limits.wall_seconds - time.monotonic()
        done, pending = await asyncio.wait(pending, timeout=max(remaining, 0), return_when=asyncio.FIRST_COMPLETED)
        if not done:
            reason = "timeout"
        elif any(task.result() for task in done):
            reason = "output_limit"
        if reason:
            kill(proc.pid)
            break
    if pending:  # what was written before the kill; an escaped writer (insecure mode only) gets a second
        await asyncio.wait(pending, timeout=1.0)
    for task in (*pending, feeder):
        task.cancel()
    await asyncio.gather(*pending, feeder, return_exceptions=True)
    for _, transport in streams:
        transport.close()
    proc.stdin.close()
    await proc.wait()
    if feeder.done() and not feeder.cancelled() and feeder.exception():
        raise feeder.exception()
    return proc, reason, bytes(out), bytes(err), time.monotonic() - start


async def _feed(writer: asyncio.StreamWriter, data: bytes, before: Awaitable[None] | None = None) -> None:
    if before is not None:
        try:
            await before
        except BaseException:
            writer.close()  # the child reads EOF instead of what it waits for, and ends
            raise
    # a program that exits without reading its stdin closes the pipe under us: that is not an error
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        writer.write(data)
        await writer.drain()
        writer.close()


async def _pump(reader: asyncio.StreamReader, buf: bytearray, cap: int) -> bool:
    """Append what ``reader`` yields to ``buf`` up to ``cap`` bytes; True as soon as there was more."""
    while chunk := await reader.read(READ_CHUNK):
        room = cap - len(buf)
        buf += chunk[:room]
        if len(chunk) > room:
            return True
    return False


def kill_namespace(unshare_pid: int) -> None:
    """SIGKILL the namespace's init (a child of unshare): the kernel then kills all its processes, and unshare
    exits only after reaping it, so the host sees no survivor once ``proc.wait()`` returns."""
    for child in children_of(unshare_pid):
        try:
            pidfd = os.pidfd_open(child)
        except ProcessLookupError:
            continue
        try:
            # checked after opening the pidfd: a recycled pid can no longer be mistaken for the init
            if _parent_pid(child) == unshare_pid:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                return
        except OSError:
            pass
        finally:
            os.close(pidfd)
    # no init yet (or gone already): killing unshare takes the init down through --kill-child
    with contextlib.suppress(ProcessLookupError):
        os.kill(unshare_pid, signal.SIGKILL)


def children_of(pid: int) -> list[int]:
    """The children of process ``pid`` (of its main thread), none if it is gone."""
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _parent_pid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def kill_group(pid: int) -> None:
    """SIGKILL the process group ``pid`` leads (insecure mode), if it is still there."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
