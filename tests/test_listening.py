"""The listening socket the commands hand to uvicorn."""

from __future__ import annotations

import socket

import pytest

from apis.listening import ListenError, bind_listener


def test_a_client_connecting_before_the_server_runs_is_queued_not_refused() -> None:
    # The commands print their address right after binding; a client may connect before
    # uvicorn serves (CI: 'apis emulator --port 0' refused the test's first request).
    sock = bind_listener("127.0.0.1", 0)
    try:
        port = sock.getsockname()[1]
        assert port != 0
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    finally:
        sock.close()


def test_a_port_already_listened_on_is_one_clear_error() -> None:
    first = bind_listener("127.0.0.1", 0)
    try:
        port = first.getsockname()[1]
        with pytest.raises(ListenError, match=rf"cannot listen on 127\.0\.0\.1:{port}"):
            bind_listener("127.0.0.1", port)
    finally:
        first.close()
