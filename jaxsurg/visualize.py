"""Pictures for a person to look at, readable without the README.

Every PNG jaxsurg writes is put together here (one piece of code per idea):

- ``upscale_factor`` / ``upscale``: small panels are scaled up with nearest neighbour to at
  least ``MIN_SIDE`` px on the short side *before* anything is drawn on them;
- ``text_style`` / ``text_strip``: a strip of (word-wrapped) text, the font sized for the
  panel it belongs to — panel titles above panels, the caption under them;
- ``legend_strip`` / ``class_legend``: colour swatches with the class (or key-point) names;
- ``compose``: a grid of titled panels with a caption strip and a legend under it;
- ``PALETTE`` / ``colorize``: the class colours of the segmentation pictures;
- ``pca_rgb`` / ``pca_panel`` / ``pca_figure``: the three principal components of per-pixel
  representations as RGB beside the frame (Laparoflow-SSL, Moens et al. 2024, Fig. 1b
  and 5c).

Images are uint8 RGB (H, W, 3) throughout (callers flip to BGR for ``cv2.imwrite``). Text is
drawn with OpenCV's Hershey font, which has ASCII only: other characters are drawn as ``?``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import cv2
import numpy as np

# Smallest short side (px) of a panel in a written picture; smaller ones are scaled up.
MIN_SIDE = 256
# Colour of title, caption and legend strips and of the gaps between panels (RGB).
BACKGROUND = (24, 24, 24)
# Colour of the text drawn on the strips (RGB).
TEXT_COLOUR = (255, 255, 255)
_FONT = cv2.FONT_HERSHEY_SIMPLEX

# RGB colours of classes 1, 2, ... (class 0 = background is left uncoloured).
PALETTE = np.array(
    [[0, 230, 64], [255, 196, 0], [0, 160, 255], [255, 64, 160], [160, 90, 255], [255, 120, 40],
     [0, 230, 220], [200, 255, 80], [255, 255, 255], [120, 60, 20], [90, 160, 90], [250, 40, 40]],
    np.uint8,
)

Colour = tuple[int, int, int]


def class_colour(c: int) -> Colour:
    """RGB colour of foreground class ``c`` ≥ 1 in ``colorize`` and the legends."""
    return tuple(int(v) for v in PALETTE[(max(int(c), 1) - 1) % len(PALETTE)])


def colorize(image: np.ndarray, classes: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blends class colours over an RGB image.

    Args:
      image: uint8 (H, W, 3). classes: int (H, W); 0 and 255 stay uncoloured.
      alpha: opacity of the class colours, in [0, 1].

    Returns:
      uint8 (H, W, 3).
    """
    out = image.astype(np.float32)
    fg = (classes > 0) & (classes != 255)
    colours = PALETTE[(np.clip(classes, 1, None) - 1) % len(PALETTE)].astype(np.float32)
    out[fg] = (1 - alpha) * out[fg] + alpha * colours[fg]
    return out.astype(np.uint8)


def class_legend(class_names: Sequence[str] | None, shown: Iterable[int] = ()) -> list[tuple[str, Colour]]:
    """Legend entries (name, RGB colour) of the foreground classes 1 … C−1 of a task whose
    ``class_names`` start with the background (index 0, uncoloured, left out); with
    ``class_names`` None, an entry "class c" for each foreground code c in ``shown``
    (0 and 255 left out)."""
    if class_names is None:
        return [(f"class {c}", class_colour(c)) for c in sorted({int(c) for c in shown} - {0, 255})]
    return [(str(name), class_colour(c)) for c, name in enumerate(class_names) if c > 0]


