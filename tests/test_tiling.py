"""Tiling: the grid, the merge of the tiles' boxes (copies, pieces, long lines, slanted
neighbours), and EdgeDetector with tiles on generated images with words across seams."""

from __future__ import annotations

import numpy as np
import pytest

from edgedb import EdgeDetector, TextBox
from edgedb.cli import main
from edgedb.errors import InvalidInputError
from edgedb.evaluation import evaluate
from edgedb.synthetic import make_text_image
from edgedb.tiling import Tile, check_tiling, merge_tile_boxes, tile_grid


def _quad(x0, y0, x1, y1, score=0.9):
    return TextBox(np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float32), score)


@pytest.mark.parametrize("height, width, tile, overlap", [(100, 100, 128, 16), (720, 5000, 1000, 200),
                                                           (4321, 7681, 1280, 256), (2000, 1281, 1280, 300)])
def test_the_grid_covers_the_image_with_at_least_the_overlap(height, width, tile, overlap):
    tiles = tile_grid(height, width, tile, overlap)
    covered = np.zeros((height, width), bool)
    for t in tiles:
        assert t.y1 - t.y0 <= tile and t.x1 - t.x0 <= tile
        covered[t.y0:t.y1, t.x0:t.x1] = True
    assert covered.all()
    xs = sorted({(t.x0, t.x1) for t in tiles})
    for (_, end), (start, _) in zip(xs, xs[1:]):
        assert end - start >= overlap


def test_tiling_arguments_are_checked():
    assert check_tiling(True, 512, 64) == ("on", 512, 64)
    with pytest.raises(InvalidInputError, match="tile must be"):
        check_tiling("sometimes", 512, 64)
    with pytest.raises(InvalidInputError, match="less than half"):
        check_tiling("on", 512, 256)


TILES = [Tile(0, 0, 100, 120), Tile(0, 80, 100, 200)]  # two tiles sharing x 80..120


def test_a_word_seen_whole_by_two_tiles_is_one_box():
    merged = merge_tile_boxes(TILES, [[_quad(85, 40, 110, 50)], [_quad(86, 40, 111, 51)]], (100, 200))
    assert len(merged) == 1


def test_a_word_cut_by_a_seam_becomes_the_neighbours_whole_view():
    piece = _quad(100, 40, 120, 50)  # reaches the first tile's inner edge, x = 120
    whole = _quad(100, 40, 135, 50)
    merged = merge_tile_boxes(TILES, [[piece], [whole]], (100, 200))
    assert len(merged) == 1 and np.array_equal(merged[0].points, whole.points)


def test_where_two_tiles_disagree_on_two_close_words_the_higher_scoring_view_wins():
    # Tile 0 keeps the words apart; tile 1 joins them across the gap, where the
    # probability is low, so its box scores lower: the words stay two, whichever order.
    apart = [_quad(88, 40, 98, 50, score=0.85), _quad(101, 40, 111, 50, score=0.82)]
    joined = [_quad(87, 39, 112, 51, score=0.66)]
    for boxes in ([apart, joined], [joined, apart]):
        merged = merge_tile_boxes(TILES, boxes, (100, 200))
        assert sorted(b.points[0, 0] for b in merged) == [88, 101]
    # The join scoring higher is the join.
    high = [_quad(87, 39, 112, 51, score=0.9)]
    assert len(merge_tile_boxes(TILES, [apart, high], (100, 200))) == 1


def test_a_piece_that_fades_before_the_edge_does_not_outvote_the_word():
    # The piece ends 15 px short of its tile's edge (not seen as cut), but it spans a
    # fraction of the word the other tile saw: the word wins, though the piece scores higher.
    piece = _quad(100, 40, 105, 50, score=0.95)
    word = _quad(90, 40, 150, 50, score=0.7)
    merged = merge_tile_boxes([Tile(0, 0, 100, 120), Tile(0, 80, 100, 200)], [[piece], [word]], (100, 200))
    assert len(merged) == 1 and np.array_equal(merged[0].points, word.points)


