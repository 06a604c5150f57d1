"""Put the Smart Turn v3.2 end-of-turn model (smart-turn-v3.2-cpu.onnx) into a folder without the
model hub: it is taken from the pipecat-ai 1.14.0 wheel on the package index (BSD-2), which carries
the same file as the Hugging Face repo pipecat-ai/smart-turn-v3 (checked by its SHA-256). Only the
wheel is downloaded, none of pipecat's dependencies.

    python scripts/fetch_turn_model.py FOLDER

Then set models.turn.source to FOLDER in config.yaml.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "pipecat-ai==1.14.0"
MEMBER = "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx"
SHA256 = "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f"


def fetch(folder: Path) -> Path:
    target = folder / Path(MEMBER).name
    with tempfile.TemporaryDirectory() as scratch:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", WHEEL, "-d", scratch],
                       check=True)
        wheel, = Path(scratch).glob("pipecat_ai-*.whl")
        data = zipfile.ZipFile(wheel).read(MEMBER)
    if hashlib.sha256(data).hexdigest() != SHA256:
        raise SystemExit(f"{MEMBER} in {wheel.name} is not the expected file (SHA-256 differs)")
    folder.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    partial.write_bytes(data)
    partial.replace(target)
    return target


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    print(fetch(Path(sys.argv[1])))
