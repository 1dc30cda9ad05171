import json
from pathlib import Path

import pytest

from escnet.data.vocab import (
    BENCHMARK_VOCABULARIES,
    VocabularyError,
    benchmark_vocabulary,
    display_name,
    parse_vocabulary,
)


def test_comma_string_gives_one_class_per_item():
    assert parse_vocabulary(" cat,dog , blue sky") == ["cat", "dog", "blue sky"]


def test_semicolon_string_keeps_commas_as_synonyms():
    entries = parse_vocabulary("building,edifice; sky ;tree")
    assert entries == ["building, edifice", "sky", "tree"]
    assert [display_name(e) for e in entries] == ["building", "sky", "tree"]


def test_trailing_separator_is_not_an_empty_class():
    assert parse_vocabulary("cat, dog,") == ["cat", "dog"]
    assert parse_vocabulary("cat; dog;") == ["cat", "dog"]


def test_python_list_and_list_of_synonym_lists():
    assert parse_vocabulary(["cat", "building, edifice"]) == ["cat", "building, edifice"]
    assert parse_vocabulary([["building", "edifice"], ("sky",)]) == ["building, edifice", "sky"]


def test_txt_file_one_class_per_line(tmp_path: Path):
    path = tmp_path / "classes.txt"
    path.write_text("building, edifice\n\nsky\n  tree  \n", encoding="utf-8")
    assert parse_vocabulary(str(path)) == ["building, edifice", "sky", "tree"]
    assert parse_vocabulary(path) == ["building, edifice", "sky", "tree"]


def test_json_file_strings_or_synonym_lists(tmp_path: Path):
    path = tmp_path / "classes.json"
    path.write_text(json.dumps(["cat", ["building", "edifice"]]))
    assert parse_vocabulary(str(path)) == ["cat", "building, edifice"]


def test_json_file_must_hold_a_list(tmp_path: Path):
    path = tmp_path / "classes.json"
    path.write_text(json.dumps({"classes": ["cat"]}))
    with pytest.raises(VocabularyError, match="must hold a JSON list of class names, got dict"):
        parse_vocabulary(str(path))
    path.write_text("[cat")
    with pytest.raises(VocabularyError, match="is not valid JSON"):
        parse_vocabulary(str(path))


@pytest.mark.parametrize("name, size", [
    ("coco171", 171), ("ade150", 150), ("ade847", 847), ("pc59", 59), ("pc459", 459), ("voc20", 20),
])
def test_benchmark_vocabularies_have_their_sizes(name, size):
    entries = parse_vocabulary(name)
    assert len(entries) == size
    assert entries == benchmark_vocabulary(name.upper())


def test_every_benchmark_vocabulary_loads():
    for name in BENCHMARK_VOCABULARIES:
        assert len(benchmark_vocabulary(name)) >= 20


def test_ade847_synonyms_are_kept():
    assert "building, edifice" in benchmark_vocabulary("ade847")


def test_unknown_benchmark_name():
    with pytest.raises(VocabularyError, match=r"unknown benchmark vocabulary 'ade151'; known: coco171, ade150"):
        parse_vocabulary("ade151")


@pytest.mark.parametrize("spec", ["", "  ", " , ", ";", []])
def test_empty_vocabulary(spec):
    with pytest.raises(VocabularyError, match="empty vocabulary"):
        parse_vocabulary(spec)


def test_empty_vocabulary_file(tmp_path: Path):
    path = tmp_path / "none.txt"
    path.write_text("\n\n")
    with pytest.raises(VocabularyError, match=r"empty vocabulary \('.*none.txt'\)"):
        parse_vocabulary(str(path))


@pytest.mark.parametrize("spec, where", [(", cat", "class 1"), ("cat,,dog", "class 2"), (["cat", " "], "class 2")])
def test_empty_class_name(spec, where):
    with pytest.raises(VocabularyError, match=f"empty class name at {where}"):
        parse_vocabulary(spec)


def test_empty_synonym():
    with pytest.raises(VocabularyError, match="empty synonym in class 'building, ' at class 1"):
        parse_vocabulary("building,; sky")


def test_duplicate_names_are_reported_with_positions():
    with pytest.raises(VocabularyError, match=r"duplicate class name 'Cat' in the class string \(classes 1 and 3\)"):
        parse_vocabulary("cat, dog, Cat")
    with pytest.raises(VocabularyError, match=r"duplicate class name 'sky' in the class list \(classes 1 and 2\)"):
        parse_vocabulary(["sky", "sky"])


def test_entries_sharing_a_first_synonym_are_distinct_classes():
    assert len(parse_vocabulary("screen, crt screen; screen, silver screen")) == 2


def test_missing_or_badly_named_file(tmp_path: Path):
    with pytest.raises(VocabularyError, match=r"vocabulary file '.*nope.txt' not found"):
        parse_vocabulary(str(tmp_path / "nope.txt"))
    other = tmp_path / "classes.csv"
    other.write_text("cat")
    with pytest.raises(VocabularyError, match="must end in .txt or .json"):
        parse_vocabulary(other)


def test_wrong_types():
    with pytest.raises(VocabularyError, match="got int"):
        parse_vocabulary(3)
    with pytest.raises(VocabularyError, match="class 2 of the class list must be a string or a list of strings"):
        parse_vocabulary(["cat", 5])


def test_inner_whitespace_is_collapsed_and_duplicates_after_it_are_an_error():
    assert parse_vocabulary(["dark \t red", " sky  blue "]) == ["dark red", "sky blue"]
    with pytest.raises(VocabularyError, match="duplicate class name 'dark red'"):
        parse_vocabulary("dark red, dark  red")


@pytest.mark.parametrize("suffix, text", [(".txt", "cat\ndog\n"), (".json", '["cat", "dog"]')])
def test_utf8_bom_is_not_part_of_the_first_name(tmp_path: Path, suffix, text):
    path = tmp_path / f"classes{suffix}"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert parse_vocabulary(str(path)) == ["cat", "dog"]
    assert parse_vocabulary("\ufeffcat, dog") == ["cat", "dog"]


def test_a_class_string_that_looks_like_an_unopenable_file_is_a_vocabulary_error():
    with pytest.raises(VocabularyError, match="cannot be opened"):
        parse_vocabulary("x" * 5000 + "; cat.txt")  # found by tools/fuzz.py: OSError "File name too long"
    with pytest.raises(VocabularyError, match="not found"):
        parse_vocabulary("a\x00b.txt")
