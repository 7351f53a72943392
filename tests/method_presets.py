"""The options a method's config file gives, for tests that apply a method directly: `preset("neat", r=4)` is
conf/method/neat.yaml on the tiny Llama with r=4 (the file is the one place of a method's defaults)."""

from harness.config import compose, method_options


def preset(name: str, model: str = "tiny-llama", **overrides) -> dict:
    return {**method_options(compose([f"method={name}", f"model={model}"])), **overrides}
