from __future__ import annotations

from tests.daemon_proc import DaemonProcess


def test_daemon_answers_status_and_stops_cleanly(daemon: DaemonProcess) -> None:
    with daemon.client() as c:
        status = c.daemon_status()
    assert status.pid == daemon.pid
    assert status.socket_path == str(daemon.socket)
    assert daemon.stop() == 0
    assert not daemon.socket.exists()
