"""Test helper: runs the real pushgate binary on port 0 and parses what it prints.

``$PUSHGATE_BIN`` names the binary (default ``<repo>/target/debug/pushgate``,
what ``cargo test`` builds). Every listener is on 127.0.0.1 port 0; the
addresses, the demo app's secret and the admin address come from stdout.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import List, Optional, Tuple

REPO = Path(__file__).resolve().parents[3]
START_TIMEOUT = 15.0


def binary() -> str:
    return os.environ.get("PUSHGATE_BIN") or str(REPO / "target" / "debug" / "pushgate")


def _addr(s: str) -> Tuple[str, int]:
    host, _, port = s.rpartition(":")
    return host, int(port)


class Gateway:
    """One running gateway process."""

    def __init__(
        self,
        data_dir: Path,
        store: Optional[str] = "memory",
        config: Optional[Path] = None,
        provider_listen: str = "127.0.0.1:0",
        device_listen: str = "127.0.0.1:0",
    ) -> None:
        cmd = [binary(), "serve"]
        if config is not None:
            cmd += ["--config", str(config)]
        cmd += [
            "--device-listen", device_listen,
            "--provider-listen", provider_listen,
            "--admin-listen", "127.0.0.1:0",
            "--http-listen", "127.0.0.1:0",  # not the default 7703: two gateways (or a dev one) at once
            "--data-dir", str(data_dir),
        ]
        if store is not None:
            cmd += ["--store", store]
        data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = data_dir / "gateway.log"
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._log, stdin=subprocess.DEVNULL)
        self.lines: "queue.Queue[Optional[str]]" = queue.Queue()
        self.stdout: List[str] = []
        threading.Thread(target=self._pump, daemon=True).start()
        self.device: Tuple[str, int] = ("", 0)
        self.provider: Tuple[str, int] = ("", 0)
        self.secret = ""
        self.admin = ""
        try:
            self._parse_banner()
        except BaseException:
            self.kill()
            raise

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.put(raw.decode("utf-8", "replace").rstrip("\n"))
        self.lines.put(None)

    def _parse_banner(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not self.admin:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError("gateway banner incomplete after %.0f s: %r" % (START_TIMEOUT, self.stdout))
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError("gateway exited (%s) before its banner: %r\n%s"
                                   % (self.proc.wait(5), self.stdout, self.log_path.read_text()))
            self.stdout.append(line)
            m = re.search(r"pushgate: devices on (\S+), providers on (\S+)", line)
            if m:
                self.device, self.provider = _addr(m.group(1)), _addr(m.group(2))
            m = re.search(r"with secret (\S+)", line)
            if m:
                self.secret = m.group(1)
            m = re.search(r"pushgate: admin on http://(\S+)/metrics", line)
            if m:
                self.admin = m.group(1)
        assert self.device[1] and self.provider[1], self.stdout

    @property
    def provider_address(self) -> str:
        return "%s:%d" % self.provider

    def sigterm(self) -> None:
        """Starts a drain: GOAWAY shutdown to every connection, then exit."""
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 20.0) -> int:
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.sigterm()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self.kill()
