"""``import kerasft``: every public name is there, and the console script defers them."""

from __future__ import annotations

import os
import subprocess
import sys

import kerasft

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_public_name_is_importable():
    missing = [name for name in kerasft.__all__ if not hasattr(kerasft, name)]
    assert missing == []
    assert not kerasft._COMMAND_LINE


def test_console_script_loads_the_library_on_first_use(tmp_path):
    script = tmp_path / "kerasft"  # the console script's name is what defers the library
    script.write_text(
        "import sys\n"
        "import kerasft\n"
        "assert kerasft._COMMAND_LINE and 'tensorflow' not in sys.modules\n"
        "assert callable(kerasft.finetune) and 'tensorflow' in sys.modules\n"
        "missing = [n for n in kerasft.__all__ if not hasattr(kerasft, n)]\n"
        "assert missing == [], missing\n"
        "from kerasft import find_head, peft\n"
        "print('ok')\n",
        encoding="utf-8",
    )
    env = {**os.environ, "PYTHONPATH": ROOT}
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok"
