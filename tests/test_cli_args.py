"""The finished-run tools' command line (harness.cli_args): Hydra's override grammar on a run's stored config."""

import pytest
from omegaconf import OmegaConf

from harness import cli_args
from harness.errors import ConfigError


def stored():
    return OmegaConf.create({"protocol": {"name": "greedy", "num_beams": 1, "sets": {"gsm8k": 256}},
                             "meta": {"run": {"results_dir": "results"}}, "task": {"name": "math"}})


def test_overrides_change_a_stored_config_as_hydra_changes_a_composition():
    command = cli_args.parse(["math-run-1", "protocol.num_beams=2", "protocol.sets={MATH:512}", "+protocol.extra=[1,2]",
                              "~meta.run.results_dir", "reference_outputs=/tmp/x/alpaca eval.json", "note='a b'"])
    assert command.positional == ["math-run-1"]
    assert command.take("reference_outputs") == "/tmp/x/alpaca eval.json" and command.take("note") == "a b"
    assert command.take("absent", "default") == "default"
    cfg = cli_args.apply(stored(), command.overrides)
    assert cfg.protocol.num_beams == 2 and list(cfg.protocol.extra) == [1, 2]
    assert dict(cfg.protocol.sets) == {"gsm8k": 256, "MATH": 512}  # a dict merges into a dict, as in Hydra
    assert "results_dir" not in cfg.meta.run
    replaced = cli_args.apply(stored(), cli_args.parse(["protocol=lmeval"]).overrides,
                              {"protocol": lambda name: {"name": name, "batch_size": 8}})
    assert OmegaConf.to_container(replaced.protocol) == {"name": "lmeval", "batch_size": 8}  # a group: whole


@pytest.mark.parametrize("args,message", [
    (["protocol.num_beam=2"], r"has no protocol.num_beam \(add it with \+protocol.num_beam=...\)"),
    (["+protocol.num_beams=2"], "has protocol.num_beams already"),
    (["~protocol.beams"], "has no protocol.beams"),
    (["protocol.sets=[1,"], "no viable alternative"),
])
def test_a_bad_override_is_one_line_naming_it(args, message):
    with pytest.raises(ConfigError, match=message):
        cli_args.apply(stored(), cli_args.parse(args).overrides)
