"""Run by tests/test_waiting.py on 2 CPU processes whose process group times out after 2 seconds: the main process
works alone for 5 seconds twice. The first time the other waits with `trl_sso.runtime.wait_for_main`, the second time
in a plain barrier (the control, which must time out). Each process writes what happened to OUT/rank<i>.json."""

import json
import sys
import time
from datetime import timedelta
from pathlib import Path

from accelerate import PartialState

from trl_sso.runtime import wait_for_main


def main(out: Path) -> None:
    state = PartialState(cpu=True, timeout=timedelta(seconds=2))
    result = {}
    done = out / "done"
    if state.is_main_process:
        time.sleep(5)
        done.write_text("finished")
    wait_for_main(state, done, poll_seconds=0.5)
    result["wait_for_main"] = "passed"
    try:
        if state.is_main_process:
            time.sleep(5)
        state.wait_for_everyone()
        result["barrier"] = "passed"
    except Exception as error:  # the control: a barrier held past the timeout fails
        result["barrier"] = f"failed: {type(error).__name__}"
    (out / f"rank{state.process_index}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