def upscale_factor(shape: Sequence[int], min_side: int = MIN_SIDE) -> int:
    """The integer factor k ≥ 1 that brings an (H, W, …) ``shape``'s short side to at least
    ``min_side`` px: ceil(min_side / min(H, W)); 1 when it is already that large.

    Raises:
      ValueError: if H or W is not positive.
    """
    short = min(int(shape[0]), int(shape[1]))
    if short <= 0:
        raise ValueError(f"upscale_factor: empty image of shape {tuple(shape)}")
    return max(1, -(-int(min_side) // short))


def upscale(image: np.ndarray, min_side: int = MIN_SIDE) -> np.ndarray:
    """Scales (H, W) or (H, W, C) ``image`` up by ``upscale_factor`` with nearest neighbour
    (each pixel becomes a k×k block, so class maps keep their exact values); the dtype is
    kept. Returns ``image`` itself when k = 1."""
    k = upscale_factor(image.shape, min_side)
    if k == 1:
        return image
    return np.repeat(np.repeat(image, k, axis=0), k, axis=1)


def text_style(side: int) -> tuple[float, int]:
    """(OpenCV font scale, stroke thickness px) for text that labels panels ``side`` px on
    their short side: about 19 px tall letters on a 256 px panel, growing with the panel."""
    scale = float(np.clip(side / 360.0, 0.6, 2.5))
    return scale, 1 if scale < 0.9 else 2 if scale < 1.8 else 3


def _ascii(text: str) -> str:
    return str(text).encode("ascii", "replace").decode("ascii")


def _text_width(text: str, scale: float, thickness: int) -> int:
    return cv2.getTextSize(text, _FONT, scale, thickness)[0][0]


def _line_height(scale: float, thickness: int) -> tuple[int, int]:
    """(line pitch, ascent) in px."""
    (_, ascent), base = cv2.getTextSize("Hg", _FONT, scale, thickness)
    return ascent + base + max(4, round(8 * scale)), ascent


def _wrap(text: str, width: int, scale: float, thickness: int) -> list[str]:
    """Greedy word wrap of ``text`` (newlines kept) into lines at most ``width`` px wide; a
    word wider than a line is cut."""
    lines: list[str] = []
    for para in _ascii(text).split("\n"):
        current = ""
        for word in para.split(" "):
            trial = word if not current else f"{current} {word}"
            if _text_width(trial, scale, thickness) <= width or not current:
                current = trial
            else:
                lines.append(current)
                current = word
            while len(current) > 1 and _text_width(current, scale, thickness) > width:
                cut = max(1, next((n for n in range(len(current) - 1, 0, -1) if _text_width(current[:n], scale, thickness) <= width), 1))
                lines.append(current[:cut])
                current = current[cut:]
        lines.append(current)
    return lines


def text_strip(text: str, width: int, *, side: int = MIN_SIDE, align: str = "left") -> np.ndarray:
    """A ``BACKGROUND`` strip ``width`` px wide with ``text`` in ``TEXT_COLOUR``, word-wrapped
    onto as many lines as it needs, in the ``text_style`` of ``side`` px panels.

    Args:
      text: what to write (newlines start new lines); "" gives a strip one line tall and empty.
      width: strip width, px (≥ 1).
      side: short side (px) of the panels the text labels; sets the font size.
      align: "left" or "center".

    Returns:
      uint8 (h, width, 3) RGB.

    Raises:
      ValueError: if ``width`` < 1 or ``align`` is unknown.
    """
    if width < 1:
        raise ValueError(f"text_strip: width must be ≥ 1 px, got {width}")
    if align not in ("left", "center"):
        raise ValueError(f"text_strip: align must be 'left' or 'center', got {align!r}")
    scale, thickness = text_style(side)
    pitch, ascent = _line_height(scale, thickness)
    pad = max(4, pitch // 4)
    lines = _wrap(text, width - 2 * pad, scale, thickness)
    strip = np.empty((len(lines) * pitch + pad, width, 3), np.uint8)
    strip[:] = BACKGROUND
    for i, line in enumerate(lines):
        x = pad if align == "left" else max(pad, (width - _text_width(line, scale, thickness)) // 2)
        y = pad + i * pitch + ascent
        cv2.putText(strip, line, (x, y), _FONT, scale, TEXT_COLOUR, thickness, cv2.LINE_AA)
    return strip


def legend_strip(entries: Sequence[tuple[str, Sequence[int]]], width: int, *, side: int = MIN_SIDE) -> np.ndarray:
    """A ``BACKGROUND`` strip ``width`` px wide with one square swatch (filled with exactly
    the entry's colour, outlined in grey outside it) and the name beside it per entry,
    left to right, onto further rows when the width is used up.

    Args:
      entries: (name, RGB colour 0–255) pairs, e.g. ``class_legend(class_names)``.
      width: strip width, px (≥ 1).
      side: short side (px) of the panels the legend belongs to; sets the font size.

    Returns:
      uint8 (h, width, 3) RGB; (0, width, 3) when ``entries`` is empty.

    Raises:
      ValueError: if ``width`` < 1.
    """
    if width < 1:
        raise ValueError(f"legend_strip: width must be ≥ 1 px, got {width}")
    scale, thickness = text_style(side)
    pitch, ascent = _line_height(scale, thickness)
    pad = max(4, pitch // 4)
    box = ascent + 2
    placed: list[tuple[int, int, str, Colour]] = []  # (x, row, name, colour)
    x, row = pad, 0
    for name, colour in entries:
        name = _ascii(name)
        need = box + pad + _text_width(name, scale, thickness) + 3 * pad
        if x > pad and x + need > width:
            x, row = pad, row + 1
        placed.append((x, row, name, tuple(int(v) for v in colour)))
        x += need
    if not placed:
        return np.zeros((0, width, 3), np.uint8)
    strip = np.empty(((placed[-1][1] + 1) * pitch + pad, width, 3), np.uint8)
    strip[:] = BACKGROUND
    for x, row, name, colour in placed:
        top = pad + row * pitch - 1  # level with the name's letters
        cv2.rectangle(strip, (x - 1, top - 1), (x + box, top + box), (160, 160, 160), 1)
        strip[top : top + box, x : x + box] = colour
        cv2.putText(strip, name, (x + box + pad, pad + row * pitch + ascent), _FONT, scale, TEXT_COLOUR, thickness, cv2.LINE_AA)
    return strip


def _as_rgb(panel: np.ndarray) -> np.ndarray:
    panel = np.asarray(panel)
    if panel.dtype != np.uint8:
        raise ValueError(f"compose: panels must be uint8, got {panel.dtype}")
    if panel.ndim == 2:
        panel = np.stack([panel] * 3, axis=-1)
    if panel.ndim != 3 or panel.shape[-1] != 3 or panel.shape[0] < 1 or panel.shape[1] < 1:
        raise ValueError(f"compose: panels must be (H, W) or (H, W, 3), got shape {panel.shape}")
    return panel


def compose(
    panels: Sequence[np.ndarray],
    titles: Sequence[str],
    *,
    columns: int | None = None,
    caption: str = "",
    legend: Sequence[tuple[str, Sequence[int]]] = (),
    min_side: int = MIN_SIDE,
    gap: int = 4,
) -> np.ndarray:
    """A figure: panels in a grid, each with its title in a strip above it, then the caption
    strip (e.g. the frame's scores) and the legend strip under the grid.

    Panels are first scaled up (``upscale``, nearest neighbour) to ``min_side`` px on the
    short side; a grid cell is as large as its column's widest and its row's tallest panel
    (smaller panels are centred on ``BACKGROUND``); ``gap`` px of ``BACKGROUND`` separate
    the cells. The font follows the smallest (scaled) panel's short side (``text_style``).

    Args:
      panels: uint8 (H_i, W_i, 3) RGB or (H_i, W_i) grey images, row by row.
      titles: one title per panel ("" for none).
      columns: panels per grid row; default all in one row.
      caption: text under the grid; "" for no caption strip.
      legend: (name, RGB colour) swatches under the caption, e.g. ``class_legend``.
      min_side: smallest short side of a panel, px.
      gap: px between cells and around the grid.

    Returns:
      uint8 (H, W, 3) RGB.

    Raises:
      ValueError: no panels, a title count that differs from the panel count, ``columns`` <
        1, or a panel that is not uint8 (H, W) / (H, W, 3).
    """
    if not panels:
        raise ValueError("compose: no panels")
    if len(titles) != len(panels):
        raise ValueError(f"compose: {len(panels)} panels but {len(titles)} titles")
    columns = len(panels) if columns is None else int(columns)
    if columns < 1:
        raise ValueError(f"compose: columns must be ≥ 1, got {columns}")
    scaled = [upscale(_as_rgb(p), min_side) for p in panels]
    side = min(min(p.shape[:2]) for p in scaled)
    rows = -(-len(scaled) // columns)
    cells = [(i // columns, i % columns) for i in range(len(scaled))]
    col_w = [max(p.shape[1] for p, (_, c) in zip(scaled, cells) if c == j) for j in range(min(columns, len(scaled)))]
    strips = [text_strip(t, col_w[c], side=side, align="center") for t, (_, c) in zip(titles, cells)]
    title_h = [max(s.shape[0] for s, (r, _) in zip(strips, cells) if r == i) for i in range(rows)]
    row_h = [max(p.shape[0] for p, (r, _) in zip(scaled, cells) if r == i) for i in range(rows)]
    width = sum(col_w) + gap * (len(col_w) + 1)
    height = sum(title_h) + sum(row_h) + gap * (rows + 1)
    grid = np.empty((height, width, 3), np.uint8)
    grid[:] = BACKGROUND
    x0 = np.cumsum([gap] + [w + gap for w in col_w])
    y0 = np.cumsum([gap] + [t + h + gap for t, h in zip(title_h, row_h)])
    for panel, strip, (r, c) in zip(scaled, strips, cells):
        x, y = x0[c], y0[r]
        grid[y : y + strip.shape[0], x : x + col_w[c]] = strip
        y += title_h[r]
        ph, pw = panel.shape[:2]
        oy, ox = (row_h[r] - ph) // 2, (col_w[c] - pw) // 2
        grid[y + oy : y + oy + ph, x + ox : x + ox + pw] = panel
    parts = [grid]
    if caption:
        parts.append(text_strip(caption, width, side=side))
    if legend:
        parts.append(legend_strip(legend, width, side=side))
    return np.concatenate(parts, axis=0)


def score_axes(width: int, height: int, margins: tuple[int, int, int, int] = (44, 12, 12, 46)):
    """A chart's plot area for scores in [0, 1] (Dice, IoU): a ``BACKGROUND`` canvas with
    horizontal grid lines and labels at 0.0, 0.2, ..., 1.0.

    Args:
      width, height: canvas size, px.
      margins: (left, right, top, bottom) px around the plot area.

    Returns:
      (uint8 RGB canvas (height, width, 3), ``y_of``: score → pixel row, clipped to [0, 1]).
    """
    left, right, top, bottom = margins
    img = np.empty((height, width, 3), np.uint8)
    img[:] = BACKGROUND
    plot_height = height - top - bottom

    def y_of(score: float) -> int:
        return int(round(top + (1.0 - float(np.clip(score, 0.0, 1.0))) * (plot_height - 1)))

    for d in np.linspace(0, 1, 6):
        cv2.line(img, (left, y_of(d)), (width - right - 1, y_of(d)), (60, 60, 60), 1)
        cv2.putText(img, f"{d:.1f}", (left - 30, y_of(d) + 4), _FONT, 0.38, TEXT_COLOUR, 1, cv2.LINE_AA)
    return img, y_of


def pca_rgb(features: np.ndarray, *, valid: np.ndarray | None = None, clip_percentile: float = 1.0) -> np.ndarray:
    """Projects per-pixel representations on their first three principal components.

    The components are fitted jointly over all given frames (so colours are comparable
    between them); each is scaled to [0, 255] between its ``clip_percentile`` and
    ``100 − clip_percentile`` percentiles. Component 1 → green, 2 → red, 3 → blue, the
    paper's "GRB" order.

    Args:
      features: float (N, h, w, D) representations, D ≥ 3.
      valid: optional bool (N, h, w): pixels used to fit the components (e.g. inside the
        endoscope's field of view); all are projected.
      clip_percentile: percent of each tail clipped before scaling.

    Returns:
      uint8 (N, h, w, 3) RGB.

    Raises:
      ValueError: if ``features`` is not 4-D with D ≥ 3 or no pixel is valid.
    """
    if features.ndim != 4 or features.shape[-1] < 3:
        raise ValueError(f"pca_rgb expects (N, h, w, D ≥ 3) features, got shape {features.shape}")
    flat = features.reshape(-1, features.shape[-1]).astype(np.float64)
    fit = flat if valid is None else flat[np.asarray(valid).reshape(-1)]
    if len(fit) < 3:
        raise ValueError("pca_rgb: fewer than 3 valid pixels to fit the components")
    mean = fit.mean(axis=0)
    _, _, vt = np.linalg.svd(fit - mean, full_matrices=False)
    proj = (flat - mean) @ vt[:3].T
    lo = np.percentile(proj, clip_percentile, axis=0)
    hi = np.percentile(proj, 100 - clip_percentile, axis=0)
    scaled = np.clip((proj - lo) / np.maximum(hi - lo, 1e-12), 0, 1)
    rgb = scaled[:, [1, 0, 2]]  # green = 1st component, red = 2nd, blue = 3rd
    return (rgb * 255).round().astype(np.uint8).reshape(*features.shape[:3], 3)


def _pca_tiles(images: np.ndarray, features: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """``pca_rgb`` colours scaled (nearest) to the frames' size: uint8 (N, H, W, 3)."""
    h, w = images.shape[1:3]
    colours = pca_rgb(features, valid=valid)
    return np.stack([cv2.resize(c, (w, h), interpolation=cv2.INTER_NEAREST) for c in colours])


def pca_panel(images: np.ndarray, features: np.ndarray, *, valid: np.ndarray | None = None) -> np.ndarray:
    """Rows of [frame | PCA colours of its representation, scaled up to the frame size],
    untitled and at the frames' size (``pca_figure`` is the picture written to disk).

    Args:
      images: uint8 (N, H, W, 3) RGB frames.
      features: float (N, h, w, D) their representations.
      valid: optional bool (N, h, w), see ``pca_rgb``.

    Returns:
      uint8 (N·H, 2·W, 3) RGB.
    """
    tiles = _pca_tiles(images, features, valid)
    return np.concatenate([np.concatenate([im, t], axis=1) for im, t in zip(images, tiles)], axis=0)


def pca_figure(images: np.ndarray, features: np.ndarray, *, valid: np.ndarray | None = None, min_side: int = MIN_SIDE) -> np.ndarray:
    """The ``pretrain/pca.png`` picture: one row per frame, [frame | PCA colours of its
    representation], each panel titled and scaled up to ``min_side`` (``compose``), with a
    caption saying what the colours are.

    Args:
      images: uint8 (N, H, W, 3) RGB frames, N ≥ 1.
      features: float (N, h, w, D ≥ 3) their representations.
      valid: optional bool (N, h, w), see ``pca_rgb``.
      min_side: smallest short side of a panel, px.

    Returns:
      uint8 (H', W', 3) RGB, H' ≥ N·min_side.

    Raises:
      ValueError: as ``pca_rgb``.
    """
    tiles = _pca_tiles(images, features, valid)
    panels, titles = [], []
    for i, (im, t) in enumerate(zip(images, tiles)):
        panels += [im, t]
        titles += [f"test frame {i + 1}", f"frame {i + 1}: representation PCA"]
    caption = (
        f"Colours: 1st / 2nd / 3rd principal component of the per-pixel representations = green / red / blue, "
        f"fitted jointly over these {len(images)} frames (similar colour = similar representation)."
    )
    return compose(panels, titles, columns=2, caption=caption, min_side=min_side)
