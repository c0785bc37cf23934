"""Real labelled text available offline, turned into tokenized, split tasks.

Two sources:
- TextBlob's bundled English lexicons (a PyPI package, so tests can rely on it): adjective
  senses hand-tagged for polarity and subjectivity with their WordNet glosses, and Brill's
  part-of-speech lexicon.
- WordNet 3.0 from Debian's ``wordnet-base`` (full size only): every synset's gloss with its
  lexicographer category and part of speech.
"""

import importlib.util
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from weightdb.zoo.build import BuildContext
from weightdb.zoo.errors import DataSourceMissingError
from weightdb.zoo.manifest import TaskEntry
from weightdb.zoo.minilm import tokenize
from weightdb.zoo.splits import save_held_out, stratified_split

WORDNET_DIR = "/usr/share/wordnet"
INSTALL_WORDNET = "apt-get install wordnet-base"

# Lexicographer file numbers of WordNet 3.0 (lexnames(5WN)); data files refer to them by number.
LEXNAMES = [
    "adj.all",
    "adj.pert",
    "adv.all",
    "noun.Tops",
    "noun.act",
    "noun.animal",
    "noun.artifact",
    "noun.attribute",
    "noun.body",
    "noun.cognition",
    "noun.communication",
    "noun.event",
    "noun.feeling",
    "noun.food",
    "noun.group",
    "noun.location",
    "noun.motive",
    "noun.object",
    "noun.person",
    "noun.phenomenon",
    "noun.plant",
    "noun.possession",
    "noun.process",
    "noun.quantity",
    "noun.relation",
    "noun.shape",
    "noun.state",
    "noun.substance",
    "noun.time",
    "verb.body",
    "verb.change",
    "verb.cognition",
    "verb.communication",
    "verb.competition",
    "verb.consumption",
    "verb.contact",
    "verb.creation",
    "verb.emotion",
    "verb.motion",
    "verb.perception",
    "verb.possession",
    "verb.social",
    "verb.stative",
    "verb.weather",
    "adj.ppl",
]
_WORDNET_POS = {"n": "noun", "v": "verb", "a": "adjective", "s": "adjective", "r": "adverb"}
_BRILL_POS = {
    "NN": "noun",
    "NNS": "noun",
    "NNP": "proper-noun",
    "NNPS": "proper-noun",
    "JJ": "adjective",
    "JJR": "adjective",
    "JJS": "adjective",
    "RB": "adverb",
    "RBR": "adverb",
    "RBS": "adverb",
    "VB": "verb",
    "VBD": "verb",
    "VBG": "verb",
    "VBN": "verb",
    "VBP": "verb",
    "VBZ": "verb",
}


@dataclass(frozen=True)
class TextTask:
    """Labelled texts of one task, before tokenization."""

    name: str
    source: str
    description: str
    texts: list[str]
    labels: list[str]


