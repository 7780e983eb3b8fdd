"""A process that owns a real RenderPool, for the tests of what becomes of render processes when
their owner is stopped or killed (tests/healer/test_render_pool.py): run from the repository as
`python -m tests.healer.render_harness MODE SCRATCH_DIR`.

Its first render is asked for from a thread that ends right after, so its render process was
spawned by a thread that is gone (what PR_SET_PDEATHSIG, bound to that thread, got wrong). Then:
- `killed`: prints `ready` and waits to be killed;
- `sigterm`: starts a render that runs for minutes, prints `rendering`; on SIGTERM shuts the pool
  down under it, prints how that render ended (`class: message`) and exits 0.

Only the standard library at the top: a render process imports this module again (it is the
main module of the process that spawned it), and has no use for the rest.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

# A test that never signals must not leave the harness behind.
WAIT_SECONDS = 60.0


def main(mode: str, scratch: Path) -> int:
    from fulfilment.errors import StepError
    from fulfilment.render import PosterInputs
    from healer.render.pool import STOP_SECONDS, RenderPool
    from poster_assets import bundled_assets_dir
    from tests.fakes.render_inputs import endless_title, tiny_photo, tiny_wav

    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    pool = RenderPool(bundled_assets_dir(), 1, scratch, timeout_seconds=WAIT_SECONDS * 2)
    audio = tiny_wav()
    first = threading.Thread(target=pool.waveform_png, args=(audio, "voice.wav"))
    first.start()
    first.join()
    if mode == "killed":
        print("ready", flush=True)
        stopping.wait(WAIT_SECONDS)
        return 1

    ended: list[str] = []

    def render_for_minutes() -> None:
        inputs = PosterInputs("a4-portrait", endless_title(), "", tiny_photo(), None, audio)
        try:
            pool.render(inputs)
            ended.append("rendered")
        except StepError as error:
            ended.append(f"{error.error_class}: {error.message}")

    rendering = threading.Thread(target=render_for_minutes)
    rendering.start()
    print("rendering", flush=True)
    stopping.wait(WAIT_SECONDS)
    pool.shutdown()
    rendering.join(STOP_SECONDS)
    print(ended[0] if ended else "still rendering", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], Path(sys.argv[2])))
