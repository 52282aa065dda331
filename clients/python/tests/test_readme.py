"""The README examples, run exactly as written against a real gateway."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from device import Device

import pushgate

README = Path(__file__).resolve().parents[1] / "README.md"


def example(heading: str = "## Example") -> str:
    text = README.read_text()
    section = text.split(heading + "\n", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def run(code: str, gateway, token: str) -> str:
    env = dict(os.environ)
    env.update(PUSHGATE_ADDR=gateway.provider_address, PUSHGATE_APP_SECRET=gateway.secret, DEVICE_TOKEN=token)
    # Import the same pushgate these tests use, installed or not.
    env["PYTHONPATH"] = os.pathsep.join([str(Path(pushgate.__file__).parents[1]), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_example_is_five_lines():
    assert len(example().strip().splitlines()) == 5


def test_readme_example_runs(gateway):
    with Device(gateway.device) as dev:
        status, msg_id = run(example(), gateway, dev.token).split()
        n = dev.recv_notify()
        assert (status, int(msg_id), n.payload) == ("delivered", n.msg_id, b'{"m":"hi"}')


def test_readme_topics_example_runs(gateway):
    with Device(gateway.device) as dev:
        managed, pushed, stats = run(example("## Topics"), gateway, dev.token).splitlines()
        assert managed == "['ok']"
        status, msg_id = pushed.split()
        assert status == "queued" and int(msg_id) & (1 << 62)
        assert stats.startswith("TopicStats(known=True, sent=")
        # No order is promised between topics: the topic message and the broadcast, either way.
        got = {n.topic: n for n in (dev.recv_topic_notify(), dev.recv_topic_notify())}
        assert sorted(got) == ["news", "~all"]
        assert (got["news"].msg_id, got["news"].payload) == (int(msg_id), b'{"m":"extra"}')
        assert got["~all"].payload == b'{"m":"v2 is out"}'
        dev.expect_silence(0.3)
