"""Tests for wsseg.data.read_class_names (class-list text files of VOC-layout datasets)."""

from __future__ import annotations

import pytest

from wsseg.data import VOC_CLASSES, read_class_names


def _write(tmp_path, text, name="class_names.txt"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("bg", ["background", "_background_", "__background__", "bg", "BG", "Null", "Background"])
def test_background_line_is_dropped(tmp_path, bg):
    path = _write(tmp_path, f"{bg}\nshirt\npants\nshoes\n")
    assert read_class_names(path) == ("shirt", "pants", "shoes")


def test_foreground_only_file(tmp_path):
    path = _write(tmp_path, "shirt\npants\nshoes")  # no trailing newline
    assert read_class_names(path, background=False) == ("shirt", "pants", "shoes")


def test_whitespace_and_trailing_blank_lines(tmp_path):
    path = _write(tmp_path, "  background \nshirt\r\n  dining table  \n\n  \n")
    assert read_class_names(path) == ("shirt", "dining table")


@pytest.mark.parametrize("text, line", [
    ("background\nshirt\n\npants\nshoes\n", 3),          # a blank line in the middle
    ("\nbackground\nshirt\n", 1),                          # a leading blank line
    ("background\nshirt\n   \npants\n", 3),                # whitespace-only counts as blank
])
def test_blank_line_before_a_name_is_an_error(tmp_path, text, line):
    path = _write(tmp_path, text, "holes.txt")
    with pytest.raises(ValueError, match=rf"holes.txt: line {line} is blank but names follow"):
        read_class_names(path)


def test_blank_line_in_a_53_class_file_does_not_lose_a_class(tmp_path):
    # the report of issue 16: a blank line inside a 53-class list gave K = 52 with 'cardigan' lost
    names = [f"class{i}" for i in range(53)]
    names[10] = "cardigan"
    path = _write(tmp_path, "\n".join(names[:10] + [""] + names[10:]) + "\n", "ccp.txt")
    with pytest.raises(ValueError, match="ccp.txt: line 11 is blank"):
        read_class_names(path, background=False)
    path.write_text("\n".join(names) + "\n")
    out = read_class_names(path, background=False)
    assert len(out) == 53 and out[10] == "cardigan"


def test_voc_file_with_background(tmp_path):
    path = _write(tmp_path, "\n".join(["background", *VOC_CLASSES]) + "\n")
    assert read_class_names(path) == VOC_CLASSES
    assert read_class_names(str(path)) == VOC_CLASSES


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_class_names(tmp_path / "nope.txt")


@pytest.mark.parametrize("text", ["", "\n\n  \n"])
def test_empty_file(tmp_path, text):
    path = _write(tmp_path, text, "empty.txt")
    with pytest.raises(ValueError, match="empty.txt.*empty"):
        read_class_names(path)
    with pytest.raises(ValueError, match="empty.txt.*empty"):
        read_class_names(path, background=False)


def test_repeated_name(tmp_path):
    path = _write(tmp_path, "background\nshirt\npants\nshirt\n", "dup.txt")
    with pytest.raises(ValueError, match="dup.txt.*'shirt' repeats \\(lines 2 and 4\\)"):
        read_class_names(path)


def test_missing_background_line_suggests_the_flag(tmp_path):
    path = _write(tmp_path, "shirt\npants\n", "fg_only.txt")
    with pytest.raises(ValueError, match="fg_only.txt") as err:
        read_class_names(path)
    assert "background=False" in str(err.value) and "--no-background" in str(err.value)
    assert "'shirt'" in str(err.value)


def test_background_line_with_background_false(tmp_path):
    path = _write(tmp_path, "_background_\nshirt\n", "with_bg.txt")
    with pytest.raises(ValueError, match="with_bg.txt.*'_background_'.*background=True"):
        read_class_names(path, background=False)


def test_only_background_line(tmp_path):
    path = _write(tmp_path, "background\n", "bg_only.txt")
    with pytest.raises(ValueError, match="bg_only.txt.*no foreground"):
        read_class_names(path)


def test_ccp_voc_class_names(ccp_voc_dir):
    path = ccp_voc_dir / "class_names.txt"
    names = read_class_names(path, background=False)
    assert len(names) == 53 and len(set(names)) == 53
    assert names[:3] == ("accessories", "bag", "belt")
    assert {"shoes", "pants", "sunglasses", "skirt", "dress", "clogs", "hoodie"} <= set(names)
    assert not {"null", "skin", "hair"} & set(names)  # 0 and 255 in the masks, not classes
    with pytest.raises(ValueError, match="class_names.txt.*background=False"):
        read_class_names(path)
