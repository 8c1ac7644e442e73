"""store/reading.py: blob files are read without access-time updates (an inode write
the event loop would otherwise wait for), falling back where O_NOATIME is refused."""
import os
import time

import pytest

from edgecache.store import reading


def _atime_after_read(path, opener) -> float:
    os.utime(path, (1_000_000, os.stat(path).st_mtime))   # atime < mtime: relatime updates it
    fd = opener(path)
    try:
        os.read(fd, 10)
    finally:
        os.close(fd)
    return os.stat(path).st_atime


@pytest.mark.skipif(not hasattr(os, "O_NOATIME"), reason="no O_NOATIME here")
def test_a_read_leaves_the_access_time_alone(tmp_path):
    p = tmp_path / "blob"
    p.write_bytes(b"x" * 4096)
    if _atime_after_read(p, lambda q: os.open(q, os.O_RDONLY)) == 1_000_000:
        pytest.skip(f"{tmp_path} is mounted without access times: nothing to tell apart")
    assert _atime_after_read(p, reading.open_for_reading) == 1_000_000


@pytest.mark.skipif(not hasattr(os, "O_NOATIME"), reason="no O_NOATIME here")
def test_a_file_of_another_owner_is_opened_plainly():
    """O_NOATIME on another owner's file without CAP_FOWNER is EPERM: then a plain open.
    In a child that is nobody (when the tests run as root), on root's /etc/passwd."""
    pid = os.fork()
    if pid == 0:                                   # the child: only os calls, then _exit
        code = 3
        try:
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            fd = reading.open_for_reading("/etc/passwd")
            code = 0 if os.read(fd, 5) == b"root:" else 1
        except PermissionError:
            code = 2
        finally:
            os._exit(code)
    for _ in range(300):                          # a stuck child fails the test, not the run
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the child did not end in 30 s")
    # 1: wrong bytes, 2: the EPERM was not caught, 3: anything else (e.g. no uid 65534 here)
    assert os.waitstatus_to_exitcode(status) == 0
