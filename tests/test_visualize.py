"""The shared picture code (``jaxsurg.visualize``): panels scaled up to a readable size,
titles drawn above them, a caption strip and a colour legend under them (issue 13)."""

import cv2
import numpy as np
import pytest

from jaxsurg import visualize

NAMES = ("background", "shaft", "wrist", "claspers")


def _is_background(img: np.ndarray) -> np.ndarray:
    return np.all(img == np.array(visualize.BACKGROUND, np.uint8), axis=-1)


def _boxes(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """(top, left, height, width) of each 8-connected component of ``mask``, left to right."""
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    boxes = [(int(s[cv2.CC_STAT_TOP]), int(s[cv2.CC_STAT_LEFT]), int(s[cv2.CC_STAT_HEIGHT]), int(s[cv2.CC_STAT_WIDTH])) for s in stats[1:n]]
    return sorted(boxes, key=lambda b: (b[0], b[1]))


def _check_image(img: np.ndarray) -> None:
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[-1] == 3


def test_upscale_is_nearest_neighbour_to_the_minimum_side():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, (64, 80)).astype(np.uint8)
    assert visualize.upscale_factor(labels.shape) == 4  # ceil(256 / 64)
    big = visualize.upscale(labels)
    assert big.shape == (256, 320) and big.dtype == np.uint8
    np.testing.assert_array_equal(big[::4, ::4], labels)  # every pixel became a 4x4 block ...
    np.testing.assert_array_equal(big[3::4, 3::4], labels)
    assert set(np.unique(big)) == set(np.unique(labels))  # ... with no blended values
    rgb = rng.integers(0, 255, (100, 300, 3), dtype=np.uint8)
    assert visualize.upscale(rgb).shape == (300, 900, 3)  # ceil(256 / 100) = 3
    large = np.zeros((256, 400, 3), np.uint8)
    assert visualize.upscale(large) is large  # already large enough: untouched
    with pytest.raises(ValueError, match="empty"):
        visualize.upscale_factor((0, 5))


def _three_panels(**kwargs) -> np.ndarray:
    panels = [np.zeros((64, 80, 3), np.uint8) for _ in range(3)]  # black: unlike any strip pixel
    return visualize.compose(panels, ["frame", "ground truth", "prediction"], **kwargs)


def test_compose_scales_panels_up_and_draws_titles_above_them():
    img = _three_panels()
    _check_image(img)
    boxes = _boxes(np.all(img == 0, axis=-1))
    assert len(boxes) == 3
    assert all((h, w) == (256, 320) for _, _, h, w in boxes)  # 64x80 scaled 4x before any text
    assert len({top for top, _, _, _ in boxes}) == 1  # one row
    top = boxes[0][0]
    assert top > 20  # room for a title strip
    for _, left, _, width in boxes:
        strip = img[:top, left : left + width]
        text = ~_is_background(strip)
        assert text.sum() > 50, "no title drawn above a panel"
        assert strip.max() == 255  # white letters
    # the same panels without titles: the strips stay empty, so the pixels above were the titles
    untitled = visualize.compose([np.zeros((64, 80, 3), np.uint8)] * 3, ["", "", ""])
    u_top = _boxes(np.all(untitled == 0, axis=-1))[0][0]
    assert _is_background(untitled[:u_top]).all()
    # longer titles give different strips (the text is really the title)
    other = visualize.compose([np.zeros((64, 80, 3), np.uint8)] * 3, ["frame", "ground truth", "prediction of a long title"])
    assert not np.array_equal(other[:top, boxes[2][1] : boxes[2][1] + 320], img[:top, boxes[2][1] : boxes[2][1] + 320])


def test_compose_caption_strip_holds_the_text():
    plain = _three_panels()
    captioned = _three_panels(caption="record 12   IoU 0.812   Dice 0.896")
    _check_image(captioned)
    assert captioned.shape[1] == plain.shape[1]
    assert captioned.shape[0] > plain.shape[0] + 15  # a strip at least one readable line tall
    np.testing.assert_array_equal(captioned[: plain.shape[0]], plain)  # panels and titles unchanged
    strip = captioned[plain.shape[0] :]
    assert (~_is_background(strip)).sum() > 100 and strip.max() == 255
    # the caption text sits left, and the figures change the pixels
    other = _three_panels(caption="record 12   IoU 0.111   Dice 0.200")
    assert not np.array_equal(other[plain.shape[0] :], strip)
    # a caption too long for one line is wrapped, not cut off
    long = _three_panels(caption=" ".join(["Dice 0.896"] * 40))
    assert long.shape[0] > captioned.shape[0] + 15 and long.shape[1] == plain.shape[1]


