"""Progress reporting that suits both a terminal and a log file.

``bar(...)`` is used like ``tqdm``: iterate over it, or call ``update``, ``set_postfix`` and
``close`` (or use it as a context manager). What it shows depends on where it writes:

* on a terminal (the stream is a TTY, or a Jupyter kernel's stream): a live ``tqdm.auto``
  bar;
* anywhere else (a log file, CI, ``nohup``, a pipe): plain lines, without carriage returns
  or ANSI escape codes, at most one every ``interval`` seconds (default 30, or the
  ``JAXSURG_PROGRESS_INTERVAL`` environment variable) plus one final line at ``close``::

      train: 120/300 steps (40%), 3.1 step/s, ETA 58s, loss=0.41
      train: 300/300 steps (100%), 3.1 step/s, 1m36s elapsed, loss=0.38

* nothing at all on JAX processes other than 0, so a multi-host run shows one bar.

``say(line)`` prints one ``jaxsurg: <line>`` message on process 0.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TextIO

DEFAULT_INTERVAL_S = 30.0
INTERVAL_ENV = "JAXSURG_PROGRESS_INTERVAL"


def process_index() -> int:
    """``jax.process_index()``, or 0 when JAX has not been imported (this module never
    imports JAX itself, so data builders that do not use it stay free of it)."""
    jax = sys.modules.get("jax")
    return 0 if jax is None else int(jax.process_index())


def say(line: str, file: TextIO | None = None) -> None:
    """Prints ``jaxsurg: <line>`` to ``file`` (default: standard output) on JAX process 0
    only, flushed at once."""
    if process_index() == 0:
        print(f"jaxsurg: {line}", file=file if file is not None else sys.stdout, flush=True)


def _interactive(file: Any) -> bool:
    """Whether ``file`` is shown live: a TTY, or the stream of a Jupyter/IPython kernel
    (not a TTY, but tqdm.auto draws a widget there)."""
    if type(file).__module__.startswith("ipykernel"):
        return True
    try:
        return bool(file.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed file
        return False


def _default_interval() -> float:
    raw = os.environ.get(INTERVAL_ENV, "")
    try:
        value = float(raw)
    except ValueError:
        return DEFAULT_INTERVAL_S
    return value if math.isfinite(value) and value >= 0 else DEFAULT_INTERVAL_S


def _duration(seconds: float) -> str:
    """``58s``, ``1m05s``, ``2h03m07s``."""
    s = int(round(max(seconds, 0.0)))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h{m:02d}m{s:02d}s"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"


def _plural(unit: str) -> str:
    return unit if not unit or unit.endswith("s") else unit + "s"


def _postfix_text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class _NullBar:
    """The bar of processes other than 0 (and of ``disable=True``): shows nothing."""

    def __init__(self, iterable: Iterable | None, total: int | None, initial: int):
        self.iterable = iterable
        self.total = total
        self.n = initial

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("this progress bar was made without an iterable")
        for item in self.iterable:
            yield item
            self.n += 1

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, ordered_dict: Mapping[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "_NullBar":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class PlainBar:
    """A progress bar for streams that are not terminals: whole lines, no ``'\\r'``, no
    ANSI escape codes; at most one line every ``interval`` seconds while it runs and one
    final line at ``close`` (also when closed early, e.g. by an exception).

    A line reads ``<desc>: <n>/<total> <unit>s (<percent>%), <rate> <unit>/s, ETA <time>,
    <postfix>`` (``<n> <unit>s`` when the total is unknown; the final line gives the
    elapsed time instead of the ETA). The rate counts only the units done since the bar was
    made, not ``initial`` (steps restored from a checkpoint).
    """

    def __init__(
        self,
        iterable: Iterable | None,
        *,
        total: int | None,
        desc: str,
        unit: str,
        initial: int,
        interval: float,
        file: TextIO,
    ):
        self.iterable = iterable
        self.total = total
        self.desc = desc
        self.unit = unit
        self.n = initial
        self.initial = initial
        self.interval = interval
        self.file = file
        self.postfix: dict[str, str] = {}
        self._start = self._last = time.monotonic()
        self._closed = False

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("this progress bar was made without an iterable")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def update(self, n: int = 1) -> None:
        """Adds ``n`` done units; prints a line when ``interval`` seconds have passed since
        the last one."""
        self.n += n
        now = time.monotonic()
        if not self._closed and now - self._last >= self.interval:
            self._last = now
            self._emit(self.line(now=now))

    def set_postfix(self, ordered_dict: Mapping[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        """Replaces the ``key=value`` pairs shown at the end of the line (floats with 4
        significant digits, anything else with ``str``). Prints nothing by itself."""
        items = {**(dict(ordered_dict) if ordered_dict else {}), **kwargs}
        self.postfix = {str(k): _postfix_text(v) for k, v in items.items()}

    def line(self, final: bool = False, now: float | None = None) -> str:
        """The text of one progress line (without the newline)."""
        now = time.monotonic() if now is None else now
        elapsed = max(now - self._start, 0.0)
        units = _plural(self.unit)
        if self.total:
            percent = int(100 * self.n / self.total)
            parts = [f"{self.n}/{self.total} {units} ({percent}%)"]
        else:
            parts = [f"{self.n} {units}"]
        done = self.n - self.initial
        rate = done / elapsed if elapsed > 0 and done > 0 else None
        if rate is not None:
            parts.append(f"{rate:.3g} {self.unit}/s")
        if final:
            parts.append(f"{_duration(elapsed)} elapsed")
        elif rate is not None and self.total and self.n < self.total:
            parts.append(f"ETA {_duration((self.total - self.n) / rate)}")
        parts += [f"{k}={v}" for k, v in self.postfix.items()]
        text = ", ".join(parts)
        return f"{self.desc}: {text}" if self.desc else text

    def _emit(self, text: str) -> None:
        try:
            self.file.write(text + "\n")
            self.file.flush()
        except (ValueError, OSError):  # the stream was closed under us: progress is optional
            pass

    def close(self) -> None:
        """Prints the final line (once; later calls do nothing)."""
        if self._closed:
            return
        self._closed = True
        self._emit(self.line(final=True))

    def __enter__(self) -> "PlainBar":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def bar(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    initial: int = 0,
    leave: bool = True,
    mininterval: float = 0.1,
    interval: float | None = None,
    file: TextIO | None = None,
    disable: bool = False,
) -> Any:
    """A progress bar, used like ``tqdm`` (iteration, ``update(n=1)``,
    ``set_postfix(dict)``, ``close()``, ``with``).

    Args:
      iterable: items to pass through (each counts one unit); or None to call ``update``.
        Iterating to the end closes the bar.
      total: expected number of units (default: ``len(iterable)`` when it has one); None
        shows counts without percentage or ETA.
      desc: label at the start of the bar / line, e.g. the stage name.
      unit: name of one unit (``'step'``, ``'frame'``); lines pluralise it with an ``s``.
      initial: units already done (e.g. the step restored from a checkpoint).
      leave: terminal only: keep the bar on screen after ``close`` (plain output always
        ends with its final line).
      mininterval: terminal only: minimum seconds between redraws (tqdm's).
      interval: plain output only: minimum seconds between lines; default the
        ``JAXSURG_PROGRESS_INTERVAL`` environment variable, else 30.
      file: the stream written to; default ``sys.stderr`` at the time of the call.
      disable: show nothing.

    Returns:
      A ``tqdm.auto.tqdm`` when ``file`` is a terminal (or a Jupyter stream); a
      ``PlainBar`` writing whole lines otherwise; a bar that shows nothing on JAX processes
      other than 0, when ``disable`` is set, or when there is no stream.
    """
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    file = sys.stderr if file is None else file
    if disable or file is None or process_index() != 0:
        return _NullBar(iterable, total, initial)
    if _interactive(file):
        from tqdm.auto import tqdm  # imported here: only terminals need it

        return tqdm(
            iterable, total=total, desc=desc, unit=unit, initial=initial, leave=leave, mininterval=mininterval, file=file
        )
    return PlainBar(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        initial=initial,
        interval=_default_interval() if interval is None else float(interval),
        file=file,
    )