@dataclass(frozen=True)
class PreparedTask:
    """A task tokenized, split and with its held-out splits saved."""

    entry: TaskEntry
    inputs: dict[str, np.ndarray]
    labels: np.ndarray
    train_rows: np.ndarray
    held_out: dict[str, str]

    def train_data(self) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Inputs and labels of the training rows, as tensors."""
        rows = self.train_rows
        inputs = {name: torch.from_numpy(array[rows]) for name, array in self.inputs.items()}
        return inputs, torch.from_numpy(self.labels[rows])


TEXT_EXAMPLE = {
    "input_ids": torch.ones(2, 8, dtype=torch.long),
    "attention_mask": torch.ones(2, 8, dtype=torch.long),
}
TEXT_AXES = {
    "input_ids": {0: "batch", 1: "tokens"},
    "attention_mask": {0: "batch", 1: "tokens"},
    "logits": {0: "batch"},
}


def _textblob_dir() -> Path:
    spec = importlib.util.find_spec("textblob")
    if spec is None or not spec.submodule_search_locations:
        raise DataSourceMissingError(
            "labelled text comes from the textblob package; install it with: "
            "pip install 'weightdb[zoo]'"
        )
    return Path(spec.submodule_search_locations[0]) / "en"


def textblob_tasks() -> list[TextTask]:
    """Sentiment and subjectivity of adjective senses, part of speech of words."""
    root = _textblob_dir()
    senses = ElementTree.parse(root / "en-sentiment.xml").getroot().findall("word")
    texts = [f"{w.get('form')}: {w.get('sense') or w.get('form')}" for w in senses]
    polarity = [float(w.get("polarity")) for w in senses]
    source = "textblob 0.20.1 en-sentiment.xml (De Smedt & Daelemans, hand-tagged, PDDL)"
    tasks = [
        TextTask(
            "sentiment",
            source,
            "polarity of an adjective sense from its word and WordNet gloss",
            texts,
            ["negative" if p < 0 else "positive" if p > 0 else "neutral" for p in polarity],
        ),
        TextTask(
            "subjectivity",
            source,
            "whether an adjective sense is subjective (subjectivity >= 0.5)",
            texts,
            ["subjective" if float(w.get("subjectivity")) >= 0.5 else "objective" for w in senses],
        ),
    ]
    words, tags = [], []
    for line in (root / "en-lexicon.txt").read_text(encoding="utf-8").splitlines():
        fields = line.split()
        if len(fields) == 2 and not line.startswith(";") and fields[1] in _BRILL_POS:
            words.append(fields[0])
            tags.append(_BRILL_POS[fields[1]])
    tasks.append(
        TextTask(
            "word-pos",
            "textblob 0.20.1 en-lexicon.txt (Brill tagger lexicon, Brown corpus and Penn Treebank)",
            "most frequent part of speech of an English word",
            words,
            tags,
        )
    )
    return tasks


def wordnet_tasks(wordnet_dir: Path) -> list[TextTask]:
    """Lexicographer category of noun and verb glosses, part of speech of any gloss."""
    files = {pos: wordnet_dir / f"data.{pos}" for pos in ("noun", "verb", "adj", "adv")}
    missing = [path for path in files.values() if not path.is_file()]
    if missing:
        raise DataSourceMissingError(
            f"WordNet data not found ({missing[0]} is missing); the full size needs Debian's "
            f"WordNet: {INSTALL_WORDNET}"
        )
    glosses: dict[str, list[tuple[str, str, str]]] = {pos: [] for pos in files}
    for pos, path in files.items():
        for line in path.read_text(encoding="latin-1").splitlines():
            if line.startswith(" "):
                continue
            head, _, gloss = line.partition(" | ")
            fields = head.split()
            lemma = fields[4].replace("_", " ")
            definition = gloss.split('; "')[0].strip()
            glosses[pos].append((f"{lemma}: {definition}", LEXNAMES[int(fields[1])], fields[2]))
    source = f"WordNet 3.0 ({wordnet_dir}, Debian wordnet-base)"
    return [
        TextTask(
            f"wordnet-{pos}-category",
            source,
            f"lexicographer category of a {pos} synset from its lemma and gloss",
            [text for text, _, _ in glosses[pos]],
            [category for _, category, _ in glosses[pos]],
        )
        for pos in ("noun", "verb")
    ] + [
        TextTask(
            "wordnet-pos",
            source,
            "part of speech of a synset from its lemma and gloss",
            [text for pos in files for text, _, _ in glosses[pos]],
            [_WORDNET_POS[kind] for pos in files for _, _, kind in glosses[pos]],
        )
    ]


def load_tasks(context: BuildContext) -> list[TextTask]:
    """TextBlob's tasks, plus WordNet's at full size (an error naming the install if missing)."""
    tasks = textblob_tasks()
    if context.full:
        tasks += wordnet_tasks(Path(context.options["wordnet"]))
    return tasks


def _subsample(labels: Sequence[str], per_class: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    array = np.asarray(labels)
    rows = [
        rng.permutation(np.flatnonzero(array == label))[:per_class] for label in np.unique(array)
    ]
    return np.sort(np.concatenate(rows))


def _extra_rows(labels: Sequence[str], taken: np.ndarray, total: int, seed: int) -> np.ndarray:
    """About ``total`` more texts, evenly over the classes, none of them among ``taken``."""
    array = np.asarray(labels)
    classes = np.unique(array)
    per_class = -(-total // len(classes))
    rng = np.random.default_rng([seed, 1])  # a stream of its own: the subsample stays as it was
    left = np.setdiff1d(np.arange(len(array)), taken)
    rows = [rng.permutation(left[array[left] == label])[:per_class] for label in classes]
    return np.sort(np.concatenate(rows))


def prepare(
    context: BuildContext,
    tasks: Sequence[TextTask],
    per_class: int,
    max_length: int,
    validation_at_least: int = 0,
) -> list[PreparedTask]:
    """Cap each class at ``per_class`` texts, tokenize, split and save the held-out rows.

    ``validation_at_least`` grows each validation split to that many examples with texts the cap
    left out, so a small family's budgets can be verified (deduplication needs 3 / budget
    examples) without changing its training rows, and so its weights, or its test split.
    """
    prepared = []
    for task in tasks:
        classes = sorted(set(task.labels))
        class_ids = np.searchsorted(classes, task.labels).astype(np.int64)
        rows = _subsample(task.labels, per_class, context.seed)
        indices = stratified_split(class_ids[rows], context.seed)
        missing = validation_at_least - len(indices["validation"])
        if missing > 0:
            extra = _extra_rows(task.labels, rows, missing, context.seed)
            indices["validation"] = np.concatenate(
                [indices["validation"], np.arange(len(rows), len(rows) + len(extra))]
            )
            rows = np.concatenate([rows, extra])
        labels = class_ids[rows]
        inputs = tokenize([task.texts[i] for i in rows], max_length)
        held_out = save_held_out(context.directory, task.name, inputs, labels, indices)
        entry = TaskEntry(
            name=task.name,
            source=task.source,
            classes=classes,
            synthetic=False,
            examples={split: len(r) for split, r in indices.items()},
            description=task.description,
        )
        prepared.append(PreparedTask(entry, inputs, labels, indices["train"], held_out))
    return prepared
