import ast
import builtins
import json
import pathlib
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import escnet
from escnet.data.vocab import (
    BENCHMARK_VOCABULARIES,
    BENCHMARKS,
    VocabularyError,
    benchmark,
    benchmark_vocabulary,
    display_name,
    known_benchmarks,
    parse_vocabulary,
    read_class_file,
)

PACKAGE = Path(escnet.__file__).resolve().parent


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


def test_unknown_benchmark_name_lists_every_name_and_alias():
    known = "coco-stuff (or coco171, coco), ade150, ade847, pc59, pc459, voc20, voc20b"
    assert known_benchmarks() == known
    for call in (parse_vocabulary, benchmark_vocabulary, benchmark):
        with pytest.raises(VocabularyError) as caught:
            call("ade151")
        assert str(caught.value) == f"unknown benchmark vocabulary 'ade151'; known: {known}"


@pytest.mark.parametrize("entry", BENCHMARKS, ids=lambda b: b.name)
def test_every_alias_is_its_benchmark(entry):
    classes = benchmark_vocabulary(entry.name)
    for spelling in (entry.name, *entry.aliases):
        for typed in (spelling, spelling.upper(), f" {spelling} "):
            assert benchmark(typed) is entry
            assert benchmark_vocabulary(typed) == classes
            assert parse_vocabulary(typed) == classes


def test_each_benchmark_is_listed_once_and_no_spelling_is_shared():
    spellings = [s.lower() for b in BENCHMARKS for s in (b.name, *b.aliases)]
    assert len(spellings) == len(set(spellings))
    assert len({b.file for b in BENCHMARKS}) == len(BENCHMARKS)
    assert BENCHMARK_VOCABULARIES == tuple(b.name for b in BENCHMARKS)
    # the dataset name and the vocabulary name of COCO-Stuff are one entry
    assert benchmark("coco-stuff") is benchmark("coco171") is benchmark("coco")
    assert len(benchmark_vocabulary("coco-stuff")) == 171


