"""A real Prometheus Pushgateway (Debian's prometheus-pushgateway) on 127.0.0.1, persistence off."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.request

from tests.peers.mail_server import free_port


class Pushgateway:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> Pushgateway:
        binary = shutil.which("prometheus-pushgateway")
        if binary is None:
            message = ("prometheus-pushgateway is not installed: apt-get install -y prometheus-pushgateway "
                       "(.ci/run does it)")
            if os.environ.get("CI"):
                raise RuntimeError(message)  # CI must run every test
            import pytest

            pytest.skip(message)  # a developer's machine without the Debian package: said, not silent
        self._proc = subprocess.Popen([binary, f"--web.listen-address=127.0.0.1:{self.port}", "--persistence.file="],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{self.url}/-/ready", timeout=1).read()
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("the pushgateway did not start")

    def metrics(self) -> str:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as response:
            return response.read().decode()

    def stop(self) -> None:
        self._proc.terminate()
        self._proc.wait(timeout=10)
