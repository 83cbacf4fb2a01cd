"""Concurrent builds of one dataset into one TFDS dir (issue 13): two real processes, one
build, both read it; leftover ``incomplete.*`` folders of interrupted builds are removed
after the next successful build; TFDS's own build messages are left out."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import numpy as np

from jaxsurg.data import builders, synthetic
from jaxsurg.data.builders import integrity

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

# A child preparing synthetic_surgery/tiny. With a RESUME file given, its first clip render
# prints STALLED and waits for that file: the build is then under way, with the lock held.
CHILD = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {repo!r})
    from jaxsurg.data import builders, synthetic
    real, resume = synthetic.render_clip, {resume!r}
    def stall(*args, **kwargs):
        synthetic.render_clip = real
        print("STALLED", flush=True)
        while not os.path.exists(resume):
            time.sleep(0.01)
        return real(*args, **kwargs)
    if resume:
        synthetic.render_clip = stall
    builder = builders.prepare("synthetic_surgery", data_dir={data_dir!r}, config="tiny")
    source = builder.as_data_source()
    print("RECORDS", len(source["train"]), len(source["test"]), flush=True)
""")

TFDS_NOISE = ("Downloading and preparing", "Unknown size", "Subsequent calls will reuse", "dataset_info.json", "custom data configuration")


def _child(data_dir: str, resume: str | None) -> subprocess.Popen:
    script = CHILD.format(repo=REPO, data_dir=data_dir, resume=resume)
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _read_until(child: subprocess.Popen, prefix: str) -> list[str]:
    """The child's stdout lines up to and including the first one starting with ``prefix``."""
    lines = []
    for line in child.stdout:
        lines.append(line.rstrip("\n"))
        if line.startswith(prefix):
            return lines
    raise AssertionError(f"the child ended without printing {prefix!r}: {lines}, {child.stderr.read()[-2000:]}")


def test_two_processes_build_once_and_both_read_it(tmp_path):
    """Process A builds and stalls mid-build (lock held); process B then prepares the same
    dataset into the same dir: it waits, and once A's build is done reuses it."""
    data_dir, resume = str(tmp_path / "tfds"), str(tmp_path / "RESUME")
    a = _child(data_dir, resume)
    b = None
    try:
        a_lines = _read_until(a, "STALLED")
        b = _child(data_dir, None)
        b_lines = _read_until(b, "jaxsurg: dataset synthetic_surgery/tiny: waiting for another process")
        open(resume, "w").close()
        (a_out, a_err), (b_out, b_err) = a.communicate(timeout=120), b.communicate(timeout=120)
    finally:
        for child in (a, b):
            if child is not None:
                child.kill()
                child.wait()
    assert (a.returncode, b.returncode) == (0, 0), (a_err[-2000:], b_err[-2000:])
    a_lines += a_out.splitlines()
    b_lines += b_out.splitlines()
    final = os.path.join(data_dir, "synthetic_surgery", "tiny", "1.1.0")
    lock = os.path.join(data_dir, "synthetic_surgery", "tiny.lock")
    assert a_lines == [
        f"jaxsurg: dataset synthetic_surgery/tiny: building into {final}", "STALLED", "RECORDS 16 8"]
    assert b_lines == [
        f"jaxsurg: dataset synthetic_surgery/tiny: waiting for another process building it into {final} (lock {lock})",
        f"jaxsurg: dataset synthetic_surgery/tiny: reused from {final}",
        "RECORDS 16 8",
    ]
    for out, err in ((a_out, a_err), (b_out, b_err)):  # TFDS's own build messages are left out
        for noise in TFDS_NOISE:
            assert noise not in out and noise not in err, (noise, out, err[-2000:])
    built = builders.prepare("synthetic_surgery", data_dir=data_dir, config="tiny")
    first = built.as_data_source()["train"][0]
    np.testing.assert_array_equal(first["image"], synthetic.render_clip(0, 8, 64, 80)["image"][0])
    assert os.listdir(os.path.dirname(final)) == ["1.1.0"]  # one build, no incomplete.* left


def test_leftover_incomplete_folders_are_removed_after_a_build(tmp_path, capsys):
    data_dir = str(tmp_path)
    leftover = os.path.join(data_dir, "synthetic_surgery", "tiny", "incomplete.ABC123_1.1.0")
    os.makedirs(leftover)
    open(os.path.join(leftover, "synthetic_surgery-train.array_record-00000-of-00001"), "wb").close()
    builder = builders.prepare("synthetic_surgery", data_dir=data_dir, config="tiny")
    assert builder.is_prepared() and len(builder.as_data_source()["train"]) == 16
    assert not os.path.exists(leftover)
    assert os.listdir(os.path.dirname(leftover)) == ["1.1.0"]
    assert "building into" in capsys.readouterr().out


def test_build_lock_waits_for_the_holder(tmp_path):
    """A second holder of the lock (another open file, as another process) waits, after
    saying so once."""
    import threading

    lock = str(tmp_path / "x" / "c.lock")
    events = []
    with integrity.build_lock(lock):
        thread = threading.Thread(target=lambda: _take(lock, events))
        thread.start()
        time.sleep(0.3)
        assert events == ["waiting"]
        events.append("released")
    thread.join(10)
    assert events == ["waiting", "released", "acquired"]


def _take(lock: str, events: list) -> None:
    with integrity.build_lock(lock, on_wait=lambda: events.append("waiting")):
        events.append("acquired")
