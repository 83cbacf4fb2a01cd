"""jaxsurg.progress: plain lines on non-terminals, tqdm on terminals, silence off process 0."""

import io

import jax
import pytest

from jaxsurg import progress


class _Clock:
    """A stand-in for ``time.monotonic`` that moves only when told."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = _Clock()
    monkeypatch.setattr(progress.time, "monotonic", c)
    return c


def _no_terminal_codes(text):
    assert "\r" not in text and "\x1b" not in text, repr(text)


def test_plain_lines_to_a_log_stream(clock):
    out = io.StringIO()
    with progress.bar(total=300, desc="train", unit="step", file=out, interval=30) as b:
        assert isinstance(b, progress.PlainBar)
        for i in range(300):
            clock.now += 0.25  # 4 step/s: a line every 120 steps (30 s)
            if i == 119:
                b.set_postfix({"loss": 0.41})
            b.update(1)
    text = out.getvalue()
    _no_terminal_codes(text)
    assert text.splitlines() == [
        "train: 120/300 steps (40%), 4 step/s, ETA 45s, loss=0.41",
        "train: 240/300 steps (80%), 4 step/s, ETA 15s, loss=0.41",
        "train: 300/300 steps (100%), 4 step/s, 1m15s elapsed, loss=0.41",
    ]
    assert text.endswith("\n")


def test_at_most_one_line_per_interval_and_a_final_line(clock):
    out = io.StringIO()
    b = progress.bar(total=100, desc="eval", unit="frame", file=out, interval=30)
    for _ in range(40):
        clock.now += 1.0
        b.update(1)
    b.set_postfix(loss="0.5")
    assert out.getvalue().splitlines() == ["eval: 30/100 frames (30%), 1 frame/s, ETA 1m10s"]
    b.close()
    b.close()  # a second close prints nothing more
    lines = out.getvalue().splitlines()
    assert lines[1:] == ["eval: 40/100 frames (40%), 1 frame/s, 40s elapsed, loss=0.5"]


def test_resumed_bar_counts_only_new_steps_in_its_rate(clock):
    out = io.StringIO()
    b = progress.bar(total=300, initial=200, desc="train", unit="step", file=out)
    for _ in range(50):
        clock.now += 0.5
        b.update(1)
    b.close()
    assert out.getvalue().splitlines()[-1] == "train: 250/300 steps (83%), 2 step/s, 25s elapsed"


def test_iterating_passes_items_and_closes_at_the_end(clock, tmp_path):
    path = tmp_path / "log.txt"
    with open(path, "w") as f:
        items = list(progress.bar(range(7), desc="x", unit="frame", file=f))
    assert items == list(range(7))
    text = path.read_text()
    _no_terminal_codes(text)
    assert text.splitlines() == ["x: 7/7 frames (100%), 0s elapsed"]  # total from len(); no time passed


def test_unknown_total_and_default_interval_from_the_environment(clock, monkeypatch):
    monkeypatch.setenv(progress.INTERVAL_ENV, "5")
    out = io.StringIO()
    b = progress.bar(iter(range(12)), unit="it", file=out)
    for _ in b:
        clock.now += 1.0
    lines = out.getvalue().splitlines()
    _no_terminal_codes(out.getvalue())
    assert lines[0] == "5 its, 1 it/s" and lines[1] == "10 its, 1 it/s"
    assert lines[-1] == "12 its, 1 it/s, 12s elapsed"


def test_default_stream_is_stderr_at_call_time(capsys):
    with progress.bar(total=3, desc="d", unit="step") as b:
        b.update(3)
    err = capsys.readouterr().err
    _no_terminal_codes(err)
    assert "d: 3/3 steps (100%)" in err


def test_silent_off_process_zero(monkeypatch, capsys):
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    out = io.StringIO()
    with progress.bar(total=5, desc="train", unit="step", file=out) as b:
        b.update(5)
        b.set_postfix({"loss": "1"})
    assert list(progress.bar([1, 2, 3], file=out)) == [1, 2, 3]
    progress.say("hello")
    assert out.getvalue() == ""
    assert capsys.readouterr() == ("", "")


def test_say_on_process_zero(capsys):
    progress.say("stage 'x': ready")
    assert capsys.readouterr().out == "jaxsurg: stage 'x': ready\n"


def test_terminal_gets_tqdm():
    from tqdm.auto import tqdm

    class Tty(io.StringIO):
        def isatty(self):
            return True

    out = Tty()
    with progress.bar(total=4, desc="train", unit="step", file=out) as b:
        assert isinstance(b, tqdm)
        b.update(4)
    assert "4/4" in out.getvalue()
