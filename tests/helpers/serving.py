"""The serving tests' in-process server: a uvicorn Server run in a daemon thread on a loopback port."""

import threading
import time

import requests


def start_server(server, load_timeout: float = 120) -> str:
    """Run a uvicorn ``server`` (configured with port 0) in a daemon thread; returns its base URL
    once it listens, and once ``/health`` answers 200 unless ``load_timeout`` is None."""
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not server.started:
        assert time.time() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    server.thread = thread
    url = "http://127.0.0.1:%d" % server.servers[0].sockets[0].getsockname()[1]
    if load_timeout is not None:
        deadline = time.time() + load_timeout
        while requests.get(url + "/health").status_code != 200:
            assert time.time() < deadline, "the model did not load"
            time.sleep(0.2)
    return url


def stop_server(server) -> None:
    """Ask the server started by ``start_server`` to exit and wait for its thread."""
    server.should_exit = True
    server.thread.join(timeout=30)
