"""Principle sources: where each query's contrastive principle pair comes from.

- `library` (default): `num_features` features drawn from the library with a per-query seeded RNG, plus Concision
  with probability `concision_prob`; the texts are the library's.
- `policy`: the policy itself picks the features relevant to the query from a few-shot prompt (a comma-separated
  answer, parsed leniently and topped up at random), and with `policy_writes_principles` also writes the good/bad
  principle pair as JSON. Any parse failure falls back to the library, and the fallbacks are counted.
- `model`: a separate principle model (the paper's v2 set-up) writes one good and one bad guideline per query as JSON,
  formatted into v2-style system prompts; on failure, the library.

Every source returns one `Principles` per query. Selection depends only on the seed and the query's index, never on
batching or on the number of processes.
"""

import json
import random
import re
from dataclasses import dataclass, field

from ..principles import (
    LENGTH_FEATURE,
    Feature,
    contrastive_system_prompts,
    default_candidates,
    expand_feature_names,
    guideline_system_prompts,
    select_features,
)


@dataclass
class Principles:
    features: list[str]
    positive_system: str
    negative_system: str
    source: str  # the source that produced the texts: library, policy or model
    fallback: bool = False  # the requested source failed for this query and the library stood in
    details: dict = field(default_factory=dict)


def query_rng(seed: int, index: int, purpose: str) -> random.Random:
    """A reproducible RNG for one query: the same (seed, index) gives the same draws in any batch or process."""
    return random.Random(f"{seed}:{index}:{purpose}")


def library_principles(features, rng: random.Random, num_features: int, concision_prob: float, candidates=None):
    chosen = select_features(rng, features, num_features, concision_prob, candidates)
    positive, negative = contrastive_system_prompts(chosen)
    return Principles([f.name for f in chosen], positive, negative, "library")


# ---------------------------------------------------------------------------------------------------------------------
# Lenient parsing of model answers


def parse_feature_choice(text: str, known: list[str], k: int, rng: random.Random) -> tuple[list[str], bool]:
    """Feature names mentioned in `text` (any case, any separators), shuffled, cut to `k`, topped up at random from
    `known`. Returns the names and whether the answer named fewer than `k` known features (a partial fallback)."""
    lowered = text.lower()
    found = [name for name in known if re.search(rf"\b{re.escape(name.lower())}\b", lowered)]
    rng.shuffle(found)
    chosen = found[:k]
    missing = k - len(chosen)
    if missing > 0:
        chosen += rng.sample([name for name in known if name not in chosen], missing)
    return chosen, missing > 0


_GOOD_KEYS = ("good", "good_principle", "good_guideline", "positive", "positive_principle")
_BAD_KEYS = ("bad", "bad_principle", "bad_guideline", "negative", "negative_principle")


def parse_principle_json(text: str) -> tuple[str, str] | None:
    """The (good, bad) texts of the first JSON object in `text` (code fences and chatter around it are ignored), or
    `None` when there is no usable object."""
    for match in re.finditer(r"\{.*?\}", text, flags=re.DOTALL):
        try:
            data = json.loads(match.group(0))
        except json.JSONDecodeError:
            continue
        if not isinstance(data, dict):
            continue
        lowered = {re.sub(r"[\s-]+", "_", str(k).strip().lower()): v for k, v in data.items()}
        good = next((lowered[k] for k in _GOOD_KEYS if isinstance(lowered.get(k), str) and lowered[k].strip()), None)
        bad = next((lowered[k] for k in _BAD_KEYS if isinstance(lowered.get(k), str) and lowered[k].strip()), None)
        if good and bad:
            return good.strip(), bad.strip()
    return None


# ---------------------------------------------------------------------------------------------------------------------
# Prompts to the models (our own wording)

FEATURE_CHOICE_EXAMPLES = (
    ("How do I treat a small cut on my finger?", "Safety, Accuracy, Helpfulness"),
    ("Write a short poem about autumn leaves.", "Literariness, Engagement, Comprehensiveness"),
    ("Why does 0.1 + 0.2 not equal 0.3 in most programming languages?", "Accuracy, Logicality, Helpfulness"),
)


def feature_choice_prompt(query: str, candidates: list[Feature]) -> list[dict]:
    menu = "\n".join(f"- {f.name}: {f.meaning}" for f in candidates)
    shots = "\n\n".join(f"Question: {q}\nMost relevant qualities: {a}" for q, a in FEATURE_CHOICE_EXAMPLES)
    return [
        {
            "role": "user",
            "content": (
                "Which qualities matter most for a good answer to the question below? Choose from:\n"
                f"{menu}\n\nAnswer with the names only, separated by commas.\n\n{shots}\n\n"
                f"Question: {query}\nMost relevant qualities:"
            ),
        }
    ]


def principle_writing_prompt(query: str, feature: Feature) -> list[dict]:
    return [
        {
            "role": "user",
            "content": (
                f"For the question below, write two one-sentence principles about {feature.name.lower()} "
                f"({feature.meaning.lower()}): a good one that makes an answer {feature.good_adjective} and a bad one "
                f"that makes it {feature.bad_adjective}. Reply with JSON only, like "
                '{"good": "...", "bad": "..."}.\n\n'
                f"Question: {query}"
            ),
        }
    ]


