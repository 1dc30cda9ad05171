import gzip
import html
import importlib.resources
import json
import random

import ftfy
import pytest
import torch

from escnet.models.tokenizer import Tokenizer, tokenize

CLASS_WORDS = """wall building sky floor tree ceiling road bed windowpane grass cabinet sidewalk person earth door table
mountain plant curtain chair car water painting sofa shelf house sea mirror rug field armchair seat fence desk rock
wardrobe lamp bathtub railing cushion base box column signboard chest-of-drawers counter sand sink skyscraper fireplace
refrigerator grandstand path stairs runway case pool-table pillow screen-door stairway river bridge bookcase blind
coffee-table toilet flower book hill bench countertop stove palm kitchen-island computer swivel-chair boat bar arcade
hovel bus towel light truck tower chandelier awning streetlight booth television airplane dirt-track apparel pole land
bannister escalator ottoman bottle buffet poster stage van ship fountain conveyer-belt canopy washer plaything
swimming-pool stool barrel basket waterfall tent bag minibike cradle oven ball food step tank trade-name microwave pot
animal bicycle lake dishwasher screen blanket sculpture hood sconce vase traffic-light tray ashcan fan pier crt-screen
plate monitor bulletin-board shower radiator glass clock flag aeroplane bird cat cow dog horse motorbike pottedplant
sheep train tvmonitor frisbee skis snowboard sports-ball kite baseball-bat baseball-glove skateboard surfboard
tennis-racket wine-glass cup fork knife spoon bowl banana apple sandwich orange broccoli carrot hot-dog pizza donut cake
couch potted-plant dining-table laptop mouse remote keyboard cell-phone toaster refrigerator scissors teddy-bear
hair-drier toothbrush banner blanket cardboard cloth clothes counter cupboard curtain dirt flower fruit gravel
house leaves mat metal napkin net paper pavement platform playingfield railroad salad snow stone straw structural
tent textile towel vegetable wood window-blind""".split()
MODIFIERS = ["", "old", "Large", "wooden", "STAINLESS steel", "toy", "broken", "3D", "no.5", "café", "naïve",
             "Zürich", "東京", "jalapeño", "x-ray", "u.s.", "o'brien", "it's", "we'll", "they're", "i'd",
             "2nd", "24/7", "#1", "(other)", "50%", "$100", "@home", "ﬁne", "—", "🙂", "...", "   spaced   "]
SEPARATORS = [" ", ", ", "  ", "\t", " / ", "-", "_", " & ", "'s "]


def _class_names(n: int = 1200) -> list[str]:
    """Benchmark-like class names plus random combinations with punctuation, digits, unicode and odd spacing."""
    rng = random.Random(0)
    names = [w.replace("-", " ") for w in CLASS_WORDS] + [w.replace("-", "_") for w in CLASS_WORDS[:60]]
    names += [f"A photo of a {w.replace('-', ' ')} in the scene" for w in CLASS_WORDS[:60]]
    names += ["building, edifice", "sky, heaven", "tree, trees", "grass, lawn, turf"]
    while len(names) < n:
        parts = [rng.choice(MODIFIERS), rng.choice(CLASS_WORDS), rng.choice(CLASS_WORDS)][: rng.randint(1, 3)]
        text = rng.choice(SEPARATORS).join(parts)
        if rng.random() < 0.3:
            text = text.upper() if rng.random() < 0.5 else text.title()
        if rng.random() < 0.2:
            text = f"{text} {rng.randint(0, 10 ** rng.randint(1, 6))}"
        names.append(text)
    return names


@pytest.fixture(scope="module")
def tok():
    return Tokenizer()


