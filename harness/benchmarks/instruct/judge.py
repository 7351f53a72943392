"""alpaca_eval's judge, as the harness runs it: an annotator of alpaca_eval's (`protocol.alpaca_eval
.annotators_config`, e.g. weighted_alpaca_eval_gpt4_turbo with its API key) or a local model
(`protocol.alpaca_eval.local_judge`: a harness model config name, e.g. smollm2-135m, or a model directory), and the
leaderboard metric (`metric`: AlpacaEval 2.0's length-controlled win rate, or the plain win rate).

A local judge reads alpaca_eval's pairwise prompt for local models (its guanaco_33b basic prompt: the instruction,
Output (a), Output (b), answer "Output (a)" or "Output (b)") and decodes greedily through harness.generation. Not
alpaca_eval's own `huggingface_local_completions`: on a machine without CUDA it passes `load_in_8bit=False` to
`from_pretrained`, which transformers 5 rejects; alpaca_eval takes any completion function in its place.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Mapping

import yaml

from harness.errors import ConfigError

ALPACA_EVAL_HUB = "tatsu-lab/alpaca_eval"  # the default reference outputs, and the length-controlled metric's data
LOCAL_PROMPT = "guanaco_33b/basic_prompt.txt"  # under alpaca_eval's evaluators_configs
# the answer "Output (a)" / "Output (b)": alpaca_eval's parser for this prompt wants it at the start of a line; a
# small local judge says "The answer is Output (b)." as often, so here it may stand anywhere (an answer naming
# both is unreadable and counts for neither side)
ANSWERS = {1: r"Output \(a\)", 2: r"Output \(b\)"}
METRICS = {"length_controlled": ("get_length_controlled_winrate", "length_controlled_winrate"),
           "win_rate": ("get_winrate", "win_rate")}


def local_model(name: str):
    """(model, tokenizer) of a harness model config name (conf/model/<name>.yaml) or a model directory."""
    from harness import models
    from harness.config import CONFIG_DIR, compose

    if (CONFIG_DIR / "model" / f"{name}.yaml").is_file():
        spec = compose([f"model={name}"]).model
    elif Path(name).is_dir():
        spec = {"source": "local", "path": name, "dtype": "auto"}
    else:
        raise ConfigError(f"protocol.alpaca_eval.local_judge={name!r} is neither a model config in conf/model/ nor "
                          "a model directory")
    model, tokenizer = models.load(spec)
    return model.eval(), tokenizer


class LocalCompletions:
    """alpaca_eval's completion function for a local judge: greedy continuations of its prompts."""

    def __init__(self, name: str):
        self.name, self.loaded = name, None

    def __call__(self, prompts, max_new_tokens: int = 10, batch_size: int = 1, **_) -> dict:
        from harness.generation import sample

        if self.loaded is None:
            self.loaded = local_model(self.name)
        model, tokenizer = self.loaded
        start = time.perf_counter()
        texts = sample(model, tokenizer, list(prompts), num_samples=1, temperature=0, top_p=1.0,
                       max_new_tokens=int(max_new_tokens), batch_size=int(batch_size), seed=0)
        each = (time.perf_counter() - start) / max(1, len(prompts))
        return {"completions": [t[0] for t in texts], "price_per_example": [0.0] * len(texts),
                "time_per_example": [each] * len(texts)}


def local_annotator(name: str, directory: Path, max_new_tokens: int) -> tuple[str, dict]:
    """(annotators_config path, alpaca_eval keyword arguments) of a local judge; the config is written to
    `directory`."""
    import alpaca_eval

    prompt = Path(alpaca_eval.__file__).parent / "evaluators_configs" / LOCAL_PROMPT
    config = {"harness_local_judge": {"prompt_template": str(prompt),
                                      "completions_kwargs": {"max_new_tokens": int(max_new_tokens)},
                                      "completion_parser_kwargs": {"outputs_to_match": ANSWERS}, "batch_size": 1}}
    folder = directory / "harness_local_judge"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "configs.yaml").write_text(yaml.safe_dump(config))
    return str(folder), {"fn_completions": LocalCompletions(name)}


def evaluate_kwargs(settings: Mapping, directory: Path) -> dict:
    """alpaca_eval.evaluate's keyword arguments for these settings; a setting that needs the hub fails fast
    offline, naming the setting to change."""
    from harness.offline import HubUnavailableError, ensure_hub_available

    metric = str(settings.get("metric") or "length_controlled")
    if metric not in METRICS:
        raise ConfigError(f"protocol.alpaca_eval.metric={metric!r}: use one of {sorted(METRICS)}")
    fn_metric, sort_by = METRICS[metric]
    kwargs = {"is_return_instead_of_print": True, "output_path": None, "fn_metric": fn_metric, "sort_by": sort_by}
    if settings.get("reference_outputs"):
        kwargs["reference_outputs"] = settings["reference_outputs"]
    else:
        ensure_hub_available(ALPACA_EVAL_HUB, "dataset", what="protocol.alpaca_eval.reference_outputs")
    if metric == "length_controlled":
        try:
            ensure_hub_available(ALPACA_EVAL_HUB, "dataset", what="alpaca_eval's length-controlled metric data")
        except HubUnavailableError:
            raise ConfigError("protocol.alpaca_eval.metric=length_controlled reads alpaca_eval's df_gamed.csv from the "
                              f"hub ({ALPACA_EVAL_HUB}), which this machine cannot reach: offline, use "
                              "protocol.alpaca_eval.metric=win_rate") from None
    if settings.get("local_judge") and settings.get("annotators_config"):
        raise ConfigError("protocol.alpaca_eval: set annotators_config or local_judge, not both")
    if settings.get("local_judge"):
        config, extra = local_annotator(str(settings["local_judge"]), directory,
                                        int(settings.get("judge_max_new_tokens") or 10))
        kwargs.update(annotators_config=config, **extra)
    else:
        kwargs["annotators_config"] = settings["annotators_config"]
    return kwargs


def check(settings: Mapping) -> None:
    """What `evaluate_kwargs` would refuse, found before training, without loading a model."""
    import tempfile

    try:
        import alpaca_eval  # noqa: F401
    except ImportError:
        raise ConfigError("a judge is configured (protocol.alpaca_eval.annotators_config / local_judge) but the "
                          "alpaca_eval package is not installed", "pip install alpaca_eval") from None
    name = settings.get("local_judge")
    if name:
        from harness.config import CONFIG_DIR

        if not ((CONFIG_DIR / "model" / f"{name}.yaml").is_file() or Path(str(name)).is_dir()):
            raise ConfigError(f"protocol.alpaca_eval.local_judge={name!r} is neither a model config in conf/model/ "
                              "nor a model directory")
    with tempfile.TemporaryDirectory(prefix="harness-judge-") as directory:
        evaluate_kwargs(settings, Path(directory))


def judge_configured(settings: Mapping) -> bool:
    return bool(settings.get("annotators_config") or settings.get("local_judge"))
