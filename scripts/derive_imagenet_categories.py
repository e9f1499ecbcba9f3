#!/usr/bin/env python3
"""Derive ``pl_energy/data/imagenet_high_level_27.json`` (run once; output is committed).

Maps each of the 1000 ILSVRC-2012 classes to one of ImageNet's 27 high-level
categories (amphibian, animal, appliance, bird, covering, device, fabric, fish,
flower, food, fruit, fungus, furniture, geological formation, invertebrate,
mammal, musical instrument, person, plant, reptile, sport, structure, tool,
tree, utensil, vegetable, vehicle) through WordNet 3.0 hypernyms.

Inputs
------
* the 1000 ILSVRC wnids in class-index order, as shipped by ``timm`` in
  ``timm/data/_info/imagenet_synsets.txt`` (``pip install timm --no-deps`` is
  enough; timm is *not* imported, only located, and is not a dependency of
  pl_energy). Pass ``--synsets PATH`` to use another copy of the file.
* WordNet 3.0 ``data.noun`` from Debian's ``wordnet-base`` package
  (``apt-get install -y wordnet-base`` -> ``/usr/share/wordnet/data.noun``).
  The file is parsed directly (no nltk).

Rule
----
* The ancestors of a class are all synsets reachable through hypernym
  (``@``) and instance-hypernym (``@i``) pointers, the class itself included.
* The depth of a synset is the length of its LONGEST hypernym path to the
  root ``entity.n.01`` (entity has depth 0).
* A class is assigned the category among its ancestors with the greatest
  depth, i.e. its most specific category in the hierarchy (not the nearest
  one by pointer hops). Ties (equal depth) are broken alphabetically and
  reported; with WordNet 3.0 there are none. Using the shortest path instead
  changes no assignment (the script prints this check too).
* Classes with none of the 27 categories among their ancestors are listed as
  ``unmapped``.

The category synsets are the ones ImageNet itself uses for its top-level
categories (see ``CATEGORY_SYNSETS``); e.g. ``food`` is ``food.n.01``
(n00021265, "food, nutrient"), ``plant`` is ``plant.n.02`` (flora),
``appliance`` is ``appliance.n.02`` (durable goods for home or office use),
``covering`` is ``covering.n.02`` (an artifact that covers something).

Usage::

    python3 scripts/derive_imagenet_categories.py \
        [--synsets timm/data/_info/imagenet_synsets.txt] \
        [--wordnet /usr/share/wordnet/data.noun] \
        [--out pl_energy/data/imagenet_high_level_27.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections import Counter
from functools import lru_cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "pl_energy" / "data" / "imagenet_high_level_27.json"
DEFAULT_WORDNET = Path("/usr/share/wordnet/data.noun")

# category name -> (WordNet 3.0 sense name, wnid). Alphabetical order = label order.
CATEGORY_SYNSETS: dict[str, tuple[str, str]] = {
    "amphibian": ("amphibian.n.03", "n01627424"),
    "animal": ("animal.n.01", "n00015388"),
    "appliance": ("appliance.n.02", "n02729837"),
    "bird": ("bird.n.01", "n01503061"),
    "covering": ("covering.n.02", "n03122748"),
    "device": ("device.n.01", "n03183080"),
    "fabric": ("fabric.n.01", "n03309808"),
    "fish": ("fish.n.01", "n02512053"),
    "flower": ("flower.n.01", "n11669921"),
    "food": ("food.n.01", "n00021265"),
    "fruit": ("fruit.n.01", "n13134947"),
    "fungus": ("fungus.n.01", "n12992868"),
    "furniture": ("furniture.n.01", "n03405725"),
    "geological formation": ("geological_formation.n.01", "n09287968"),
    "invertebrate": ("invertebrate.n.01", "n01905661"),
    "mammal": ("mammal.n.01", "n01861778"),
    "musical instrument": ("musical_instrument.n.01", "n03800933"),
    "person": ("person.n.01", "n00007846"),
    "plant": ("plant.n.02", "n00017222"),
    "reptile": ("reptile.n.01", "n01661091"),
    "sport": ("sport.n.01", "n00523513"),
    "structure": ("structure.n.01", "n04341686"),
    "tool": ("tool.n.01", "n04451818"),
    "tree": ("tree.n.01", "n13104059"),
    "utensil": ("utensil.n.01", "n04516672"),
    "vegetable": ("vegetable.n.01", "n07707451"),
    "vehicle": ("vehicle.n.01", "n04524313"),
}
ROOT = "n00001740"  # entity.n.01

SANITY = {
    "n01440764": "fish",  # tench
    "n02123045": "mammal",  # tabby cat
    "n03028079": "structure",  # church
    "n04467665": "vehicle",  # trailer truck
}


def find_timm_synsets() -> Path:
    spec = importlib.util.find_spec("timm")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "timm is not installed: run `pip install timm --no-deps` or pass --synsets PATH "
            "to timm/data/_info/imagenet_synsets.txt"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "_info" / "imagenet_synsets.txt"
    if not path.is_file():
        raise SystemExit(f"{path} not found in the installed timm; pass --synsets PATH")
    return path


def parse_data_noun(path: Path) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Return (wnid -> hypernym wnids via @ and @i, wnid -> words)."""
    hypernyms: dict[str, list[str]] = {}
    words: dict[str, list[str]] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("  "):  # license header
                continue
            fields = line.split("|", 1)[0].split()
            offset, _lex_filenum, ss_type = fields[0], fields[1], fields[2]
            if ss_type != "n":
                continue
            w_cnt = int(fields[3], 16)  # word count is hexadecimal
            pos = 4
            syn_words = [fields[pos + 2 * i] for i in range(w_cnt)]
            pos += 2 * w_cnt
            p_cnt = int(fields[pos])  # pointer count is decimal
            pos += 1
            hyps = []
            for i in range(p_cnt):
                symbol, target, target_pos = fields[pos], fields[pos + 1], fields[pos + 2]
                pos += 4
                if symbol in ("@", "@i") and target_pos == "n":
                    hyps.append("n" + target)
            wnid = "n" + offset
            hypernyms[wnid] = hyps
            words[wnid] = syn_words
    return hypernyms, words


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--synsets", type=Path, default=None, help="timm's imagenet_synsets.txt")
    ap.add_argument("--wordnet", type=Path, default=DEFAULT_WORDNET, help="WordNet 3.0 data.noun")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)

    synsets_path = args.synsets or find_timm_synsets()
    if not args.wordnet.is_file():
        raise SystemExit(f"{args.wordnet} not found: apt-get install -y wordnet-base, or pass --wordnet PATH")
    wnids = [ln.strip() for ln in synsets_path.read_text().splitlines() if ln.strip()]
    if len(wnids) != 1000 or len(set(wnids)) != 1000 or wnids != sorted(wnids):
        raise SystemExit(f"{synsets_path}: expected 1000 distinct sorted wnids, got {len(wnids)}")

    hypernyms, words = parse_data_noun(args.wordnet)

    # Check the category synsets against the word lists of data.noun.
    for name, (sense, wnid) in CATEGORY_SYNSETS.items():
        lemma = sense.split(".")[0]
        if wnid not in words or lemma not in [w.lower() for w in words[wnid]]:
            raise SystemExit(f"category {name}: {sense} {wnid} not found in {args.wordnet}")

    @lru_cache(maxsize=None)
    def depth(wnid: str) -> int:
        hyps = hypernyms[wnid]
        if not hyps:
            return 0
        return 1 + max(depth(h) for h in hyps)

    @lru_cache(maxsize=None)
    def min_depth(wnid: str) -> int:
        hyps = hypernyms[wnid]
        return 0 if not hyps else 1 + min(min_depth(h) for h in hyps)

    @lru_cache(maxsize=None)
    def ancestors(wnid: str) -> frozenset[str]:
        out = {wnid}
        for h in hypernyms[wnid]:
            out |= ancestors(h)
        return frozenset(out)

    sys.setrecursionlimit(10000)
    assert depth(ROOT) == 0
    cat_by_wnid = {wnid: name for name, (_s, wnid) in CATEGORY_SYNSETS.items()}
    mapping: dict[str, str] = {}
    unmapped: list[str] = []
    ties: list[str] = []
    differs_with_min_depth = 0
    for wnid in wnids:
        if wnid not in hypernyms:
            raise SystemExit(f"ILSVRC wnid {wnid} not in {args.wordnet}")
        found = [(depth(c), name) for c, name in cat_by_wnid.items() if c in ancestors(wnid)]
        if not found:
            unmapped.append(wnid)
            continue
        best_depth = max(d for d, _ in found)
        best = sorted(name for d, name in found if d == best_depth)
        if len(best) > 1:
            ties.append(f"{wnid} {words[wnid][0]}: {best}")
        mapping[wnid] = best[0]
        alt = max((min_depth(c), name) for c, name in cat_by_wnid.items() if c in ancestors(wnid))
        differs_with_min_depth += alt[1] != best[0]

    for wnid, expected in SANITY.items():
        if mapping.get(wnid) != expected:
            raise SystemExit(f"sanity check failed: {wnid} -> {mapping.get(wnid)}, expected {expected}")

    categories = sorted(CATEGORY_SYNSETS)
    counts = Counter(mapping.values())
    data = {
        "description": (
            "ILSVRC-2012 wnid -> most specific of ImageNet's 27 high-level categories "
            "(deepest = longest hypernym path from entity.n.01, WordNet 3.0 @/@i pointers). "
            "Generated by scripts/derive_imagenet_categories.py; do not edit."
        ),
        "categories": categories,
        "category_synsets": {n: {"sense": s, "wnid": w, "depth": depth(w)} for n, (s, w) in sorted(CATEGORY_SYNSETS.items())},
        "ilsvrc_wnids": wnids,
        "wnid_to_category": mapping,
        "unmapped": unmapped,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")

    used = [c for c in categories if counts[c]]
    print(f"wrote {args.out}")
    print(f"classes: {len(wnids)}  mapped: {len(mapping)}  unmapped: {len(unmapped)}")
    print(f"categories used: {len(used)} of {len(categories)}")
    print("unused categories: " + ", ".join(c for c in categories if not counts[c]))
    for c in categories:
        print(f"  {c:22s} {counts[c]:4d}")
    print(f"classes whose category would change with shortest-path depth: {differs_with_min_depth}")
    print(f"ties broken alphabetically: {len(ties)}")
    for t in ties:
        print("  " + t)
    return 0


if __name__ == "__main__":
    sys.exit(main())
