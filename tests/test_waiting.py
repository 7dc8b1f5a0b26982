"""While the main process works alone (a round's evaluation in `iterate`, the merge of generated batches), the other
processes wait without a collective, so a long evaluation cannot outlast the process group's timeout: 2 CPU processes
with a 2-second timeout, the main process working for 5 (tests/wait_on_cpu.py)."""

import json
import subprocess
from pathlib import Path

import pytest
from conftest import accelerate_launch


HERE = Path(__file__).resolve().parent


@pytest.mark.slow  # end-to-end (several processes, or whole command runs): outside the fast subset
def test_the_others_wait_past_the_process_groups_timeout(tmp_path):
    command = [*accelerate_launch(2), str(HERE / "wait_on_cpu.py"), str(tmp_path)]
    subprocess.run(command, capture_output=True, text=True, timeout=300)  # the control makes the launch fail
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert all(result["wait_for_main"] == "passed" for result in results)
    # the control: the other process, held in a plain barrier, timed out
    assert results[1]["barrier"].startswith("failed"), results
