"""dcl.progress: progress bars on a terminal only, unless $DCL_PROGRESS says otherwise."""

import io
import subprocess
import sys

import pytest

from dcl import progress


@pytest.mark.parametrize(
    "setting, terminal, shown",
    [(None, True, True), (None, False, False), ("1", False, True), ("0", True, False), ("off", True, False)],
)
def test_bars_are_shown_on_a_terminal_or_when_asked(monkeypatch, setting, terminal, shown):
    stderr = io.StringIO()
    stderr.isatty = lambda: terminal
    monkeypatch.setattr(sys, "stderr", stderr)
    if setting is None:
        monkeypatch.delenv(progress.ENV_PROGRESS, raising=False)
    else:
        monkeypatch.setenv(progress.ENV_PROGRESS, setting)
    assert progress.wanted() is shown
    bar = progress.progress_bar(3, "test", delay=0)
    assert bar.disable is not shown
    for _ in range(3):
        bar.update()
    bar.close()
    assert ("test: 100%" in stderr.getvalue()) is shown
    assert progress.progress_bar(3, "test", enabled=False).disable


def test_a_long_step_shows_its_progress_in_a_log_when_asked(tmp_path):
    """DCL_PROGRESS=1: a step longer than the 2 s delay reports its progress to a non-terminal
    stderr (a Snakemake log; here a line per 0.5 s instead of 10 s); by default nothing."""
    code = (
        "import time, dcl.progress as p\n"
        "bar = p.progress_bar(3, 'cityscapes-to-coco val', 'image', iterable=range(3), mininterval=0.5)\n"
        "for _ in bar: time.sleep(1.1)\n"
    )
    for setting, shown in (("1", True), ("", False)):
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env={"DCL_PROGRESS": setting}
        )
        assert ("cityscapes-to-coco val" in done.stderr) is shown, done.stderr