def guideline_prompt(query: str) -> list[dict]:
    return [
        {
            "role": "user",
            "content": (
                "Read the question below. Write one guideline that would lead an assistant to a clearly good answer "
                "and one that would lead it to a plausible but clearly worse answer (less accurate, less helpful or "
                'less careful). Reply with JSON only: {"good": "...", "bad": "..."}.\n\n'
                f"Question: {query}"
            ),
        }
    ]


class PrincipleSource:
    """Assigns a `Principles` to every query of a batch (see the module docstring for the three sources)."""

    def __init__(
        self,
        kind,
        features,
        *,
        seed,
        num_features=2,
        concision_prob=0.2,
        candidates=None,
        policy_sampler=None,
        policy_writes_principles=False,
        principle_sampler=None,
        max_new_tokens=96,
    ):
        if kind not in ("library", "policy", "model"):
            raise ValueError(f"Unknown principle source {kind!r}: use 'library', 'policy' or 'model'.")
        if kind == "policy" and policy_sampler is None:
            raise ValueError("The 'policy' principle source needs the policy's sampler.")
        if kind == "model" and principle_sampler is None:
            raise ValueError(
                "The 'model' principle source needs `principle_model` (the model that writes guidelines)."
            )
        self.kind, self.features, self.seed = kind, features, seed
        self.num_features, self.concision_prob = num_features, concision_prob
        self.candidates = list(candidates) if candidates else default_candidates(features)
        self.policy_sampler, self.principle_sampler = policy_sampler, principle_sampler
        self.policy_writes_principles, self.max_new_tokens = policy_writes_principles, max_new_tokens

    @classmethod
    def from_options(cls, options, features, seed: int, policy_sampler=None, principle_sampler=None):
        """The source that the generator's `options` (`GenerationOptions`: `principle_source`, `features`,
        `num_features`, `concision_prob`, `policy_writes_principles`) describe, over `features` (name -> Feature)."""
        candidates = expand_feature_names(options.features, features) if options.features else None
        return cls(
            options.principle_source,
            features,
            seed=seed,
            num_features=options.num_features,
            concision_prob=options.concision_prob,
            candidates=candidates,
            policy_sampler=policy_sampler,
            policy_writes_principles=options.policy_writes_principles,
            principle_sampler=principle_sampler,
        )

    def _library(self, index, candidates=None):
        rng = query_rng(self.seed, index, "features")
        return library_principles(
            self.features, rng, self.num_features, self.concision_prob, candidates or self.candidates
        )

    def assign(self, indices: list[int], queries: list[str], batch_seed: int) -> list[Principles]:
        if self.kind == "library":
            return [self._library(index) for index in indices]
        if self.kind == "model":
            return self._from_principle_model(indices, queries, batch_seed)
        return self._from_policy(indices, queries, batch_seed)

    def _from_principle_model(self, indices, queries, batch_seed):
        answers = self.principle_sampler.sample(
            [guideline_prompt(q) for q in queries],
            temperature=0.0,
            top_p=1.0,
            max_new_tokens=self.max_new_tokens,
            seed=batch_seed,
        )
        out = []
        for index, answer in zip(indices, answers):
            parsed = parse_principle_json(answer.text)
            if parsed is None:
                fallback = self._library(index)
                fallback.fallback = True
                out.append(fallback)
                continue
            positive, negative = guideline_system_prompts(*parsed)
            out.append(Principles([], positive, negative, "model", details={"good": parsed[0], "bad": parsed[1]}))
        return out

    def _from_policy(self, indices, queries, batch_seed):
        candidates = [self.features[n] for n in self.candidates]
        answers = self.policy_sampler.sample(
            [feature_choice_prompt(q, candidates) for q in queries],
            temperature=0.0,
            top_p=1.0,
            max_new_tokens=32,
            seed=batch_seed,
        )
        chosen = []
        for index, answer in zip(indices, answers):
            rng = query_rng(self.seed, index, "features")
            names, partial = parse_feature_choice(answer.text, self.candidates, self.num_features, rng)
            if LENGTH_FEATURE in self.features and LENGTH_FEATURE not in names and rng.random() < self.concision_prob:
                names.append(LENGTH_FEATURE)
            chosen.append((names, partial))
        written = {}
        if self.policy_writes_principles:
            requests = [(i, name) for i, (names, _) in enumerate(chosen) for name in names]
            replies = self.policy_sampler.sample(
                [principle_writing_prompt(queries[i], self.features[name]) for i, name in requests],
                temperature=0.0,
                top_p=1.0,
                max_new_tokens=self.max_new_tokens,
                seed=batch_seed + 1,
            )
            written = {request: parse_principle_json(reply.text) for request, reply in zip(requests, replies)}
        out = []
        for i, (names, partial) in enumerate(chosen):
            features = []
            for name in names:
                feature = self.features[name]
                texts = written.get((i, name))
                if texts is not None:
                    feature = Feature(
                        feature.name, feature.good_adjective, feature.bad_adjective, feature.meaning, *texts
                    )
                features.append(feature)
            failed_writing = self.policy_writes_principles and any(written.get((i, n)) is None for n in names)
            positive, negative = contrastive_system_prompts(features)
            out.append(Principles(names, positive, negative, "policy", fallback=partial or failed_writing))
        return out