def test_read_class_file_reads_any_suffix_as_lines_and_json_as_a_list(tmp_path):
    (tmp_path / "names.lst").write_text("bag\nbag, handbag\n\n")
    assert read_class_file(tmp_path / "names.lst") == ["bag", "bag, handbag"]  # first synonyms may repeat
    (tmp_path / "names.json").write_text('["sky", ["building", "edifice"]]')
    assert read_class_file(tmp_path / "names.json") == ["sky", "building, edifice"]
    with pytest.raises(VocabularyError, match=r"^class file '.*nope.txt' not found$"):
        read_class_file(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(VocabularyError, match=r"empty vocabulary \(class file '.*empty.txt'\)"):
        read_class_file(tmp_path / "empty.txt")


def _escnet_caller() -> str:
    """The package file (relative to escnet/) of the innermost escnet frame on the stack."""
    frame = sys._getframe(2)
    while frame is not None:
        path = Path(frame.f_code.co_filename).resolve()
        if path.is_relative_to(PACKAGE):
            return path.relative_to(PACKAGE).as_posix()
        frame = frame.f_back
    return "<outside escnet>"


def test_every_class_file_is_read_by_vocab_alone(tmp_path, monkeypatch):
    """Each way escnet gets classes from a file (benchmark names, --classes files, a dataset's
    classes.txt, the synthetic benchmark's class lists, demo examples) opens it in vocab.py."""
    from escnet.data.datasets import get_dataset, load_custom_dataset
    from escnet.data.synthetic import prepare_synthetic
    from escnet.data.train_dataset import resolve_dataset
    from escnet.demo import example_rows

    readers: dict[str, set[str]] = {}

    def record(path):
        path = Path(path)
        if path.suffix in (".txt", ".json") and ("classes" in path.name or path.parent.name in ("vocab", "examples")):
            readers.setdefault(path.name, set()).add(_escnet_caller())

    real_path_open, real_open = pathlib.Path.open, builtins.open

    def path_open(self, *args, **kwargs):
        record(self)
        return real_path_open(self, *args, **kwargs)

    def plain_open(file, *args, **kwargs):
        if isinstance(file, (str, Path)):
            record(file)
        return real_open(file, *args, **kwargs)

    (tmp_path / "my_classes.json").write_text('["cat", "dog"]')
    custom = tmp_path / "custom"
    (custom / "images").mkdir(parents=True)
    (custom / "labels").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(custom / "images" / "a.png")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(custom / "labels" / "a.png")
    (custom / "classes.txt").write_text("sky\n")
    ade = tmp_path / "ADEChallengeData2016"
    for d in ("images/validation", "annotations_detectron2/validation"):
        (ade / d).mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(ade / "images" / "validation" / "a.jpg")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(ade / "annotations_detectron2" / "validation" / "a.png")
    prepare_synthetic(tmp_path, num_train=1, num_val=1, size=32)
    examples = tmp_path / "examples"
    examples.mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(examples / "x.png")
    (examples / "x.txt").write_text("cat\ndog\n")

    monkeypatch.setattr(pathlib.Path, "open", path_open)
    monkeypatch.setattr(builtins, "open", plain_open)
    assert len(parse_vocabulary("coco171")) == 171
    assert parse_vocabulary(str(tmp_path / "my_classes.json")) == ["cat", "dog"]
    assert load_custom_dataset(custom).class_names == ["sky"]
    assert get_dataset("ade150", tmp_path).num_classes == 150
    assert resolve_dataset("synthetic", tmp_path, "val").dataset.num_classes == 13
    assert example_rows(examples) == [[str(examples / "x.png"), "cat; dog"]]
    monkeypatch.undo()

    expected = {"coco171.txt", "ade150.txt", "my_classes.json", "classes.txt", "train_classes.txt", "x.txt"}
    assert set(readers) == expected
    assert {name: callers for name, callers in readers.items() if callers != {"data/vocab.py"}} == {}


def _code_nodes(tree: ast.AST):
    """Every node except docstrings (the vocabulary files are named in prose elsewhere)."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                first.value.value = None
        yield node


def test_no_other_module_knows_where_vocabularies_live_or_takes_a_first_synonym():
    """Outside vocab.py: no path into escnet/assets/vocab, and no `name.split(",")[0]` (display_name is
    the one first-synonym rule; the text encoder and the outputs use it)."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "data" / "vocab.py":
            continue
        for node in _code_nodes(ast.parse(path.read_text(encoding="utf-8"))):
            where = f"{path.relative_to(PACKAGE)}:{getattr(node, 'lineno', '?')}"
            if ((isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div)
                 and isinstance(node.right, ast.Constant) and node.right.value == "vocab")
                    or (isinstance(node, ast.Constant) and isinstance(node.value, str) and "assets/vocab" in node.value)):
                found.append(f"{where} names the vocabulary folder")
            if (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Call)
                    and isinstance(node.value.func, ast.Attribute) and node.value.func.attr in ("split", "partition")
                    and node.value.args and isinstance(node.value.args[0], ast.Constant)
                    and node.value.args[0].value in (",", ", ")):
                found.append(f"{where} takes a first synonym")
    assert found == []


@pytest.mark.parametrize("spec", ["", "  ", " , ", ";", []])
def test_empty_vocabulary(spec):
    with pytest.raises(VocabularyError, match="empty vocabulary"):
        parse_vocabulary(spec)


def test_empty_vocabulary_file(tmp_path: Path):
    path = tmp_path / "none.txt"
    path.write_text("\n\n")
    with pytest.raises(VocabularyError, match=r"empty vocabulary \(vocabulary file '.*none.txt'\)"):
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


def test_vocabulary_bounds_name_the_limit_and_how_to_raise_it(tmp_path, monkeypatch):
    from escnet.data.vocab import DEFAULT_MAX_CLASSES

    with pytest.raises(VocabularyError, match=f"over the limit of {DEFAULT_MAX_CLASSES} .*ESCNET_MAX_CLASSES"):
        parse_vocabulary([f"c{i}" for i in range(DEFAULT_MAX_CLASSES + 1)])
    monkeypatch.setenv("ESCNET_MAX_CLASSES", "3")
    with pytest.raises(VocabularyError, match="4 classes, over the limit of 3"):
        parse_vocabulary("a, b, c, d")
    assert parse_vocabulary("a, b, c") == ["a", "b", "c"]
    big = tmp_path / "big.txt"
    big.write_text("cat\n" * 300)
    monkeypatch.setenv("ESCNET_MAX_VOCAB_BYTES", "1000")
    with pytest.raises(VocabularyError, match="1200 bytes, over the limit of 1000 .*ESCNET_MAX_VOCAB_BYTES"):
        parse_vocabulary(big)
    monkeypatch.setenv("ESCNET_MAX_VOCAB_BYTES", "lots")
    with pytest.raises(VocabularyError, match="ESCNET_MAX_VOCAB_BYTES must be a positive integer"):
        parse_vocabulary(big)
    with pytest.raises(VocabularyError, match="over 1000 characters"):
        parse_vocabulary(["x" * 1001])
