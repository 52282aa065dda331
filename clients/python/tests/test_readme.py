"""The README example, run exactly as written against a real gateway."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from device import Device

import pushgate

README = Path(__file__).resolve().parents[1] / "README.md"


def example() -> str:
    text = README.read_text()
    section = text.split("## Example", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_example_is_five_lines():
    assert len(example().strip().splitlines()) == 5


def test_readme_example_runs(gateway):
    with Device(gateway.device) as dev:
        env = dict(os.environ)
        env.update(PUSHGATE_ADDR=gateway.provider_address, PUSHGATE_APP_SECRET=gateway.secret, DEVICE_TOKEN=dev.token)
        # Import the same pushgate these tests use, installed or not.
        env["PYTHONPATH"] = os.pathsep.join([str(Path(pushgate.__file__).parents[1]), env.get("PYTHONPATH", "")])
        out = subprocess.run([sys.executable, "-c", example()], env=env, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        status, msg_id = out.stdout.split()
        n = dev.recv_notify()
        assert (status, int(msg_id), n.payload) == ("delivered", n.msg_id, b'{"m":"hi"}')
