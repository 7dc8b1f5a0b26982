"""The verifiable features as reward functions for TRL's online trainers (`GRPOTrainer`, `RLOOTrainer`).

Each function has TRL's `reward_funcs` signature, `(prompts, completions, **kwargs) -> list[float | None]`: the score
of each completion on the good side of its feature, from the feature's checker (0.0 to 1.0, as the signal report
scores y+ and y-). A dataset column `feature` (one feature name per prompt, as the generator records it in
`features`) restricts each function: the others get `None`, which TRL reads as "this
reward does not apply". Without the column every completion is scored.

```python
from trl import GRPOConfig, GRPOTrainer
from trl_sso.signal.reward_functions import feature_rewards

trainer = GRPOTrainer(model=..., reward_funcs=feature_rewards(["Brevity", "Bullets"]), args=GRPOConfig(...), ...)
```
"""

from collections.abc import Callable, Sequence

from ..principles import VERIFIABLE, Feature, check_feature_names, known_features
from .responses import response_text


RewardFunction = Callable[..., list[float | None]]


def feature_reward(feature: Feature) -> RewardFunction:
    """The reward function of one verifiable `feature`; its `__name__` (`sso_<feature>`) names it in TRL's metrics
    (`rewards/sso_brevity/mean`)."""
    if feature.checker is None:
        raise ValueError(
            f"The feature {feature.name!r} has no checker, so it cannot be a reward. Verifiable features: "
            f"{sorted(VERIFIABLE)} (or one with a `checker` in your features file)."
        )
    check = feature.checker

    def reward(prompts, completions, feature=None, **kwargs) -> list[float | None]:
        scores = []
        for index, completion in enumerate(completions):
            applies = feature is None or feature[index] in (None, "", reward.feature)
            scores.append(check(response_text(completion)) if applies else None)
        return scores

    reward.feature = feature.name
    reward.__name__ = reward.__qualname__ = f"sso_{feature.name.lower()}"
    return reward


def feature_rewards(names: Sequence[str] | None = None, features_file: str | None = None) -> list[RewardFunction]:
    """The reward functions of the verifiable features `names` (default: every feature with a checker, including
    those of `features_file`)."""
    features = known_features(features_file)
    if names is None:
        names = [name for name, feature in features.items() if feature.checker is not None]
    check_feature_names(names, features)
    return [feature_reward(features[name]) for name in names]