def test_a_line_longer_than_the_overlap_cut_in_both_tiles_is_one_box_over_both():
    left, right = _quad(10, 40, 120, 52), _quad(80, 41, 190, 53)  # each touches its tile's inner edge
    merged = merge_tile_boxes(TILES, [[left], [right]], (100, 200))
    assert len(merged) == 1
    xs, ys = merged[0].points[:, 0], merged[0].points[:, 1]
    assert xs.min() <= 10 and xs.max() >= 190 and ys.min() <= 41 and ys.max() >= 52
    assert merged[0].points[0, 0] < merged[0].points[1, 0]  # clockwise from the top-left


def test_slanted_neighbours_whose_bounding_boxes_overlap_stay_apart():
    a = TextBox(np.array([[82, 60], [100, 40], [104, 44], [86, 64]], np.float32), 0.9)
    b = TextBox(np.array([[96, 66], [114, 46], [118, 50], [100, 70]], np.float32), 0.9)
    merged = merge_tile_boxes(TILES, [[a], [b]], (100, 200))
    assert len(merged) == 2


def test_boxes_far_from_the_seams_pass_through_untouched():
    boxes = [[_quad(5, 5, 30, 15), _quad(5, 60, 40, 70)], [_quad(150, 5, 190, 15)]]
    merged = merge_tile_boxes(TILES, boxes, (100, 200))
    assert len(merged) == 3
    assert merge_tile_boxes(TILES, [[], []], (100, 200)) == []


@pytest.fixture(scope="module")
def scene():
    """Words everywhere, so many cross the seams of 384-pixel tiles."""
    return make_text_image(5, size=(900, 1500), words=(40, 40))


def test_tiled_detection_finds_the_words_once(scene):
    with EdgeDetector(threads=1, tile="off", limit_side_len=736) as plain:
        untiled = plain.detect(scene.image)
    with EdgeDetector(threads=1, tile="on", tile_size=384, tile_overlap=96, tile_batch=3) as tiled_detector:
        assert tiled_detector._tiled(scene.image.shape)
        assert len(tiled_detector._tiles(900, 1500)[0]) > 8
        tiled = tiled_detector.detect(scene.image)
        assert [len(b) for b in tiled_detector.detect_batch([scene.image])] == [len(tiled)]
        assert [len(b) for b in tiled_detector.stream([scene.image, scene.image])] == [len(tiled)] * 2
    plain_score = evaluate([(untiled, [_Truth(p) for p in scene.polygons])])
    tiled_score = evaluate([(tiled, [_Truth(p) for p in scene.polygons])])
    assert len(scene.polygons) >= 25
    assert tiled_score.recall >= plain_score.recall - 0.05
    assert tiled_score.precision >= plain_score.precision - 0.05
    # No duplicates: no two tiled boxes cover the same word.
    from edgedb.tiling import _polygon_area, _shared_area

    for i, a in enumerate(tiled):
        for b in tiled[i + 1:]:
            assert _shared_area(a.points, b.points) < 0.5 * min(_polygon_area(a.points), _polygon_area(b.points))


class _Truth:
    def __init__(self, points):
        self.points, self.dont_care = np.asarray(points, np.float32), False


def test_auto_tiles_only_what_max_side_len_would_scale_down():
    with EdgeDetector(threads=1, max_side_len=1024) as detector:
        assert not detector._tiled((720, 1000, 3))
        assert detector._tiled((720, 2000, 3))  # 2000 > 1024: would be scaled down
    with EdgeDetector(threads=1, tile="off", max_side_len=1024) as detector:
        assert not detector._tiled((720, 2000, 3))
    with EdgeDetector(threads=1, input_size=(736, 1280)) as detector:
        assert not detector._tiled((4000, 9000, 3))
    with pytest.raises(InvalidInputError, match="limit mode"):
        EdgeDetector(threads=1, input_size=(736, 1280), tile="on")


def test_cli_takes_the_tiling_flags(tmp_path, capsys):
    import cv2

    path = tmp_path / "wide.png"
    cv2.imwrite(str(path), make_text_image(1, size=(400, 1200), words=(12, 12)).image)
    assert main(["detect", str(path), "--tile", "on", "--tile-size", "320", "--tile-overlap", "64"]) == 0
    assert "box" in capsys.readouterr().out
    assert main(["detect", str(path), "--tile", "on", "--tile-size", "320", "--tile-overlap", "200"]) == 2
    assert "--tile-overlap" in capsys.readouterr().err