@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory):
    """transformers' CLIPTokenizer from vocab.json + merges.txt written independently from the same BPE file."""
    transformers = pytest.importorskip("transformers")
    raw = importlib.resources.files("escnet").joinpath("assets/bpe_simple_vocab_16e6.txt.gz").read_bytes()
    merges = gzip.decompress(raw).decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars = [chr(b) for b in printable] + [chr(256 + i) for i in range(256 - len(printable))]
    vocab = chars + [c + "</w>" for c in chars] + [m.replace(" ", "") for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    d = tmp_path_factory.mktemp("hf_tok")
    (d / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}), encoding="utf-8")
    (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return transformers.CLIPTokenizer.from_pretrained(str(d))


def test_known_ids():
    # the example from OpenAI's CLIP README: clip.tokenize(["a diagram", "a dog", "a cat"])
    ids = tokenize(["a diagram", "a dog", "a cat"])
    assert ids.shape == (3, 77) and ids.dtype == torch.long
    assert ids[:, :4].tolist() == [[49406, 320, 22697, 49407], [49406, 320, 1929, 49407], [49406, 320, 2368, 49407]]
    assert (ids[:, 4:] == 0).all()


def test_matches_transformers_on_class_names(tok, hf_tokenizer):
    names = _class_names()
    assert len(names) >= 1000
    ours = tok(names)
    mismatches = []
    for name, row in zip(names, ours):
        # transformers' fast CLIP tokenizer normalises with NFC only; OpenAI's cleaning is ftfy + HTML unescape
        ref = hf_tokenizer(html.unescape(html.unescape(ftfy.fix_text(name))))["input_ids"]
        got = row[: len(ref)].tolist()
        if got != ref or row[len(ref):].any():
            mismatches.append((name, got, ref))
    assert not mismatches, mismatches[:5]


def test_cleaning_and_case(tok):
    assert tok.encode("  Traffic   LIGHT\n") == tok.encode("traffic light")
    assert tok.encode("rock &amp; roll") == tok.encode("rock & roll")  # HTML entities are unescaped
    assert tok.encode("it’s") == tok.encode("it's")  # ftfy straightens curly quotes
    assert tok.encode("") == []


def test_truncation_keeps_eot(tok):
    ids = tok(["word " * 200, "cat"], context_length=77)
    assert ids.shape == (2, 77)
    assert ids[0, 0] == tok.sot_id and ids[0, -1] == tok.eot_id and (ids[0, 1:-1] != tok.eot_id).all()
    assert ids[1, :3].tolist() == [tok.sot_id, 2368, tok.eot_id]
    assert tok(["cat"], context_length=5).tolist() == [[tok.sot_id, 2368, tok.eot_id, 0, 0]]
    with pytest.raises(ValueError, match="context_length"):
        tok(["cat"], context_length=1)


def test_decode_round_trip(tok):
    for text in ["a photo of a cat in the scene", "zürich 東京 café", "50% off!!"]:
        assert tok.decode(tok(text)[0].tolist()) == tok.decode(tok.encode(text)) == " ".join(
            tok.decode(tok.encode(w)) for w in text.split())


def test_vocabulary_layout(tok):
    assert tok.vocab_size == 49408
    assert (tok.sot_id, tok.eot_id) == (49406, 49407)
    assert tok.decoder[256] == "!</w>" and tok.decoder[512] == "".join(tok.merges[0])


def test_long_names_cost_bounded_time_and_fill_the_context():
    import random
    import time

    from escnet.models.tokenizer import MAX_PIECE_BYTES, Tokenizer

    tok = Tokenizer()
    rng = random.Random(0)
    word = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(40_000))
    start = time.perf_counter()
    out = tok([word, "a " * 50_000, "&amp;" * 20_000])
    assert time.perf_counter() - start < 2.0  # was 99 s for the 40,000-letter name
    assert out.shape == (3, 77) and bool((out[:, -1] == tok.eot_id).all())
    # names that fit are tokenized as before: the cut never reaches them
    short = "A photo of a " + word[:MAX_PIECE_BYTES] + " in the scene"
    ids = tok.encode(short)
    assert tok(short)[0, 1:len(ids) + 1].tolist() == ids and len(ids) < 75
