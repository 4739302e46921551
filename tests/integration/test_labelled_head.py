"""sft.labelled_head (the default) trains on the same loss and gradients as TRL's own loss path: the LM head
runs only where a label is, and nothing else changes.

    .venv/bin/pytest -q tests/integration/test_labelled_head.py
"""

import torch

from tuneline.train.sft import build_trainer, labelled_head_loss, plain_head


def _loss_and_grads(trainer, batch):
    model = trainer.model
    model.train()
    model.zero_grad()
    loss = trainer.compute_loss(model, dict(batch))
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


def test_the_labelled_head_loss_equals_trls(tiny_cfg, tiny_ref, tiny_data, tmp_path):
    rows = tiny_data.task[tiny_data.task.split == "train"].head(6).to_dict("records")
    cfg = tiny_cfg.sft.model_copy(update={"method": "lora", "labelled_head": True, "dropout": 0.0, "bf16": "false"})
    trainer = build_trainer(tiny_ref, rows, cfg, tmp_path / "ckpt", max_tokens=96)
    assert trainer.compute_loss.func is labelled_head_loss, "the default must take the labelled-head path"
    torch.manual_seed(0)
    for p in (p for n, p in trainer.model.named_parameters() if "lora_B" in n):
        torch.nn.init.normal_(p, std=0.05)  # B is zero at init: non-zero so the LoRA gradients are not trivial
    batch = next(iter(trainer.get_train_dataloader()))
    mine, my_grads = _loss_and_grads(trainer, batch)
    trl = type(trainer)  # the Trainer's own compute_loss: TRL's full-sequence path
    trainer.compute_loss = lambda model, inputs, **kw: trl.compute_loss(trainer, model, inputs, **kw)
    theirs, their_grads = _loss_and_grads(trainer, batch)
    assert torch.allclose(mine, theirs, atol=1e-5, rtol=1e-4), (mine, theirs)
    assert my_grads.keys() == their_grads.keys() and my_grads
    for name, g in my_grads.items():
        assert torch.allclose(g, their_grads[name], atol=1e-6, rtol=1e-3), name


def test_a_softcapped_head_keeps_trls_path():
    class Gemma2Like:
        final_logit_softcapping = 30.0

    class Plain:
        pass

    assert not plain_head(Gemma2Like()) and plain_head(Plain())


def test_the_labelled_head_computes_under_bf16_autocast(tiny_cfg, tiny_ref, tiny_data, tmp_path):
    """The decoder is called directly, outside the model.forward that Accelerate wraps in autocast: the matmuls
    must still run in bf16 when sft.bf16 asks for it (they ran in fp32 before, 1.3x slower on the CPU)."""
    rows = tiny_data.task[tiny_data.task.split == "train"].head(6).to_dict("records")
    cfg = tiny_cfg.sft.model_copy(update={"method": "lora", "labelled_head": True, "bf16": "true"})
    trainer = build_trainer(tiny_ref, rows, cfg, tmp_path / "ckpt", max_tokens=96)
    seen = []
    layer = trainer.model.get_base_model().model.layers[0].self_attn.q_proj.base_layer
    layer.register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
    trainer.model.train()
    trainer.compute_loss(trainer.model, dict(next(iter(trainer.get_train_dataloader()))))
    assert seen == [torch.bfloat16]


def test_the_held_out_loss_takes_the_labelled_head_and_equals_trls(tiny_cfg, tiny_ref, tiny_data, tmp_path):
    """The eval curve's loss (prediction_step, loss only) goes through the labelled head too: the same number as
    TRL's full-sequence path, and its entropy and token accuracy land in the eval metrics, not the train ones."""
    rows = tiny_data.task[tiny_data.task.split == "train"].head(6).to_dict("records")
    cfg = tiny_cfg.sft.model_copy(update={"method": "lora", "labelled_head": True, "bf16": "false"})
    trainer = build_trainer(tiny_ref, rows, cfg, tmp_path / "ckpt", max_tokens=96)
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.eval()
    head_inputs = []  # the LM head's input: labelled positions only [n, hidden], or every position [1, T, hidden]
    trainer.model.get_output_embeddings().register_forward_hook(lambda m, args, out: head_inputs.append(args[0].dim()))
    trl = type(trainer)
    mine, _, _ = trainer.prediction_step(trainer.model, dict(batch), prediction_loss_only=True)
    assert head_inputs == [2] and trainer._metrics["eval"]["entropy"] and not trainer._metrics["train"]["entropy"]
    trainer.compute_loss = lambda model, inputs, **kw: trl.compute_loss(trainer, model, inputs, **kw)
    theirs, _, _ = trainer.prediction_step(trainer.model, dict(batch), prediction_loss_only=True)
    assert torch.allclose(mine, theirs, atol=1e-5, rtol=1e-4), (mine, theirs)
    assert trainer.args.prediction_loss_only or trainer.args.eval_strategy == "no"


def _dpo_forward(trainer, batch):
    """TRL's fused-head forward of a DPO batch, as DPOTrainer._compute_loss calls it: per-token log-probs, grads."""
    model = trainer.model
    model.train()
    model.zero_grad()
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                fused_lm_head=True, use_cache=False)
    out.log_probs.sum().backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return out.log_probs.detach(), grads


def test_dpo_scores_only_the_labelled_positions_on_cpu(tiny_cfg, tiny_ref, tiny_tok, monkeypatch, tmp_path):
    """labelled_positions_only: TRL's fused head (DPO, KTO, GRPO, RLOO) projects only the completion tokens on a
    CPU, where TRL 1.16 would project every prompt token too; the log-probabilities and gradients are the same."""
    from peft import LoraConfig, get_peft_model

    import trl.trainer.utils as fused
    from tuneline.model.base import load_model
    from tuneline.train.dpo import Pair, preference_trainer

    monkeypatch.setattr(fused, "_use_triton", fused._use_triton)  # undone after the test, whatever it patched
    torch.manual_seed(0)
    model = get_peft_model(load_model(tiny_ref), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                             init_lora_weights=False))
    prompt = [{"role": "user", "content": "Classify the banking intent: where is my new card"}]
    pairs = [Pair(prompt=prompt, chosen="card_arrival", rejected=f"lost_or_stolen_card {i}", origin=str(i))
             for i in range(4)]
    cfg = tiny_cfg.dpo.model_copy(update={"batch_size": 4, "bf16": "false"})
    trainer = preference_trainer(cfg, model, tiny_tok, pairs, tmp_path / "ckpt", [])
    batch = next(iter(trainer.get_train_dataloader()))
    labelled = int((batch["completion_mask"][:, 1:] != 0).sum())
    assert labelled < batch["input_ids"][:, 1:].numel()  # the prompt has positions to leave out

    scored = []
    apply = fused._ChunkedLogProbFunction.apply
    monkeypatch.setattr(fused._ChunkedLogProbFunction, "apply",
                        lambda hidden, *a: scored.append(hidden.shape[0]) or apply(hidden, *a))
    compact, compact_grads = _dpo_forward(trainer, batch)
    assert fused._use_triton(torch.device("cpu")) and scored == [labelled]
    monkeypatch.setattr(fused, "_use_triton", lambda device: False)  # TRL's CPU path: every position
    full, full_grads = _dpo_forward(trainer, batch)
    assert scored[-1] == batch["input_ids"][:, 1:].numel()
    assert torch.allclose(compact, full, atol=1e-5), (compact - full).abs().max()
    assert compact_grads.keys() == full_grads.keys() and compact_grads
    for name, g in compact_grads.items():
        assert torch.allclose(g, full_grads[name], atol=1e-6, rtol=1e-3), name
