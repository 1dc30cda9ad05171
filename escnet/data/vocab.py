"""Vocabularies: the class lists a user segments with.

A vocabulary is a list of *entries*. An entry is one class, written as one or more synonyms joined
by ", " ("building, edifice"). The first synonym is the class's display name and the one the text
encoder sees (docs/design.md, "CLIP text encoder"); the rest document what the class covers.

Accepted specifications (`parse_vocabulary`):

- a Python list or tuple: each item is one entry; an item may itself be a list of synonyms;
- a string naming a benchmark (any name or alias in `BENCHMARKS`), e.g. ``"ade150"``, ``"coco-stuff"``;
- a path (str or Path) to a ``.txt`` file: one class per line, commas within a line separate
  synonyms, blank lines are ignored;
- a path to a ``.json`` file: a list of strings (entries), or of lists of strings (synonyms);
- any other string: a list of classes. If the string contains ";" the classes are separated by ";"
  and commas inside a class separate synonyms ("building, edifice; sky"); otherwise every
  comma-separated item is its own class ("cat, dog, sky").

Names are normalised: whitespace runs inside a name become one space and a byte-order mark (a
UTF-8 file's BOM) is dropped. Empty names, duplicate classes (identical entries after
normalisation, case-insensitive: "dark red, dark  red" is one class given twice) and empty
vocabularies are errors (`VocabularyError`).

Bounds (checked before anything is allocated for them): a vocabulary file is read only if it has at
most `max_vocabulary_bytes()` bytes (default 4 MiB, ``ESCNET_MAX_VOCAB_BYTES`` raises it), a
vocabulary has at most `max_classes()` classes (default 10,000, ``ESCNET_MAX_CLASSES``) and a class
entry at most MAX_ENTRY_CHARS characters. Entries that differ but share a first synonym are allowed (ADE-847 has
several); they get the same text features, so the lower id wins their ties.

This module is the one reader of class files (`read_class_file`: benchmark vocabularies, a
dataset's ``classes.txt``, ``--classes`` files) and holds the one table of benchmark names
(`BENCHMARKS`): each benchmark once, under the name escnet writes everywhere, with the other
spellings users type ("coco171" and "coco" for "coco-stuff"). escnet.data.datasets keys its
folder layouts by these names.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Sequence, Union

from escnet.errors import EscnetError


@dataclass(frozen=True)
class Benchmark:
    """One benchmark's names. ``name``: how escnet spells it (dataset tables, results, messages);
    ``aliases``: other accepted spellings; ``file``: its class list, escnet/assets/vocab/<file>.txt
    (one class per line, index = train id)."""

    name: str
    file: str
    aliases: tuple[str, ...] = ()


# The seven open-vocabulary benchmarks, each once. Names are matched case-insensitively.
BENCHMARKS = (
    Benchmark("coco-stuff", "coco171", aliases=("coco171", "coco")),
    Benchmark("ade150", "ade150"),
    Benchmark("ade847", "ade847"),
    Benchmark("pc59", "pc59"),
    Benchmark("pc459", "pc459"),
    Benchmark("voc20", "voc20"),
    Benchmark("voc20b", "voc20b"),
)
BENCHMARK_VOCABULARIES = tuple(b.name for b in BENCHMARKS)
_BY_NAME = {spelling.lower(): b for b in BENCHMARKS for spelling in (b.name, *b.aliases)}

# A bare word that looks like a benchmark name but is not one is almost certainly a typo
# ("ade151"), not a one-class vocabulary, so it is reported instead of segmented.
_BENCHMARK_LIKE = re.compile(r"^(coco|ade|pc|voc)\d+b?$", re.IGNORECASE)

DEFAULT_MAX_VOCAB_BYTES = 4 * 2**20  # ADE-847's list is 9 KB; 4 MiB holds ~400,000 short names
DEFAULT_MAX_CLASSES = 10_000  # 12 x ADE-847; every class is encoded and scored for every image
MAX_ENTRY_CHARS = 1000  # CLIP reads at most 77 tokens of a name


def _env_limit(variable: str, default: int) -> int:
    text = os.environ.get(variable, "").strip()
    if not text:
        return default
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise VocabularyError(f"{variable} must be a positive integer, got {text!r:.40}") from None
    if value < 1:
        raise VocabularyError(f"{variable} must be a positive integer, got {value}")
    return value


def max_vocabulary_bytes() -> int:
    """The largest vocabulary file read: $ESCNET_MAX_VOCAB_BYTES, else DEFAULT_MAX_VOCAB_BYTES."""
    return _env_limit("ESCNET_MAX_VOCAB_BYTES", DEFAULT_MAX_VOCAB_BYTES)


def max_classes() -> int:
    """The most classes a vocabulary may have: $ESCNET_MAX_CLASSES, else DEFAULT_MAX_CLASSES."""
    return _env_limit("ESCNET_MAX_CLASSES", DEFAULT_MAX_CLASSES)


VocabularySpec = Union[str, Path, Sequence[Union[str, Sequence[str]]]]


class VocabularyError(EscnetError, ValueError):
    """A vocabulary specification that cannot be used (names the problem and where it is)."""


def display_name(entry: str) -> str:
    """The first synonym of an entry: "building, edifice" -> "building"."""
    return entry.split(",")[0].strip()


def _normalise(name: str) -> str:
    """Whitespace runs inside a name become one space ("dark  red" is "dark red"); a BOM is dropped."""
    return " ".join(name.replace("\ufeff", "").split())


def _entry(synonyms: Sequence[str], where: str) -> str:
    if sum(len(s) for s in synonyms) > MAX_ENTRY_CHARS:
        raise VocabularyError(f"class at {where} has over {MAX_ENTRY_CHARS} characters; a class name is a few words")
    names = [_normalise(s) for s in synonyms]
    if not names or not names[0]:
        raise VocabularyError(f"empty class name at {where}")
    if any(not n for n in names):
        raise VocabularyError(f"empty synonym in class {', '.join(names)!r} at {where}")
    return ", ".join(names)


def _check(entries: list[str], source: str) -> list[str]:
    if not entries:
        raise VocabularyError(f"empty vocabulary ({source}): give at least one class name")
    # Whole entries are compared, not display names: benchmarks such as ADE-847 hold distinct
    # classes that share a first synonym ("screen, crt screen" / "screen, silver screen").
    first_seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        key = entry.lower()
        if key in first_seen:
            raise VocabularyError(
                f"duplicate class name {entry!r} in {source} (classes {first_seen[key] + 1} and {i + 1})"
            )
        first_seen[key] = i
    return entries


def _check_count(count: int, source: str) -> None:
    limit = max_classes()
    if count > limit:
        raise VocabularyError(f"{source} has {count} classes, over the limit of {limit} "
                              f"(raise it with ESCNET_MAX_CLASSES={count})")


def _from_items(items: Sequence, source: str) -> list[str]:
    _check_count(len(items), source)
    entries = []
    for i, item in enumerate(items):
        where = f"class {i + 1} of {source}"
        if isinstance(item, str):
            entries.append(_entry(item.split(","), where))
        elif isinstance(item, (list, tuple)) and all(isinstance(s, str) for s in item):
            entries.append(_entry(item, where))
        else:
            raise VocabularyError(f"{where} must be a string or a list of strings, got {type(item).__name__}")
    return _check(entries, source)


def _from_string(text: str) -> list[str]:
    source = "the class string"
    if len(text) > max_vocabulary_bytes():
        raise VocabularyError(f"{source} has {len(text)} characters, over the limit of {max_vocabulary_bytes()} "
                              f"(raise it with ESCNET_MAX_VOCAB_BYTES)")
    if ";" in text:
        items = text.split(";")
    else:
        items = [[name] for name in text.split(",")]
    # A trailing separator ("cat, dog,") is a common typing habit, not an empty class.
    while items and not "".join(items[-1]).strip():
        items.pop()
    return _from_items(items, source)


def _from_txt(text: str, source: str) -> list[str]:
    return _from_items([line for line in text.splitlines() if line.strip()], source)


def _from_json(text: str, source: str) -> list[str]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise VocabularyError(f"{source} is not valid JSON: {exc}") from None
    if not isinstance(data, list):
        raise VocabularyError(f"{source} must hold a JSON list of class names, got {type(data).__name__}")
    return _from_items(data, source)


def known_benchmarks() -> str:
    """The accepted benchmark names for a message: "coco-stuff (or coco171, coco), ade150, ..."."""
    return ", ".join(f"{b.name} (or {', '.join(b.aliases)})" if b.aliases else b.name for b in BENCHMARKS)


def find_benchmark(name: str) -> Benchmark | None:
    """The `BENCHMARKS` entry that `name` (the name or an alias, any case) spells, else None."""
    return _BY_NAME.get(name.strip().lower())


def benchmark(name: str) -> Benchmark:
    """The `BENCHMARKS` entry of `name`; a VocabularyError listing the known names if there is none."""
    found = find_benchmark(name)
    if found is None:
        raise VocabularyError(f"unknown benchmark vocabulary {name!r}; known: {known_benchmarks()}")
    return found


def benchmark_vocabulary(name: str) -> list[str]:
    """The class entries of a named benchmark (escnet/assets/vocab/<file>.txt), in label-id order."""
    entry = benchmark(name)
    resource = resources.files("escnet") / "assets" / "vocab" / f"{entry.file}.txt"
    if not resource.is_file():
        raise VocabularyError(
            f"benchmark vocabulary file for {entry.name!r} is missing from this installation ({resource})")
    return _from_txt(resource.read_text(encoding="utf-8"), f"benchmark vocabulary {entry.name!r}")


def parse_vocabulary(spec: VocabularySpec) -> list[str]:
    """Turn any accepted specification (module docstring) into a checked list of entries."""
    if isinstance(spec, Path):
        return _from_file(spec)
    if isinstance(spec, str):
        stripped = spec.strip()
        if find_benchmark(stripped) is not None or _BENCHMARK_LIKE.match(stripped):
            return benchmark_vocabulary(stripped)
        if stripped.lower().endswith((".txt", ".json")):
            return _from_file(Path(stripped))
        return _from_string(spec)
    if isinstance(spec, (list, tuple)):
        return _from_items(spec, "the class list")
    raise VocabularyError(
        f"a vocabulary must be a string, a path or a list of class names, got {type(spec).__name__}"
    )


def _from_file(path: Path) -> list[str]:
    if path.suffix.lower() not in (".txt", ".json"):
        raise VocabularyError(f"vocabulary file {_shown(path)} must end in .txt or .json")
    return read_class_file(path, "vocabulary file")


def _shown(path: Path) -> str:
    return repr(str(path)) if len(str(path)) <= 200 else repr(str(path)[:200]) + "..."


def read_class_file(path: str | Path, what: str = "class file") -> list[str]:
    """The checked entries of a class file, index = label value: a ``.json`` list (module
    docstring), any other name one class per line (commas separate synonyms, blank lines skipped).
    Errors name the file as `what` ("class file 'x/classes.txt' not found")."""
    path = Path(path)
    shown = f"{what} {_shown(path)}"
    try:
        found = path.is_file()
    except (OSError, ValueError) as exc:  # a name too long for the file system, a NUL byte, ...
        raise VocabularyError(f"{shown} cannot be opened ({exc.__class__.__name__})") from None
    if not found:
        raise VocabularyError(f"{shown} not found")
    limit = max_vocabulary_bytes()
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            data = f.read(limit + 1) if size <= limit else b""
        if size > limit or len(data) > limit:  # the size, then what was read (a file that grew)
            raise VocabularyError(f"{shown} has {max(size, len(data))} bytes, over the limit of {limit} for a "
                                  f"vocabulary file (raise it with ESCNET_MAX_VOCAB_BYTES={max(size, len(data))})")
        text = data.decode("utf-8-sig")  # -sig: a BOM is not part of the first name
    except UnicodeDecodeError:
        raise VocabularyError(f"{shown} is not UTF-8 text") from None
    except OSError as exc:
        raise VocabularyError(f"{shown} cannot be read ({exc.strerror or exc})") from None
    if path.suffix.lower() == ".json":
        return _from_json(text, shown)
    return _from_txt(text, shown)
