"""The README's SDK example runs as written, against the real `hutch up`."""

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.controller import Controller

README = Path(__file__).parents[2] / "README.md"


def test_the_readme_sdk_example_runs(controller: Controller, project: str) -> None:
    [example] = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    env = {**os.environ, "HUTCH_URL": controller.url, "HUTCH_TOKEN": controller.token,
           "HUTCH_PROJECT": project}  # fmt: skip
    ran = subprocess.run(
        [sys.executable, "-c", example], env=env, capture_output=True, text=True, timeout=300,
        check=False,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines() == [
        "stdout hello",
        "stdout bye",
        "exit code 0",
        "0 b'prod\\n'",
        "stdout b'hi\\n'",
        "3",
    ]
