"""Which linear layers an adapter (or GaLore) targets: the `sft.target_modules` presets, resolved once.

    target_names("attention")      # ('q_proj', 'k_proj', 'v_proj', 'o_proj'): what the planner counts
    peft_targets(cfg.sft)          # what PEFT is given (named=True: names even for 'all-linear')

Names are the Llama-style block linears (SmolLM2, Qwen2, Mistral share them).
"""

from __future__ import annotations

from tuneline.config import SFTConfig

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


def target_names(target_modules: list[str] | str) -> tuple[str, ...]:
    """The block linears a preset or name list covers (names outside the block linears are left out)."""
    if target_modules == "all-linear":
        return ATTENTION + MLP
    if target_modules == "attention":
        return ATTENTION
    return tuple(t for t in target_modules if t in ATTENTION + MLP)


def peft_targets(cfg: SFTConfig, named: bool = False) -> list[str] | str:
    """Module names for PEFT; 'all-linear' stays a string where PEFT resolves it (never lm_head).

    named: spell 'all-linear' out (ia3 splits the names into feed-forward and others; GaLore's optimizer
    matches names). PEFT also needs names when layers are restricted (top_layers). A list, not a tuple:
    PEFT turns a list into a set and would keep a tuple as it is."""
    if cfg.target_modules == "attention":
        return list(ATTENTION)
    if cfg.target_modules == "all-linear" and (named or cfg.top_layers):
        return list(ATTENTION + MLP)
    return cfg.target_modules
