"""Grid encoders: exact texts of spec §2.2, round trips, strict checks, safe spec parsing."""
import pytest
from hypothesis import given, settings, strategies as st

from pipeline.core.encoders import GridParseError, create_grid_encoder, DEFAULT_ENCODER

GRID = [[0, 1, 2], [3, 4, 5], [6, 7, 8]]

SPEC_TABLE = [
    ("MinimalGridEncoder()", "012\n345\n678"),
    ("GridWithSeparationEncoder('|')", "0|1|2\n3|4|5\n6|7|8"),
    ("RepeatNumberEncoder(2)", "001122\n334455\n667788"),
    ("GridCodeBlockEncoder(MinimalGridEncoder())", "```grid\n012\n345\n678\n```"),
    ("GridCodeBlockEncoder(GridWithSeparationEncoder('|'))", "```grid\n0|1|2\n3|4|5\n6|7|8\n```"),
    ("GridCodeBlockEncoder(RepeatNumberEncoder(3))", "```grid\n000111222\n333444555\n666777888\n```"),
    ("GridCodeBlockEncoder(RowNumberEncoder(MinimalGridEncoder()))", "```grid\n1 012\n2 345\n3 678\n```"),
    ("GridShapeEncoder(MinimalGridEncoder())", "```grid shape: 3x3\n012\n345\n678\n```"),
    ("GridShapeEncoder(RepeatNumberEncoder(3))", "```grid shape: 3x3\n000111222\n333444555\n666777888\n```"),
    ("GridShapeEncoder(RowNumberEncoder(MinimalGridEncoder()))", "```grid shape: 3x3\n1 012\n2 345\n3 678\n```"),
    ("GridShapeEncoder(ReplaceNumberEncoder(MinimalGridEncoder()))", "```grid shape: 3x3\nñò÷\nûąć\nďęĚ\n```"),
    ("GridShapeEncoder(RowNumberEncoder(ReplaceNumberEncoder(MinimalGridEncoder())))",
     "```grid shape: 3x3\n1 ñò÷\n2 ûąć\n3 ďęĚ\n```"),
    ("GridShapeEncoder(RowNumberEncoder(RepeatNumberEncoder()))",
     "```grid shape: 3x3\n1 000111222\n2 333444555\n3 666777888\n```"),
]


@pytest.mark.parametrize("spec,text", SPEC_TABLE)
def test_exact_text_and_round_trip(spec, text):
    encoder = create_grid_encoder(spec)
    assert encoder.to_text(GRID) == text
    assert encoder.to_grid(text) == GRID
    assert encoder.to_grid(text, strict=True) == GRID


grids = st.integers(1, 30).flatmap(lambda h: st.integers(1, 30).flatmap(
    lambda w: st.lists(st.lists(st.integers(0, 9), min_size=w, max_size=w), min_size=h, max_size=h)))


@settings(max_examples=60, deadline=None)
@given(grid=grids, spec=st.sampled_from([s for s, _ in SPEC_TABLE]))
def test_round_trip_random_grids(grid, spec):
    encoder = create_grid_encoder(spec)
    assert encoder.to_grid(encoder.to_text(grid), strict=True) == grid


def test_default_encoder_parses_a_model_response_with_trailing_text():
    encoder = create_grid_encoder(DEFAULT_ENCODER)
    assert encoder.to_grid("```grid shape: 1x3\n1 220\n```<|im_end|>") == [[2, 2, 0]]
    # missing closing fence: lenient mode decodes to the end, strict mode refuses
    assert encoder.to_grid("```grid shape: 1x2\n1 22") == [[2, 2]]
    with pytest.raises(GridParseError, match="not closed"):
        encoder.to_grid("```grid shape: 1x2\n1 22", strict=True)


@pytest.mark.parametrize("text,message", [
    ("```grid shape: 2x3\n1 012\n```", "header says 2x3 but the body is 1x3"),
    ("```grid shape: 2x3\n1 012\n3 345\n```", "row number '3', expected 2"),
    ("```grid shape: 1x3\n1 0a2\n```", "not a row of digits"),
    ("```grid shape: 2x3\n1 012\n2 34\n```", "row 2 has 2 cells"),
    ("no grid here", "no ```grid shape: header"),
])
def test_strict_parse_errors_say_what_is_wrong(text, message):
    encoder = create_grid_encoder(DEFAULT_ENCODER)
    with pytest.raises(GridParseError, match=message):
        encoder.to_grid(text, strict=True)


def test_lenient_mode_ignores_header_and_row_numbers_like_the_original():
    encoder = create_grid_encoder(DEFAULT_ENCODER)
    assert encoder.to_grid("```grid shape: 9x9\n7 012\n```") == [[0, 1, 2]]


@pytest.mark.parametrize("spec,message", [
    ("__import__('os').system('true')", "unsupported expression"),
    ("EvilEncoder()", "unknown encoder 'EvilEncoder'"),
    ("RowNumberEncoder(", "cannot parse"),
    ("RepeatNumberEncoder(0)", "positive int"),
    ("RowNumberEncoder()", "bad arguments"),
    ("3", "is not an encoder"),
])
def test_spec_parser_never_evaluates_and_explains_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        create_grid_encoder(spec)


def test_keyword_arguments_and_repr_round_trip():
    encoder = create_grid_encoder("GridShapeEncoder(RowNumberEncoder(RepeatNumberEncoder(n=2)))")
    assert repr(encoder) == "GridShapeEncoder(RowNumberEncoder(RepeatNumberEncoder(2)))"
    assert create_grid_encoder(repr(encoder)).to_text(GRID) == encoder.to_text(GRID)