def test_compose_legend_has_a_swatch_of_each_class_colour():
    legend = visualize.class_legend(NAMES)
    assert [n for n, _ in legend] == ["shaft", "wrist", "claspers"]  # background has no colour
    img = _three_panels(caption="record 1", legend=legend)
    _check_image(img)
    for (name, colour), c in zip(legend, (1, 2, 3)):
        assert colour == tuple(int(v) for v in visualize.PALETTE[c - 1]) == visualize.class_colour(c)
        swatch = np.all(img == np.array(colour, np.uint8), axis=-1)
        assert swatch.sum() >= 150, f"no swatch for {name}"  # a square ~19 px wide
        (top, _, h, w), = _boxes(swatch)
        assert abs(h - w) <= 1 and top > _three_panels(caption="record 1").shape[0] - 1  # under the caption
    # names are drawn beside the swatches: the legend strip has white text pixels
    strip = img[_three_panels(caption="record 1").shape[0] :]
    assert (np.all(strip == 255, axis=-1)).sum() > 30


def test_legend_wraps_onto_rows_and_keeps_every_colour():
    names = ["background"] + [f"organ number {c}" for c in range(1, 13)]
    entries = visualize.class_legend(names)
    one = visualize.legend_strip(entries[:1], 300)
    many = visualize.legend_strip(entries, 300)
    _check_image(many)
    assert many.shape[1] == 300 and many.shape[0] >= 3 * one.shape[0] - 10
    for _, colour in entries:
        assert np.all(many == np.array(colour, np.uint8), axis=-1).sum() >= 100
    assert visualize.legend_strip([], 300).shape == (0, 300, 3)


def test_text_strip_font_grows_with_the_panel_and_errors():
    small = visualize.text_strip("Dice 0.9", 2000, side=256)
    large = visualize.text_strip("Dice 0.9", 2000, side=1024)
    assert large.shape[0] > 1.5 * small.shape[0]
    ink_small = (~_is_background(small)).sum()
    assert (~_is_background(large)).sum() > 2 * ink_small > 0
    assert (~_is_background(visualize.text_strip("Diç 0.9 – ok", 400))).any()  # non-ASCII drawn as '?'
    with pytest.raises(ValueError, match="width"):
        visualize.text_strip("x", 0)
    with pytest.raises(ValueError, match="align"):
        visualize.text_strip("x", 10, align="right")


def test_compose_grid_and_errors():
    panels = [np.full((300, 400, 3), 0, np.uint8)] * 4 + [np.zeros((30, 40), np.uint8)]
    img = visualize.compose(panels, ["a", "b", "c", "d", "grey"], columns=2)
    boxes = _boxes(np.all(img == 0, axis=-1))
    assert len(boxes) == 5 and all(min(h, w) >= 256 for _, _, h, w in boxes)
    assert len({top for top, _, _, _ in boxes}) == 3  # 2 + 2 + 1 panels
    with pytest.raises(ValueError, match="titles"):
        visualize.compose(panels, ["a"])
    with pytest.raises(ValueError, match="no panels"):
        visualize.compose([], [])
    with pytest.raises(ValueError, match="uint8"):
        visualize.compose([np.zeros((8, 8, 3), np.float32)], ["x"])


def test_pca_figure_titles_each_panel_and_keeps_pca_panel():
    rng = np.random.default_rng(1)
    images = np.zeros((2, 48, 64, 3), np.uint8)
    feats = rng.normal(size=(2, 12, 16, 8))
    fig = visualize.pca_figure(images, feats)
    _check_image(fig)
    frames = _boxes(np.all(fig == 0, axis=-1))
    assert len(frames) == 2 and all((h, w) == (288, 384) for _, _, h, w in frames)  # 48x64 scaled 6x
    assert frames[1][0] > frames[0][0] + 288  # one row per frame
    assert (~_is_background(fig[: frames[0][0]])).sum() > 100  # titles above the first row
    assert (~_is_background(fig[frames[1][0] + 288 :])).sum() > 300  # the caption
    assert visualize.pca_panel(images, feats).shape == (96, 128, 3)  # the untitled panel is unchanged


def test_evaluation_overlay_is_titled_scaled_captioned_with_legend():
    from jaxsurg.evaluate import overlay_panel

    image = np.full((64, 80, 3), (10, 200, 30), np.uint8)
    target = np.zeros((64, 80), np.int64)
    target[10:40, 10:50] = 1
    pred = np.zeros_like(target)
    pred[12:42, 8:48] = 1
    pred[50:60, 60:75] = 3
    img = overlay_panel(image, target, pred, "test frame 1 of 8 (record 5):   IoU 0.700   Dice 0.820", NAMES)
    _check_image(img)
    frame = _boxes(np.all(img == (10, 200, 30), axis=-1))
    assert (frame[0][2], frame[0][3]) == (256, 320)  # the raw frame panel, scaled 4x
    top = frame[0][0]
    assert (~_is_background(img[:top])).sum() > 150  # three titles
    for c in (1, 2, 3):  # every class of the task in the legend, also those not in the frame
        assert np.all(img == visualize.PALETTE[c - 1], axis=-1).sum() >= 150
    assert (np.all(img[top + 256 :] == 255, axis=-1)).sum() > 100  # caption + legend text
    # the white ground-truth outline (a 120x160 px rectangle once scaled) on the prediction panel
    assert np.all(img[top : top + 256] == 255, axis=-1).sum() > 0.9 * 2 * (120 + 160)
